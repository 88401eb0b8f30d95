"""The pack as a ComfyUI user sees it: the real frontend (comfyui_frontend_package 1.32.9 with ComfyUI 0.3.75, 1.48.7
with 0.33.0: whichever the server under test serves) in headless Chromium, driven by Playwright (issues 15 and 24;
framememory.headless.browser / .workflows).

The session's one server (tests/conftest.py ``comfy_server``, shared with the end-to-end tests: tiny random demo
models, bikes.mp4 as the input clip, the lab files and placeholders for the other model files the workflows name,
FRAMEMEMORY_DEMO=1) and one page:
1. the Templates browser lists exactly the templates of workflows/ (not the test-only demo/workflows/), each with
   its Note and its frame thumbnail (tests/test_browser_templates.py: the Templates dialog as rendered);
2. every workflow (templates and demo/workflows/) loads with no missing node and no page error, its saved view
   shows every node (a template's Note included, overlapping none), readably, in a 1920x1080 window, and the
   frontend's own graphToPrompt gives exactly the committed api/ file (saved through 1.48.7; on 1.32.9 without the
   inputs its server neither defines nor makes);
3. the Storyboard's text box shows all three shots of the tiny workflow and has a tooltip; tooltips name the families;
4. the tiny storyboard queued with the Run button ends with a video on the Save Video node, the queue panel's
   "Total" moves during the run, and the run's report summary shows on the Storyboard node.
Fix a failure of 2 with `scripts/sync_workflows.py --write` run on ComfyUI 0.33.0 (see that script).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from framememory.headless.comfy_server import PACK_NAME
from framememory.headless.templates import (NOTE_TYPE, THUMBNAIL_MARK, THUMBNAIL_MAX_BYTES, THUMBNAIL_SIZE,
                                            note_text, template_for)
from framememory.headless.workflows import (check_workflow, open_workflow, template_workflows,
                                            ui_workflows)

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "demo" / "workflows" / "storyboard_wan21_tiny.json"
RUN_TIMEOUT_MS = 600_000  # the page waits for a run: 25 s on 2 idle CPU cores, over 300 s on busy ones
ONE_SHOT = "1.0 | a cyclist rides down a sunny city street, tracking shot"


@pytest.fixture(scope="module")
def server(comfy_server):
    """The session's one server (tests/conftest.py ``comfy_server``)."""
    return comfy_server


def test_templates_browser_lists_the_templates_with_frame_thumbnails(server):
    from PIL import Image

    listed = server._get("/api/workflow_templates").json()
    assert sorted(listed[PACK_NAME]) == sorted(p.stem for p in template_workflows())  # demo/workflows/ not listed
    assert not [name for name in listed[PACK_NAME] if "tiny" in name], listed[PACK_NAME]
    for name in listed[PACK_NAME]:
        workflow = server._get(f"/api/workflow_templates/{PACK_NAME}/{name}.json").json()
        notes = [n for n in workflow["nodes"] if n["type"] == NOTE_TYPE]
        assert len(notes) == 1 and notes[0]["widgets_values"][0] == note_text(template_for(name)), name
        thumb = server._get(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert len(thumb.content) < THUMBNAIL_MAX_BYTES, (name, len(thumb.content))
        with Image.open(io.BytesIO(thumb.content)) as image:
            assert (image.format, image.size) == ("JPEG", THUMBNAIL_SIZE), name
            assert image.info["comment"].startswith(f"{THUMBNAIL_MARK} {name}: ".encode()), name  # frames, not graph


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_workflow_as_the_frontend_sees_it(ui, path):
    problems = check_workflow(ui, path)
    assert not problems, f"{path.name}:\n" + "\n".join(problems) + "\nfix: scripts/sync_workflows.py --write on ComfyUI 0.33.0"


STORYBOARD_NODE = "window.app.graph.findNodesByType('FrameMemoryStoryboard', [])[0]"
# What the web/framememory.js extension moves: the queue panel's "Total" (frontends 1.32 to 1.58 keep it in their
# execution store as executionProgress: done entries / entries of the running prompt's node table).
TOTAL = "window.app.extensionManager._p._s.get('execution').executionProgress"
# The Run button as a user sees it: labelled "Run" (1.48 adds a menu trigger whose accessible name is also "Run").
RUN_BUTTON = dict(role="button", name="Run", exact=True)


def storyboard_box(ui) -> dict:
    """The Storyboard's text box as the user sees it: its text, visible and content heights (px) and hover tooltip."""
    return ui.page.evaluate(f"""() => {{ const w = {STORYBOARD_NODE}.widgets.find(w => w.name === 'storyboard');
        return {{text: w.element.value, height: w.element.clientHeight, content: w.element.scrollHeight,
                 tooltip: w.element.closest('.dom-widget').title}}; }}""")


def test_storyboard_box_shows_every_shot_and_explains_its_format(ui):
    assert open_workflow(ui, TINY) == []
    box = storyboard_box(ui)
    assert box["text"].count(" | ") == 3 and box["height"] >= box["content"], box  # no shot clipped
    assert "seconds | prompt" in box["tooltip"] and "Example" in box["tooltip"], box["tooltip"]
    model_tooltip = ui.page.evaluate("window.LiteGraph.registered_node_types['FrameMemoryStoryboard']"
                                     ".nodeData.input.required.model[1].tooltip")
    assert all(family in model_tooltip for family in ("Wan 2.1", "Wan 2.2", "HunyuanVideo")), model_tooltip


def test_run_button_ends_with_a_video_a_report_and_moving_total(server, ui):
    assert open_workflow(ui, TINY) == []
    ui.page.evaluate(f"""() => {{ window.__framememory_done = null; window.__framememory_totals = [];
        for (const type of ['execution_success', 'execution_error', 'execution_interrupted'])
          window.app.api.addEventListener(type, e => {{ window.__framememory_done = {{type, detail: e.detail}}; }});
        window.app.api.addEventListener('framememory.progress',
          () => setTimeout(() => window.__framememory_totals.push({TOTAL}), 0)); }}""")
    boxes = ui.page.locator("textarea.comfy-multiline-input")
    storyboard = next(boxes.nth(i) for i in range(boxes.count()) if " | " in boxes.nth(i).input_value())
    storyboard.fill(ONE_SHOT)  # typed as a user would: one 1 s shot keeps the run short
    assert ui.graph_to_prompt()["9"]["inputs"]["storyboard"] == ONE_SHOT
    run = ui.page.get_by_role(**RUN_BUTTON).filter(has_text="Run")
    assert run.count() == 1, f"{run.count()} buttons labelled Run"
    run.click()
    ui.page.wait_for_function("window.__framememory_done !== null", timeout=RUN_TIMEOUT_MS)
    done = ui.page.evaluate("window.__framememory_done")
    assert done["type"] == "execution_success", json.dumps(done)[:2000] + server.log_tail_text()
    output_video = "Array.from(document.querySelectorAll('video')).map(v => v.currentSrc || v.src)" \
                   ".filter(s => s.includes('type=output') && s.includes('storyboard'))"
    ui.page.wait_for_function(f"{output_video}.length > 0", timeout=30_000)  # the Save Video node's preview
    src = ui.page.evaluate(output_video)
    video = ui.page.request.get(src[0])
    assert video.ok and video.body()[4:8] == b"ftyp", (video.status, src)
    totals = ui.page.evaluate("window.__framememory_totals")
    assert len(totals) >= 3 and totals == sorted(totals) and 0 < max(totals) < 1, totals  # moved during the run
    report = ui.page.evaluate(f"{STORYBOARD_NODE}.widgets.find(w => w.name === '$$node-text-preview').value")
    assert report.startswith("Made 1.0 s of video: 1 segment") and "Memory (Frame Preservation):" in report, report
    assert "Joins: none (one segment)" in report and "Colour:" in report, report
    assert storyboard_box(ui)["height"] >= 100  # the previews and the report did not squeeze the box
    shown = ui.page.evaluate("""() => { const d = [...document.querySelectorAll('.dom-widget')]
        .find(d => d.innerText.includes('s of video: 1 segment'));
        return d ? {text: d.innerText, height: d.clientHeight, content: d.scrollHeight} : null; }""")
    assert shown and shown["text"].count("\n") >= report.count("\n"), (shown, report)
    assert shown["height"] >= shown["content"] >= 14 * len(report.splitlines()), shown  # every line in view


CANCEL_BUTTON = dict(role="button", name="Cancel current run", exact=True)  # the queue's button, 1.32 and 1.48
NODE_TEXT = f"{STORYBOARD_NODE}.widgets.find(w => w.name === '$$node-text-preview')?.value ?? ''"
# What the page receives, in order: the node's progress texts, the run-wide progress (with the Total and the tab title
# once the extension has folded it in) and the size of every preview image sent to the node.
RECORD = """() => { const log = window.__framememory_log = []; window.__framememory_done = null; const api = window.app.api;
    for (const type of ['execution_success', 'execution_error', 'execution_interrupted'])
      api.addEventListener(type, e => { window.__framememory_done = {type, detail: e.detail}; });
    api.addEventListener('progress_text', e => log.push({kind: 'text', text: e.detail.text}));
    api.addEventListener('framememory.progress', e => { const entry = {kind: 'progress', value: e.detail.value / e.detail.max};
      log.push(entry); window.__framememory_latest = entry.value;
      setTimeout(() => { entry.total = %s; entry.title = document.title; entry.latest = window.__framememory_latest; }, 0); });
    api.addEventListener('b_preview', e => { const entry = {kind: 'preview'}; log.push(entry);
      createImageBitmap(e.detail).then(b => { entry.size = [b.width, b.height]; }); }); }""" % TOTAL


@pytest.mark.timeout(2 * RUN_TIMEOUT_MS // 1000 + 300)  # two waits of the page for the run
def test_progress_previews_and_cancel_as_a_user_sees_them(server, ui):
    """Issue 26 points 3-4 on the tiny three-segment storyboard: one percentage (the node's text, the queue's Total and
    the tab title agree within 1 %) that moves through decode and encode; each finished segment's decoded frames on
    the node with the memory's tokens and seconds; the queue's Cancel button after the first segment leaves the node
    saying after which segment it stopped, where the finished ones are and how to continue, and the interrupted
    folder keeps the newest 5 runs."""
    import os
    import re
    import shutil
    import time

    interrupted = server.output_dir / "framememory" / "interrupted"
    shutil.rmtree(interrupted, ignore_errors=True)  # the shared server may hold other tests' cancelled runs
    for k in range(6):  # earlier cancelled runs, oldest first
        old = interrupted / f"storyboard_2026010{k}-000000.fmem"
        old.mkdir(parents=True)
        os.utime(old, (time.time() - 1000 + k, time.time() - 1000 + k))
    assert open_workflow(ui, TINY) == []
    ui.page.evaluate(RECORD)
    ui.page.get_by_role(**RUN_BUTTON).filter(has_text="Run").click()
    ui.page.wait_for_function("window.__framememory_log.some(e => e.kind === 'text' && "
                              "e.text.startsWith('Segment 2/3: sampling, step 1'))", timeout=RUN_TIMEOUT_MS)
    ui.page.get_by_role(**CANCEL_BUTTON).click()
    ui.page.wait_for_function("window.__framememory_done !== null", timeout=RUN_TIMEOUT_MS)
    assert ui.page.evaluate("window.__framememory_done.type") == "execution_interrupted"
    log = ui.page.evaluate("window.__framememory_log")
    progress = [e for e in log if e["kind"] == "progress"]
    values = [e["value"] for e in progress]
    assert values == sorted(values) and len(values) >= 10, values
    for e in progress:  # one number: the run's fraction, the Total and the tab title's first [NN%]. The Total is read
        # once the page is idle, when a slow page may already have folded in later events: compare it with the newest.
        assert abs(e["total"] - e["latest"]) <= 0.015 and abs(int(re.match(r"\[(\d+)%\]", e["title"]).group(1))
                                                           - 100 * e["total"]) <= 1, e
    for k, e in enumerate(log):  # each text's percentage is the run fraction sent with it
        if e["kind"] == "text" and not e["text"].startswith("Cancelled"):
            sent = next(p for p in log[k:] if p["kind"] == "progress")
            assert int(re.search(r" - (\d+) %", e["text"]).group(1)) == int(100 * sent["value"] + 1e-9), (e, sent)
    texts = [e["text"] for e in log if e["kind"] == "text"]
    where = {what: next(e["value"] for k, e in enumerate(log) if e["kind"] == "progress" and any(
        what in t["text"] for t in log[:k] if t["kind"] == "text")) for what in ("decoding its", "adding it")}
    assert 0 < where["decoding its"] < where["adding it"] < 1 / 3, where  # decode and encode move it too
    done = next(k for k, e in enumerate(log) if e["kind"] == "text" and e["text"].startswith("Segment 1/3: done - 33 %"))
    assert re.search(r"\nMemory: \d+ tokens for the last [\d.]+ s of video$", log[done]["text"]), log[done]
    grid = next(e for e in log[done:] if e["kind"] == "preview")
    assert grid["size"] == [512, 259], grid  # the segment's frames: 2x2 decoded 256x128 frames (+2 px gaps), 512 px
    previews = [e["size"] for e in log if e["kind"] == "preview"]  # decoded frames only, never latent colours
    assert previews == [[512, 259]] * sum(" done - " in t for t in texts), previews
    assert ui.page.evaluate(f"{STORYBOARD_NODE}.imgs.map(i => [i.naturalWidth, i.naturalHeight])") == [[512, 259]]
    lines = ui.page.evaluate(NODE_TEXT).splitlines()
    assert re.fullmatch(r"Cancelled after segment [12] of 3\.", lines[0]), (lines, texts[-3:])
    saved = re.fullmatch(r"The finished segments are saved in output/(framememory/interrupted/storyboard_[\d-]+"
                         r"\.fmem)\.", lines[1])
    assert saved and (server.output_dir / saved.group(1)).is_dir(), lines
    assert "Load Memory with path" in lines[2] and "newest 5" in lines[2], lines
    kept = sorted(p.name for p in interrupted.glob("storyboard_*.fmem"))
    assert len(kept) == 5 and kept[0] == "storyboard_20260102-000000.fmem", kept  # the two oldest removed
