"""Convert ComfyUI workflows between the API format and the UI (litegraph) format.

API format (what ``POST /prompt`` takes; ``workflows/*_api.json``)::

    {"9": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 42, ...}, "_meta": {"title": ...}}}

UI format (what the ComfyUI frontend loads and saves; ``workflows/storyboard_wan21*.json``)::

    {"last_node_id", "last_link_id", "nodes": [{"id", "type", "pos", "size", "flags", "order", "mode",
     "inputs": [{"name", "type", "link"}], "outputs": [{"name", "type", "links", "slot_index"}],
     "properties": {"Node name for S&R": type}, "widgets_values": [...], "title"?}],
     "links": [[link_id, from_node, from_slot, to_node, to_slot, type]], "groups": [], "config": {}, "extra": {},
     "version": 0.4}

Both directions need the node definitions of the server the workflow is for (``GET /object_info``), because
the UI format stores widget values by position, not by name.

    python scripts/api_to_ui.py workflows/storyboard_wan21_api.json -o workflows/storyboard_wan21.json \\
        --object-info object_info.json          # a saved GET /object_info answer
    python scripts/api_to_ui.py IN_api.json -o OUT.json --server http://127.0.0.1:8188
    python scripts/api_to_ui.py IN_api.json -o OUT.json --start-server   # starts ComfyUI via tests/harness.py
    python scripts/api_to_ui.py --to-api OUT.json -o IN_api.json --object-info object_info.json
    python scripts/api_to_ui.py --regenerate [--check] --start-server    # all workflows/*_api.json of this repo

Widget rules (mirroring ComfyUI frontend 1.32.9, ``comfyui_frontend_package``: litegraphService.ts
``#addInputs``, ``nodeDefOrderingUtil.getOrderedInputSpecs``, ``LGraphNode.serialize``, ``useIntWidget``,
``useComboWidget``, ``addValueControlWidgets``, ``extensions/core/uploadImage.ts``, ``compressWidgetInputSlots``;
checked against the shipped ``comfyui_workflow_templates`` such as ``video_wan_vace_14B_v2v.json``):

* Inputs are taken in ``input_order`` (required, then optional, then any not listed), else in dict order.
* An input is a widget if its type (or its ``widgetType`` option) has a core widget constructor (INT, FLOAT,
  BOOLEAN, STRING, MARKDOWN, COMBO or a list of options, COLOR, IMAGECOMPARE, CHART, GALLERIA, TEXTAREA) and
  it is not ``forceInput``; anything else is a socket. ``hidden`` inputs are neither.
* ``widgets_values`` holds one value per widget in input order, plus companions that the frontend serialises
  too: an INT with ``control_after_generate`` (or, when that option is absent, named ``seed`` or
  ``noise_seed``) is followed by its control value ("fixed" here, so the saved seed is the one that runs);
  a COMBO with ``control_after_generate`` is followed by the control value and an empty filter string.
* A required COMBO with ``image_upload`` / ``video_upload`` / ``animated_image_upload`` gets an extra
  ``upload`` button widget whose value ``"image"`` is serialised (``LoadVideo``: ``["bikes.mp4", "image"]``);
  it comes after all inputs listed in ``input_order`` (after the required ones when there is none).
* ``inputs`` lists every socket input (optional ones with ``"shape": 7``), then the widget inputs that are
  fed by a link (``"widget": {"name": ...}``); unconnected widget inputs are left out, as the frontend's
  ``compressWidgetInputSlots`` does, and a link's target slot is the index in this list.
* ``outputs`` come from ``output`` / ``output_name`` (``"shape": 6`` for list outputs).

Standard library only (``--start-server`` additionally imports tests/harness.py, which needs ``requests``).
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO_ROOT / "workflows"

# Types with a core widget constructor (frontend src/scripts/widgets.ts: ComfyWidgets).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "COLOR",
                          "IMAGECOMPARE", "CHART", "GALLERIA", "TEXTAREA"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
UPLOAD_WIDGET_VALUE = "image"   # the upload button's value, serialised into widgets_values
CONTROL_VALUE = "fixed"         # control_after_generate companion: keep the saved seed
LEGACY_SEED_NAMES = ("seed", "noise_seed")
OPTIONAL_SHAPE = 7              # RenderShape.HollowCircle
LIST_SHAPE = 6                  # LiteGraph.GRID_SHAPE
VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MODE_NEVER, MODE_BYPASS = 2, 4

# Layout (pixels).
X0, Y0, COLUMN_GAP, ROW_GAP = 50.0, 50.0, 80.0, 70.0
SLOT_HEIGHT, WIDGET_HEIGHT, MULTILINE_HEIGHT, PREVIEW_HEIGHT = 20, 24, 110, 260
NODE_WIDTH, WIDE_NODE_WIDTH = 315, 420


class ConversionError(ValueError):
    """The workflow does not fit the node definitions (unknown type, unknown input, bad link ...)."""


# ---- node definitions ---------------------------------------------------------------------------
class InputDef:
    """One entry of a node's input list as the frontend builds it."""

    def __init__(self, name: str, spec: list, optional: bool, kind: str):
        self.name = name
        self.spec = spec
        self.optional = optional
        self.kind = kind  # "socket", "widget" or "upload"

    @property
    def options(self) -> dict:
        return self.spec[1] if len(self.spec) > 1 and isinstance(self.spec[1], dict) else {}

    @property
    def type(self) -> str:
        t = self.spec[0]
        return "COMBO" if isinstance(t, list) else str(t)

    @property
    def widget_type(self) -> str:
        return str(self.options.get("widgetType") or self.type)

    def companions(self) -> list:
        """Values the frontend serialises right after this widget's own value."""
        if self.kind != "widget":
            return []
        opts = self.options
        if self.widget_type == "INT":
            control = opts.get("control_after_generate")
            if control is None:
                control = self.name in LEGACY_SEED_NAMES
            return [CONTROL_VALUE] if control else []
        if self.widget_type == "COMBO" and opts.get("control_after_generate"):
            return [CONTROL_VALUE, ""]  # control combo + control_filter_list string
        return []

    def default(self) -> Any:
        """The value the frontend gives a new widget of this input."""
        opts = self.options
        if self.kind == "upload":
            return UPLOAD_WIDGET_VALUE
        if "default" in opts and opts["default"] is not None:
            return opts["default"]
        if self.widget_type == "COMBO":
            values = self.spec[0] if isinstance(self.spec[0], list) else opts.get("options") or []
            return values[0] if values else None
        return {"INT": 0, "FLOAT": 0, "BOOLEAN": False}.get(self.widget_type, "")

    def multiline(self) -> bool:
        return self.widget_type in ("STRING", "MARKDOWN", "TEXTAREA") and bool(
            self.options.get("multiline") or self.widget_type != "STRING")


def _is_widget_spec(spec: list) -> bool:
    if not isinstance(spec, (list, tuple)) or not spec:
        return False
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    if isinstance(spec[0], list):
        return True
    return str(opts.get("widgetType") or spec[0]) in WIDGET_TYPES


def _is_media_upload(spec: list) -> bool:
    """extensions/core/uploadImage.ts isMediaUploadComboInput."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return any(opts.get(k) is True for k in UPLOAD_OPTIONS) and (isinstance(spec[0], list) or spec[0] == "COMBO")


def node_inputs(info: dict) -> list[InputDef]:
    """A node's inputs in the order the frontend creates them (hidden inputs excluded)."""
    inp = info.get("input") or {}
    required = dict(inp.get("required") or {})
    optional = dict(inp.get("optional") or {})
    order = info.get("input_order")

    upload = None
    for name, spec in required.items():  # the first media-upload combo gets an "upload" button widget
        if _is_media_upload(spec):
            upload = InputDef("upload", ["IMAGEUPLOAD", {**spec[1], "imageInputName": name}], False, "upload")
            break

    def make(name: str, spec: list, is_optional: bool) -> InputDef:
        return InputDef(name, list(spec), is_optional, "widget" if _is_widget_spec(spec) else "socket")

    entries: list[InputDef] = []
    if order:
        for name in order.get("required") or []:
            if name in required:
                entries.append(make(name, required[name], False))
        for name in order.get("optional") or []:
            if name in optional:
                entries.append(make(name, optional[name], True))
        seen = {e.name for e in entries}
        entries += [make(n, s, False) for n, s in required.items() if n not in seen]
        entries += [make(n, s, True) for n, s in optional.items() if n not in seen]
        if upload is not None:  # "upload" is not in input_order: it goes last
            entries.append(upload)
    else:
        entries = [make(n, s, False) for n, s in required.items()]
        if upload is not None:
            entries.append(upload)
        entries += [make(n, s, True) for n, s in optional.items()]
    return entries


def node_outputs(info: dict) -> list[tuple[str, str, bool]]:
    """(name, type, is_list) per output slot."""
    types = info.get("output") or []
    names = info.get("output_name") or []
    is_list = info.get("output_is_list") or []
    out = []
    for i, t in enumerate(types):
        t = "COMBO" if isinstance(t, list) else str(t)
        name = names[i] if i < len(names) and names[i] else t
        out.append((name, t, bool(is_list[i]) if i < len(is_list) else False))
    return out


def _node_info(object_info: dict, class_type: str, node_id: Any) -> dict:
    info = object_info.get(class_type)
    if info is None:
        raise ConversionError(f"node {node_id}: unknown node type {class_type!r} (not in object_info)")
    return info


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def _unwrap(value: Any) -> Any:
    """API array values are wrapped as {"__value__": [...]} (frontend executionUtil.ts)."""
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


# ---- API -> UI ----------------------------------------------------------------------------------
def api_to_ui(api: dict, object_info: dict) -> dict:
    """Convert an API-format workflow to the UI format. Deterministic: same input, same output."""
    api = {str(k): v for k, v in api.items() if isinstance(v, dict) and "class_type" in v}
    if not api:
        raise ConversionError("no nodes in the API workflow")
    if all(k.isdigit() for k in api):
        ids = {k: int(k) for k in api}
    else:  # e.g. "12:3" ids from subgraphs: renumber in sorted order
        ids = {k: i + 1 for i, k in enumerate(sorted(api))}
    order_keys = sorted(api, key=lambda k: ids[k])

    defs = {k: node_inputs(_node_info(object_info, api[k]["class_type"], k)) for k in order_keys}
    outs = {k: node_outputs(_node_info(object_info, api[k]["class_type"], k)) for k in order_keys}

    # Inputs per node: sockets (all), then widget inputs fed by a link.
    ui_inputs: dict[str, list[dict]] = {}
    widgets_values: dict[str, list] = {}
    pending_links: list[tuple[str, int, str, str]] = []  # (dst key, dst slot, src key, src slot)
    for k in order_keys:
        node = api[k]
        values = node.get("inputs") or {}
        by_name = {d.name: d for d in defs[k]}
        unknown = [n for n in values if n not in by_name or by_name[n].kind == "upload"]
        if unknown:
            raise ConversionError(f"node {k} ({node['class_type']}): inputs {unknown} are not in its definition")
        slots: list[dict] = []
        linked_widgets: list[dict] = []
        wv: list = []
        for d in defs[k]:
            value = values.get(d.name)
            if d.kind == "socket":
                slot = {"name": d.name}
                if d.optional:
                    slot["shape"] = OPTIONAL_SHAPE
                slot.update({"type": d.type, "link": None})
                if d.name in values:
                    if not _is_link(value):
                        raise ConversionError(f"node {k}: socket input {d.name!r} must be a link, got {value!r}")
                    slot["_src"] = value
                slots.append(slot)
            elif d.kind == "upload":
                wv.append(UPLOAD_WIDGET_VALUE)
            else:
                if d.name in values and _is_link(value):
                    slot = {"name": d.name}
                    if d.optional:
                        slot["shape"] = OPTIONAL_SHAPE
                    slot.update({"type": d.type, "widget": {"name": d.name}, "link": None, "_src": value})
                    linked_widgets.append(slot)
                    wv.append(d.default())
                else:
                    wv.append(_unwrap(value) if d.name in values else d.default())
                wv.extend(d.companions())
        all_slots = slots + linked_widgets
        for i, slot in enumerate(all_slots):
            src = slot.pop("_src", None)
            if src is not None:
                src_key = str(src[0])
                if src_key not in api:
                    raise ConversionError(f"node {k}: input {slot['name']!r} links to missing node {src_key!r}")
                if not 0 <= src[1] < len(outs[src_key]):
                    raise ConversionError(f"node {k}: input {slot['name']!r} links to output {src[1]} of node "
                                          f"{src_key} ({api[src_key]['class_type']}), which has "
                                          f"{len(outs[src_key])} outputs")
                pending_links.append((k, i, src_key, src[1]))
        ui_inputs[k] = all_slots
        widgets_values[k] = wv

    # Links, numbered by target node then target slot.
    links = []
    out_links: dict[tuple[str, int], list[int]] = defaultdict(list)
    for link_id, (dst, dst_slot, src, src_slot) in enumerate(pending_links, start=1):
        link_type = outs[src][src_slot][1]
        links.append([link_id, ids[src], src_slot, ids[dst], dst_slot, link_type])
        ui_inputs[dst][dst_slot]["link"] = link_id
        out_links[(src, src_slot)].append(link_id)

    sources = {k: sorted({s for d, _, s, _ in pending_links if d == k}, key=lambda x: ids[x]) for k in order_keys}
    consumers = {k: sorted({d for d, _, s, _ in pending_links if s == k}, key=lambda x: ids[x]) for k in order_keys}
    exec_order = _topological_order(order_keys, sources, ids)
    columns = _columns(order_keys, sources, consumers, exec_order)
    sizes = {k: _node_size(api[k]["class_type"], object_info[api[k]["class_type"]], defs[k], ui_inputs[k],
                           outs[k]) for k in order_keys}
    positions = _layout(order_keys, columns, sources, sizes, ids)

    nodes = []
    for k in order_keys:
        node = api[k]
        ui_node: dict[str, Any] = {
            "id": ids[k],
            "type": node["class_type"],
            "pos": positions[k],
            "size": sizes[k],
            "flags": {},
            "order": exec_order.index(k),
            "mode": 0,
            "inputs": ui_inputs[k],
            "outputs": [],
        }
        for slot, (name, typ, is_list) in enumerate(outs[k]):
            out = {"name": name, "type": typ}
            if is_list:
                out["shape"] = LIST_SHAPE
            out["links"] = out_links.get((k, slot)) or None
            out["slot_index"] = slot
            ui_node["outputs"].append(out)
        title = (node.get("_meta") or {}).get("title")
        if title:
            ui_node["title"] = title
        ui_node["properties"] = {"Node name for S&R": node["class_type"]}
        ui_node["widgets_values"] = widgets_values[k]
        nodes.append(ui_node)

    right = max(positions[k][0] + sizes[k][0] for k in order_keys)
    scale = round(min(1.0, 1600.0 / (right + X0)), 2)
    return {
        "last_node_id": max(ids.values()),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": scale, "offset": [0, 0]}},
        "version": 0.4,
    }


def _topological_order(keys: list[str], sources: dict, ids: dict) -> list[str]:
    """Kahn's algorithm, smallest id first; raises on cycles."""
    indeg = {k: len(sources[k]) for k in keys}
    users = defaultdict(list)
    for k in keys:
        for s in sources[k]:
            users[s].append(k)
    ready = sorted((k for k in keys if indeg[k] == 0), key=lambda x: ids[x])
    order = []
    while ready:
        k = ready.pop(0)
        order.append(k)
        for u in users[k]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
        ready.sort(key=lambda x: ids[x])
    if len(order) != len(keys):
        raise ConversionError(f"the workflow has a cycle through nodes {sorted(set(keys) - set(order))}")
    return order


def _columns(keys, sources, consumers, exec_order) -> dict[str, int]:
    """Dependency depth (longest path from a source); nodes without inputs move next to their first user."""
    col = {}
    for k in exec_order:
        col[k] = 1 + max((col[s] for s in sources[k]), default=-1)
    for k in reversed(exec_order):
        if not sources[k] and consumers[k]:
            col[k] = max(0, min(col[c] for c in consumers[k]) - 1)
    return col


def _node_size(class_type: str, info: dict, defs: list[InputDef], slots: list[dict], outs: list) -> list[int]:
    widgets = [d for d in defs if d.kind in ("widget", "upload")]
    height = max(len([s for s in slots if "widget" not in s]), len(outs)) * SLOT_HEIGHT + 10
    wide = False
    for d in widgets:
        if d.multiline():
            height += MULTILINE_HEIGHT
            wide = True
        else:
            height += WIDGET_HEIGHT * (1 + len(d.companions()))
    if any(d.kind == "upload" for d in defs) or (info.get("output_node") and not outs):
        height += PREVIEW_HEIGHT  # image / video preview
    title = str(info.get("display_name") or class_type)
    width = max(WIDE_NODE_WIDTH if wide else NODE_WIDTH, 8 * len(title) + 60)
    return [width, height]


def _layout(keys, columns, sources, sizes, ids) -> dict[str, list[float]]:
    """Columns left to right by depth; within a column, ordered by the mean height of the node's sources."""
    by_col = defaultdict(list)
    for k in keys:
        by_col[columns[k]].append(k)
    pos: dict[str, list[float]] = {}
    x = X0
    for c in sorted(by_col):
        def centre(k: str) -> tuple:
            ys = [pos[s][1] + sizes[s][1] / 2 for s in sources[k] if s in pos]
            return (sum(ys) / len(ys) if ys else float("inf"), ids[k])
        y = Y0
        for k in sorted(by_col[c], key=centre):
            pos[k] = [x, y]
            y += sizes[k][1] + ROW_GAP
        x += max(sizes[k][0] for k in by_col[c]) + COLUMN_GAP
    return pos


# ---- UI -> API ----------------------------------------------------------------------------------
def _ui_links(ui: dict) -> dict[int, tuple]:
    """link id -> (origin node id, origin slot); list or object link format."""
    result = {}
    for link in ui.get("links") or []:
        if isinstance(link, dict):
            result[int(link["id"])] = (link["origin_id"], int(link["origin_slot"]))
        else:
            result[int(link[0])] = (link[1], int(link[2]))
    return result


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow back to the API format (as the frontend's graphToPrompt would,
    with ``_meta.title`` only for nodes that carry a custom ``title``)."""
    if ui.get("definitions", {}).get("subgraphs"):
        raise ConversionError("workflows with subgraphs are not supported")
    links = _ui_links(ui)
    nodes = {n["id"]: n for n in ui.get("nodes") or []}

    def resolve(link_id: int, seen=()) -> tuple | None:
        """Follow Reroute nodes; returns (node, slot) of the real origin."""
        if link_id not in links:
            raise ConversionError(f"link {link_id} is not in the links list")
        origin_id, slot = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None:
            raise ConversionError(f"link {link_id} starts at missing node {origin_id}")
        if origin.get("type") == "Reroute":
            if origin_id in seen:
                raise ConversionError(f"reroute cycle at node {origin_id}")
            inp = (origin.get("inputs") or [{}])[0]
            return resolve(inp["link"], (*seen, origin_id)) if inp.get("link") is not None else None
        return origin, slot

    api: dict[str, dict] = {}
    for node in sorted(nodes.values(), key=lambda n: (str(type(n["id"])), n["id"])):
        ntype = node.get("type")
        mode = node.get("mode", 0)
        if ntype in VIRTUAL_NODE_TYPES or mode == MODE_NEVER:
            continue
        if mode == MODE_BYPASS:
            raise ConversionError(f"node {node['id']} ({ntype}) is bypassed: not supported")
        info = _node_info(object_info, ntype, node["id"])
        defs = node_inputs(info)
        values = node.get("widgets_values")
        values = [] if values is None else values
        linked = {}
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            resolved = resolve(slot["link"])
            if resolved is None:
                continue
            origin, origin_slot = resolved
            if origin.get("type") == "PrimitiveNode":
                continue  # its value is kept in this node's own widget value
            linked[slot["name"]] = [str(origin["id"]), origin_slot]

        inputs: dict[str, Any] = {}
        pos = 0
        for d in defs:
            if d.kind == "socket":
                if d.name in linked:
                    inputs[d.name] = linked[d.name]
                continue
            if isinstance(values, dict):
                value, present = values.get(d.name), d.name in values
            else:
                present = pos < len(values)
                value = values[pos] if present else None
                pos += 1 + len(d.companions())
            if d.kind == "upload":
                continue
            if d.name in linked:
                inputs[d.name] = linked[d.name]
            elif present:
                inputs[d.name] = _wrap(value)
            elif not d.optional:
                raise ConversionError(f"node {node['id']} ({ntype}): no widget value for {d.name!r}")
        entry: dict[str, Any] = {"class_type": ntype, "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


# ---- I/O ----------------------------------------------------------------------------------------
def fetch_object_info(server: str) -> dict:
    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=120) as r:
        return json.loads(r.read().decode("utf-8"))


def object_info_from_new_server() -> dict:
    """Start a headless ComfyUI with this pack (FRAMEMEMORY_DEMO=1) through tests/harness.py."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from harness import ComfyServer  # noqa: E402

    with ComfyServer() as server:
        return server.object_info()


def dumps(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def ui_path_for(api_path: Path) -> Path:
    """workflows/NAME_api.json -> workflows/NAME.json"""
    name = api_path.name
    if not name.endswith("_api.json"):
        raise ValueError(f"{api_path}: expected a name ending in _api.json")
    return api_path.with_name(name[: -len("_api.json")] + ".json")


def api_workflows(directory: Path = WORKFLOWS_DIR) -> list[Path]:
    return sorted(directory.glob("*_api.json"))


def regenerate(object_info: dict, paths: Iterable[Path], check: bool = False) -> list[Path]:
    """Write (or with check=True only compare) the UI file of each API file; returns the stale ones."""
    stale = []
    for api_path in paths:
        ui_path = ui_path_for(api_path)
        text = dumps(api_to_ui(json.loads(api_path.read_text()), object_info))
        current = ui_path.read_text() if ui_path.exists() else None
        if current != text:
            stale.append(ui_path)
            if not check:
                ui_path.write_text(text)
        print(f"{'stale' if current != text else 'ok':>5}  {ui_path}", file=sys.stderr)
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", nargs="?", type=Path, help="workflow to convert (API format; UI format with --to-api)")
    p.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    p.add_argument("--to-api", action="store_true", help="convert UI format to API format")
    p.add_argument("--regenerate", action="store_true",
                   help="write workflows/NAME.json for every workflows/NAME_api.json of this repository")
    p.add_argument("--check", action="store_true", help="with --regenerate: only report stale files (exit 1)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--object-info", type=Path, help="saved GET /object_info JSON")
    src.add_argument("--server", help="running ComfyUI to ask for /object_info (e.g. http://127.0.0.1:8188)")
    src.add_argument("--start-server", action="store_true",
                     help="start a headless ComfyUI with this pack (tests/harness.py) for /object_info")
    p.add_argument("--save-object-info", type=Path, help="also write the object_info used to this file")
    args = p.parse_args(argv)
    if not args.regenerate and args.input is None:
        p.error("give a workflow file, or --regenerate")

    if args.object_info:
        object_info = json.loads(args.object_info.read_text())
    elif args.start_server:
        object_info = object_info_from_new_server()
    else:
        object_info = fetch_object_info(args.server or "http://127.0.0.1:8188")
    if args.save_object_info:
        args.save_object_info.write_text(json.dumps(object_info))

    try:
        if args.regenerate:
            stale = regenerate(object_info, api_workflows(), check=args.check)
            return 1 if (args.check and stale) else 0
        workflow = json.loads(args.input.read_text())
        result = ui_to_api(workflow, object_info) if args.to_api else api_to_ui(workflow, object_info)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = dumps(result)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
