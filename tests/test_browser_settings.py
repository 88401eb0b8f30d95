"""One place for each setting, as a user sees it in the real frontend (issue 26, point 2; web/history_settings.js):
comfyui_frontend_package 1.32.9 with ComfyUI 0.3.75, 1.48.7 with 0.33.0 (whichever the server under test serves), in
headless Chromium driven by Playwright.

The lab workflow (workflows/storyboard_wan21_lab.json) links a Load Video as History to the Storyboard's memory:
1. on load, the history node's width, height, fps, segment_latent_frames and memory_mode hold the Storyboard's values,
   are read-only (disabled) and say so (label with the value, tooltip naming the Storyboard); its other widgets stay
   editable;
2. a click on the Storyboard's width arrow (a real pointer event on the canvas) moves the history node's width with
   it, and the frontend's own graphToPrompt queues the new value for both;
3. unlinked, the history node is editable again and keeps its values; linked again, it follows again;
4. the advanced group: the server marks model_low_noise, switch_step, resume and colour_strength advanced where its V3
   schema takes ``advanced`` (0.33.0); frontend 1.48.7 then folds them behind "Show advanced inputs" in its node view
   (Nodes 2.0) while its canvas still draws them; 1.32.9 with 0.3.75 gets no such flag and shows them all. In that
   node view the history node shows its followed values too, and follows a width typed into the Storyboard.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
LAB = REPO_ROOT / "workflows" / "storyboard_wan21_lab.json"
SHARED = ("width", "height", "fps", "segment_latent_frames", "memory_mode")
ADVANCED = ("model_low_noise", "switch_step", "resume", "colour_strength")


@pytest.fixture(scope="module")
def server(comfy_server):
    """The session's one server (tests/conftest.py ``comfy_server``): bikes.mp4 and the lab files."""
    return comfy_server


def lab_ids() -> tuple[int, int]:
    """(history node id, Storyboard id) of the lab workflow, checked to be linked memory -> memory."""
    wf = json.loads(LAB.read_text())
    hid = next(n["id"] for n in wf["nodes"] if n["type"] == "FrameMemoryLoadVideoHistory")
    sid = next(n["id"] for n in wf["nodes"] if n["type"] == "FrameMemoryStoryboard")
    assert any(link[1] == hid and link[3] == sid and link[5] == "FRAMEMEMORY_MEMORY" for link in wf["links"])
    return hid, sid


def widgets(ui, node_id: int) -> dict:
    """``{name: {value, disabled, label, tooltip}}`` of a node's widgets as the frontend holds them."""
    return ui.page.evaluate("""id => { const n = window.app.graph.getNodeById(id), out = {};
        for (const w of n.widgets) out[w.name] = {value: w.value, disabled: !!w.disabled, label: w.label ?? null,
                                                 tooltip: w.tooltip ?? null};
        return out; }""", node_id)


def assert_follows(ui, hid: int, sid: int) -> dict:
    hist, sb = widgets(ui, hid), widgets(ui, sid)
    for name in SHARED:
        w = hist[name]
        assert w["value"] == sb[name]["value"], (name, w, sb[name])
        assert w["disabled"], f"{name} is editable on the history node although it follows the Storyboard"
        assert w["label"] == f"{name} = {w['value']}, set on the Storyboard", w
        assert f"Set on the Storyboard 'Storyboard (Memory)' (#{sid})" in w["tooltip"], w
    assert not any(hist[name]["disabled"] for name in ("video", "frame_load_cap", "skip_first_seconds"))
    return hist


def click_width_arrow(ui, node_id: int, name: str) -> None:
    """Click the right-hand (increment) arrow of a number widget on the canvas, as a user does."""
    x, y = ui.page.evaluate("""([id, name]) => { const c = window.app.canvas, n = window.app.graph.getNodeById(id);
        const w = n.widgets.find(w => w.name === name), h = window.LiteGraph.NODE_WIDGET_HEIGHT;
        const wy = w.last_y ?? w.y, r = c.canvas.getBoundingClientRect();
        const [sx, sy] = c.ds.convertOffsetToCanvas([n.pos[0] + n.size[0] - 22, n.pos[1] + wy + h / 2]);
        return [r.left + sx, r.top + sy]; }""", [node_id, name])
    ui.page.mouse.click(x, y)
    ui.page.wait_for_timeout(500)


def test_history_node_follows_the_storyboard(ui):
    hid, sid = lab_ids()
    ui.load_workflow(json.loads(LAB.read_text()), LAB.stem)
    ui.page.evaluate("() => { const c = window.app.canvas; c.ds.scale = 1; c.ds.offset = [0, 0]; "
                     "c.setDirty(true, true); }")
    before = assert_follows(ui, hid, sid)["width"]["value"]

    ui.page.evaluate(f"() => {{ const c = window.app.canvas, n = window.app.graph.getNodeById({sid});"
                     " c.ds.offset = [200 - n.pos[0], 200 - n.pos[1]]; c.draw(true, true); }")
    click_width_arrow(ui, sid, "width")
    after = widgets(ui, sid)["width"]["value"]
    assert after > before, f"the click did not raise the Storyboard's width ({before} -> {after})"
    assert assert_follows(ui, hid, sid)["width"]["value"] == after
    prompt = ui.graph_to_prompt()
    assert prompt[str(hid)]["inputs"]["width"] == prompt[str(sid)]["inputs"]["width"] == after
    assert not ui.errors, ui.errors


def test_unlinked_history_node_is_editable_and_follows_again_when_linked(ui):
    hid, sid = lab_ids()
    ui.load_workflow(json.loads(LAB.read_text()), LAB.stem)
    ui.page.evaluate(f"() => window.app.graph.getNodeById({sid}).widgets.find(w => w.name === 'height').value = 256")
    ui.page.evaluate(f"() => window.app.graph.getNodeById({hid}).disconnectOutput(0)")
    ui.page.wait_for_timeout(300)
    hist = widgets(ui, hid)
    for name in SHARED:
        assert not hist[name]["disabled"] and hist[name]["label"] in (None, name), hist[name]
    assert hist["height"]["value"] == 128  # unlinked: its own value, not the Storyboard's

    ui.page.evaluate(f"""() => {{ const g = window.app.graph, h = g.getNodeById({hid}), s = g.getNodeById({sid});
        h.connect(0, s, s.inputs.findIndex(i => i.name === 'memory')); }}""")
    ui.page.wait_for_timeout(300)
    assert assert_follows(ui, hid, sid)["height"]["value"] == 256
    assert not ui.errors, ui.errors


def test_advanced_inputs_as_each_frontend_shows_them(server, ui):
    spec = server.object_info("FrameMemoryStoryboard")["FrameMemoryStoryboard"]["input"]["optional"]
    flagged = sorted(name for name in spec if spec[name][1].get("advanced"))
    hid, sid = lab_ids()
    ui.load_workflow(json.loads(LAB.read_text()), LAB.stem)
    options = ui.page.evaluate(f"""() => Object.fromEntries(window.app.graph.getNodeById({sid}).widgets
        .map(w => [w.name, !!w.options?.advanced]))""")
    if not flagged:  # ComfyUI 0.3.75: its V3 inputs take no `advanced`; every input shows as before
        assert not any(options.values()), options
        return
    assert flagged == sorted(ADVANCED), flagged
    assert [n for n, adv in options.items() if adv] == ["switch_step", "resume", "colour_strength"], options
    # Nodes 2.0 (the node view of 1.48): the advanced widgets are folded behind the node's own button
    ui.page.evaluate("async () => { await window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true); }")
    try:
        ui.load_workflow(json.loads(LAB.read_text()), LAB.stem)
        node = ui.page.locator(f'[data-node-id="{sid}"]')
        node.wait_for(timeout=20_000)
        shown = node.inner_text()
        assert "colour_correction" in shown and "switch_step" not in shown and "colour_strength" not in shown, shown
        node.get_by_test_id("advanced-inputs-button").click()
        ui.page.wait_for_timeout(500)
        shown = node.inner_text()
        assert "switch_step" in shown and "colour_strength" in shown and "resume" in shown, shown
        hist = ui.page.locator(f'[data-node-id="{hid}"]').inner_text()
        assert "width = 256, set on the Storyboard" in hist, hist
        width = node.locator("input").first  # the Storyboard's width field in the node view, typed into as a user does
        assert width.input_value() == "256"
        width.fill("320", force=True)
        width.press("Enter")
        ui.page.wait_for_timeout(500)
        assert widgets(ui, hid)["width"]["value"] == 320 and widgets(ui, sid)["width"]["value"] == 320
        assert "width = 320, set on the Storyboard" in ui.page.locator(f'[data-node-id="{hid}"]').inner_text()
    finally:
        ui.page.evaluate("async () => { await window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', "
                         "false); }")
    assert not ui.errors, ui.errors
