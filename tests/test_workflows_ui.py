"""The UI-format workflows in workflows/ are generated from the API-format ones by scripts/api_to_ui.py.

With the node definitions of a real headless ComfyUI (one server start for this module, FRAMEMEMORY_DEMO=1):
1. converting each workflows/NAME_api.json gives exactly the committed workflows/NAME.json (no drift);
2. converting each workflows/NAME.json back gives exactly workflows/NAME_api.json;
3. every node type of the UI files exists in /object_info, and their links and widget values are consistent.
The widget encoding itself is checked against the UI workflows shipped in ComfyUI's template packages, and the
edge cases (seed control values, upload buttons, widget inputs fed by links ...) on synthetic definitions.

Regenerate after changing an API workflow or a node's inputs:
    .venv/bin/python scripts/api_to_ui.py --regenerate --start-server
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
API_FILES = sorted(WORKFLOWS.glob("*_api.json"))
REGENERATE = ".venv/bin/python scripts/api_to_ui.py --regenerate --start-server"


def _load_converter():
    spec = importlib.util.spec_from_file_location("framememory_api_to_ui", REPO_ROOT / "scripts" / "api_to_ui.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


conv = _load_converter()


def _ui_file(api_path: Path) -> Path:
    return conv.ui_path_for(api_path)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def object_info(comfyui_dir, tmp_path_factory) -> dict:
    """GET /object_info of a real ComfyUI with this pack loaded (saved to a file, as the CLI would use it)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from harness import ComfyServer

    with ComfyServer(comfyui_dir=comfyui_dir) as server:
        info = server.object_info()
    saved = tmp_path_factory.mktemp("object_info") / "object_info.json"
    saved.write_text(json.dumps(info))
    return json.loads(saved.read_text())


def test_workflow_files_present():
    names = {p.name for p in API_FILES}
    assert {"storyboard_wan21_api.json", "storyboard_wan21_tiny_api.json"} <= names
    for api_path in API_FILES:
        assert _ui_file(api_path).exists(), f"{_ui_file(api_path)} missing: run {REGENERATE}"


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.name)
def test_ui_file_is_conversion_of_api_file(api_path, object_info):
    expected = conv.api_to_ui(_load(api_path), object_info)
    committed = _load(_ui_file(api_path))
    assert committed == expected, f"{_ui_file(api_path).name} is stale: run {REGENERATE}"


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.name)
def test_ui_file_converts_back_to_api_file(api_path, object_info):
    api = _load(api_path)
    back = conv.ui_to_api(_load(_ui_file(api_path)), object_info)
    assert sorted(back) == sorted(api)
    for node_id, node in api.items():
        assert back[node_id]["class_type"] == node["class_type"], node_id
        assert back[node_id]["inputs"] == node["inputs"], f"node {node_id} ({node['class_type']})"
        assert back[node_id].get("_meta", {}).get("title") == node.get("_meta", {}).get("title"), node_id


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.name)
def test_ui_file_nodes_exist_and_graph_is_consistent(api_path, object_info):
    ui = _load(_ui_file(api_path))
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        assert key in ui
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] == max(nodes) and ui["last_link_id"] == len(ui["links"])
    missing = sorted({n["type"] for n in ui["nodes"]} - set(object_info))
    assert not missing, f"node types not in /object_info: {missing}"
    ours = {n["type"] for n in ui["nodes"] if n["type"].startswith("FrameMemory")}
    assert {"FrameMemoryLoadEncoder", "FrameMemoryStoryboard"} <= ours

    for node in ui["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties", "widgets_values"):
            assert key in node, (node["id"], key)
        assert node["properties"]["Node name for S&R"] == node["type"]
        defs = conv.node_inputs(object_info[node["type"]])
        n_values = sum(1 + len(d.companions()) for d in defs if d.kind != "socket")
        assert len(node["widgets_values"]) == n_values, (node["id"], node["type"])
        outputs = conv.node_outputs(object_info[node["type"]])
        assert [(o["name"], o["type"]) for o in node["outputs"]] == [(n, t) for n, t, _ in outputs]
    assert sorted(n["order"] for n in ui["nodes"]) == list(range(len(ui["nodes"])))

    seen = set()
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        assert link_id not in seen
        seen.add(link_id)
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == link_type == inp["type"], (link_id, out, inp)
        assert nodes[src]["pos"][0] < nodes[dst]["pos"][0], f"link {link_id} does not run left to right"
    linked = {i["link"] for n in ui["nodes"] for i in n["inputs"] if i["link"] is not None}
    assert linked == seen


def test_seed_and_upload_encoding_in_storyboard(object_info):
    """The two non-obvious widget rules, on the real files: seed + "fixed", LoadVideo file + "image"."""
    ui = _load(WORKFLOWS / "storyboard_wan21.json")
    by_type = {n["type"]: n for n in ui["nodes"]}
    assert by_type["LoadVideo"]["widgets_values"] == ["bikes.mp4", "image"]
    values = by_type["FrameMemoryStoryboard"]["widgets_values"]
    assert values[values.index(42) + 1] == "fixed"
    assert by_type["SaveVideo"]["widgets_values"] == ["framememory/storyboard", "mp4", "h264"]
    assert by_type["LoadVideo"]["title"] == "Starting clip"


# ---- the widget rules against ComfyUI's own template workflows ------------------------------------------
def _template_workflows() -> list[Path]:
    files = []
    for package in ("comfyui_workflow_templates_media_video", "comfyui_workflow_templates_media_other",
                    "comfyui_workflow_templates_media_image", "comfyui_workflow_templates_core"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            files += sorted(Path(location).glob("templates/*.json"))
    return files


# Nodes whose templates carry extra widgets from frontend extensions or API-node status widgets.
EXTENSION_WIDGET_NODES = {"Preview3D", "SaveGLB", "GetImageSize"}


def test_widget_rules_match_shipped_templates(object_info):
    """Every node of the shipped templates that our converter knows must have the widget count and input
    slot order that api_to_ui would write (LoadVideo, KSampler, SaveVideo, CreateVideo, CLIPLoader ...)."""
    templates = _template_workflows()
    if not templates:
        pytest.skip("no comfyui_workflow_templates package installed")
    checked, mismatches, types = 0, [], set()
    for path in templates:
        try:
            workflow = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(workflow, dict):
            continue
        for node in workflow.get("nodes") or []:
            ntype = node.get("type")
            values = node.get("widgets_values")
            if ntype not in object_info or ntype in EXTENSION_WIDGET_NODES or not isinstance(values, list):
                continue
            if str(object_info[ntype].get("python_module", "")).startswith("comfy_api_nodes"):
                continue  # API nodes: status widgets and frequently changing definitions
            defs = conv.node_inputs(object_info[ntype])
            n_values = sum(1 + len(d.companions()) for d in defs if d.kind != "socket")
            linked_widgets = {i["name"] for i in node.get("inputs") or [] if "widget" in i and i.get("link") is not None}
            slots = ([d.name for d in defs if d.kind == "socket"]
                     + [d.name for d in defs if d.kind == "widget" and d.name in linked_widgets])
            saved_slots = [i["name"] for i in node.get("inputs") or [] if not ("widget" in i and i.get("link") is None)]
            checked += 1
            types.add(ntype)
            if len(values) != n_values or saved_slots != slots:
                mismatches.append((path.name, node.get("id"), ntype, values, n_values, saved_slots, slots))
    assert checked > 100 and {"LoadVideo", "KSampler", "SaveVideo", "CreateVideo"} <= types
    assert len(mismatches) <= checked // 100, mismatches[:10]  # a few templates predate node changes


def test_load_video_template_node_converts(object_info):
    """LoadVideo, KSampler and SaveVideo nodes cut out of a shipped template (links dropped) convert to the
    API values the template implies: the upload and control_after_generate companions are skipped."""
    templates = [p for p in _template_workflows() if p.name == "video_wan_vace_14B_v2v.json"]
    if not templates:
        pytest.skip("template video_wan_vace_14B_v2v.json not installed")
    workflow = json.loads(templates[0].read_text())
    nodes = [{**n, "inputs": []} for n in workflow["nodes"]
             if n["type"] in ("LoadVideo", "KSampler", "SaveVideo") and n.get("mode", 0) == 0]
    api = conv.ui_to_api({"nodes": nodes, "links": []}, object_info)
    load = next(v for v in api.values() if v["class_type"] == "LoadVideo")
    assert load["inputs"] == {"file": "video_wan_vace_14B_v2v_reference_image_control_video.mp4"}
    sampler = next(v for v in api.values() if v["class_type"] == "KSampler")
    assert set(sampler["inputs"]) == {"seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"}
    assert isinstance(sampler["inputs"]["steps"], int) and sampler["inputs"]["sampler_name"] == "uni_pc"
    save = next(v for v in api.values() if v["class_type"] == "SaveVideo")
    assert save["inputs"] == {"filename_prefix": "video/ComfyUI", "format": "auto", "codec": "auto"}


# ---- edge cases on synthetic definitions (no server) ----------------------------------------------------
FAKE_INFO = {
    "Src": {"input": {"required": {}}, "output": ["IMAGE", "INT", ["a", "b"]], "output_name": ["image", "n", "choice"],
            "output_is_list": [False, False, False]},
    "Loader": {"input": {"required": {"file": [["x.mp4", "y.mp4"], {"video_upload": True}]}},
               "input_order": {"required": ["file"]}, "output": ["VIDEO"], "output_name": ["VIDEO"]},
    "Sampler": {
        "input": {
            "required": {"image": ["IMAGE"], "seed": ["INT", {"default": 0}],
                         "noise": ["INT", {"default": 1, "control_after_generate": True}],
                         "steps": ["INT", {"default": 20, "control_after_generate": False}],
                         "mode": [["fast", "slow"], {"control_after_generate": True}],
                         "count": ["INT", {"forceInput": True}],
                         "text": ["STRING", {"multiline": True}]},
            "optional": {"mask": ["MASK"], "strength": ["FLOAT", {"default": 0.5}], "tags": ["STRING", {}]},
            "hidden": {"prompt": "PROMPT"}},
        "input_order": {"required": ["image", "seed", "noise", "steps", "mode", "count", "text"],
                        "optional": ["mask", "strength", "tags"], "hidden": ["prompt"]},
        "output": ["IMAGE"], "output_name": ["IMAGE"], "output_is_list": [True]},
}


def test_synthetic_widget_rules():
    api = {
        "1": {"class_type": "Src", "inputs": {}},
        "2": {"class_type": "Loader", "inputs": {"file": "y.mp4"}, "_meta": {"title": "clip"}},
        "3": {"class_type": "Sampler", "inputs": {
            "image": ["1", 0], "seed": 7, "noise": 3, "steps": ["1", 1], "mode": "slow", "count": ["1", 1],
            "text": "hi", "strength": 0.25, "tags": {"__value__": ["a", "b"]}}},
    }
    ui = conv.api_to_ui(api, FAKE_INFO)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[2]["widgets_values"] == ["y.mp4", "image"] and nodes[2]["title"] == "clip"
    sampler = nodes[3]
    # seed: legacy name -> control; noise: explicit; steps: explicitly off (and linked: default placeholder);
    # mode: combo control + filter; count: forceInput socket; tags: array value unwrapped.
    assert sampler["widgets_values"] == [7, "fixed", 3, "fixed", 20, "slow", "fixed", "", "hi", 0.25, ["a", "b"]]
    assert [(i["name"], i.get("shape"), "widget" in i) for i in sampler["inputs"]] == [
        ("image", None, False), ("count", None, False), ("mask", 7, False), ("steps", None, True)]
    assert sampler["outputs"][0]["shape"] == 6 and sampler["outputs"][0]["links"] is None
    links = {tuple(link[1:]) for link in ui["links"]}
    assert links == {(1, 0, 3, 0, "IMAGE"), (1, 1, 3, 1, "INT"), (1, 1, 3, 3, "INT")}
    assert nodes[1]["outputs"][2]["type"] == "COMBO"
    assert conv.ui_to_api(ui, FAKE_INFO) == api


def test_synthetic_errors():
    with pytest.raises(conv.ConversionError, match="unknown node type"):
        conv.api_to_ui({"1": {"class_type": "Nope", "inputs": {}}}, FAKE_INFO)
    with pytest.raises(conv.ConversionError, match="not in its definition"):
        conv.api_to_ui({"1": {"class_type": "Loader", "inputs": {"file": "x.mp4", "bogus": 1}}}, FAKE_INFO)
    with pytest.raises(conv.ConversionError, match="missing node"):
        conv.api_to_ui({"3": {"class_type": "Sampler", "inputs": {"image": ["9", 0]}}}, FAKE_INFO)
    with pytest.raises(conv.ConversionError, match="cycle"):
        info = {"N": {"input": {"required": {"x": ["IMAGE"]}}, "output": ["IMAGE"]}}
        conv.api_to_ui({"1": {"class_type": "N", "inputs": {"x": ["2", 0]}},
                        "2": {"class_type": "N", "inputs": {"x": ["1", 0]}}}, info)


def test_reroute_and_note_nodes_are_resolved():
    ui = conv.api_to_ui({"1": {"class_type": "Src", "inputs": {}},
                         "3": {"class_type": "Sampler", "inputs": {"image": ["1", 0], "seed": 1, "noise": 2,
                                                                   "steps": 3, "mode": "fast", "text": ""}}},
                        FAKE_INFO)
    # Put a Reroute between Src and Sampler, and add a Note: the API result must not change.
    link = ui["links"][0]
    ui["nodes"].append({"id": 50, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 90}],
                        "outputs": [{"name": "", "type": "IMAGE", "links": [link[0]]}]})
    ui["nodes"].append({"id": 51, "type": "Note", "mode": 0, "widgets_values": ["hello"]})
    ui["links"] = [[90, 1, 0, 50, 0, "IMAGE"], [link[0], 50, 0, 3, 0, "IMAGE"]]
    api = conv.ui_to_api(ui, FAKE_INFO)
    assert set(api) == {"1", "3"} and api["3"]["inputs"]["image"] == ["1", 0]
