"""The pack's templates as a first-time user meets them in the Templates dialog of the real frontend (issue 26,
point 1): 1.32.9 with ComfyUI 0.3.75, 1.48.7 with 0.33.0 (whichever the server under test serves; run this file once
per ComfyUI, COMFYUI_DIR + FRAMEMEMORY_VENV as in tests/test_browser.py).

1. The dialog's entry for the pack lists exactly the templates of framememory.headless.templates.TEMPLATES, the
   no-download lab template first, no test-only tiny workflow; each card shows its name as the title (1.32.9 also as
   the description: the frontends read nothing else about a custom node's template) and its thumbnail, the
   committed frame thumbnail (caption band with the title and description drawn in, a JPEG comment naming what the
   frames are; not a picture of the graph).
2. Opening each card loads the template with its Note in view, naming every file it needs (lab: what the lab
   model is; real weights: where to get them).
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from framememory.headless.comfy_server import PACK_NAME
from framememory.headless.templates import (CAPTION_HEIGHT, NOTE_TITLE, NOTE_TYPE, TEMPLATES, THUMBNAIL_MARK,
                                            compose_thumbnail, frames_are_text)
from framememory.headless.workflows import WORKFLOWS, template_workflows, thumbnail_path_for

CARD = '[data-testid^="template-workflow-"]'


@pytest.fixture(scope="module")
def server(comfy_server):
    """The session's one server (tests/conftest.py ``comfy_server``): every template's files listed."""
    return comfy_server


@pytest.fixture(scope="module")
def cards(ui):
    """The pack's cards as the Templates dialog renders them: [{name, title, description, img}], in order."""
    open_pack_templates(ui)
    return read_cards(ui)


def frontend_version(ui) -> tuple[int, ...]:
    return tuple(int(p) for p in ui.page.evaluate("window.__COMFYUI_FRONTEND_VERSION__").split(".")[:2])


def open_pack_templates(ui) -> None:
    """Open the Templates dialog (the frontend's Browse Templates command, as the sidebar button runs it) and pick
    the pack's entry under Extensions, as a user does."""
    ui.page.evaluate("window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    group = ui.page.get_by_text("Extensions", exact=True).first
    group.wait_for(timeout=60_000)  # the dialog is up
    ui.page.wait_for_timeout(500)
    entry = ui.page.get_by_text(PACK_NAME, exact=True)
    if not entry.first.is_visible():  # the Extensions group is collapsed
        group.click()
    entry.first.click()
    ui.page.wait_for_function(f"""() => {{ const c = [...document.querySelectorAll('{CARD}')];
        return c.length > 0 && c.every(e => e.querySelector('img')?.complete); }}""", timeout=60_000)
    ui.page.wait_for_timeout(500)


def read_cards(ui) -> list[dict]:
    return ui.page.evaluate(f"""() => [...document.querySelectorAll('{CARD}')].map(c => ({{
        name: c.dataset.testid.replace('template-workflow-', ''),
        title: c.querySelector('h3')?.innerText.trim() ?? null,
        description: c.querySelector('p')?.innerText.trim() ?? null,
        img: c.querySelector('img')?.currentSrc ?? null, width: c.querySelector('img')?.naturalWidth ?? 0}}))""")


def test_dialog_lists_the_templates_lab_first_and_no_tiny_workflow(server, ui, cards):
    names = [c["name"] for c in cards]
    assert names == [t.name for t in TEMPLATES], names  # ordered by web/templates_order.js, lab first
    assert sorted(names) == sorted(p.stem for p in template_workflows())
    assert not [n for n in names if "tiny" in n], names
    assert not [n for n in server._get("/api/workflow_templates").json()[PACK_NAME] if "tiny" in n]


def shown_image(ui, src: str) -> bytes:
    """The bytes of the image a card shows (its ``src``: the template's URL, or a blob the frontend fetched from it)."""
    return bytes(ui.page.evaluate("async src => Array.from(new Uint8Array(await (await fetch(src)).arrayBuffer()))",
                                  src))


def test_cards_show_the_name_and_the_frame_thumbnail(server, ui, cards):
    described = frontend_version(ui) < (1, 40)  # 1.48.7's cards have no description line
    for card in cards:
        assert card["title"] == card["name"], card  # what both frontends take as a custom template's title
        if described:
            assert card["description"] == card["name"].replace("_", " "), card
        assert card["width"] == 400, card  # the image loaded
        committed = thumbnail_path_for(WORKFLOWS / f"{card['name']}.json").read_bytes()
        assert shown_image(ui, card["img"]) == committed, card  # what the card shows is the committed thumbnail
        assert server._get(f"/api/workflow_templates/{PACK_NAME}/{card['name']}.jpg").content == committed


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_thumbnail_is_frames_with_a_caption_not_the_graph(template):
    from PIL import Image

    with Image.open(thumbnail_path_for(WORKFLOWS / f"{template.name}.json")) as image:
        comment, pixels = image.info.get("comment", b"").decode(), np.asarray(image.convert("RGB"), np.float32)
    assert comment == f"{THUMBNAIL_MARK} {template.name}: {frames_are_text(template)}", comment
    assert ("output with the lab model" in comment) == template.runs_here  # lab output never stands for Wan's
    assert ("output not shown" in comment) != template.runs_here
    band = pixels.shape[0] - CAPTION_HEIGHT
    with Image.open(io.BytesIO(compose_thumbnail([np.zeros((8, 8, 3), np.uint8)], template,
                                                 frames_are_text(template)))) as expected:
        want = np.asarray(expected.convert("RGB"), np.float32)[band:]
    assert np.abs(pixels[band:] - want).mean() < 4.0  # the caption band holds this title and description
    frames = pixels[:band]
    assert frames.std() > 8.0  # pictures, not a flat canvas
    grid = frames.reshape(2, band // 2, 2, pixels.shape[1] // 2, 3)[:, 2:-2, :, 2:-2]
    assert np.abs(grid[0, :, 0] - grid[1, :, 1]).mean() > 2.0  # four different frames, not one picture


@pytest.mark.parametrize("index", range(len(TEMPLATES)), ids=[t.name for t in TEMPLATES])
def test_each_card_opens_its_template_with_a_note_naming_its_files(ui, index):
    template = TEMPLATES[index]
    open_pack_templates(ui)
    ui.page.locator(f'[data-testid="template-workflow-{template.name}"]').click()
    ui.page.wait_for_function("""([type, start]) => !document.querySelector('[data-testid^="template-workflow-"]')
        && window.app.graph.nodes.some(n => n.type === type && String(n.widgets?.[0]?.value).startsWith(start))""",
                              arg=[NOTE_TYPE, f"{template.title} - "], timeout=60_000)  # this template, not the last
    ui.settle()
    notes = ui.page.evaluate(f"""() => window.app.graph.nodes.filter(n => n.type === '{NOTE_TYPE}')
        .map(n => ({{title: n.title, text: n.widgets[0].value}}))""")
    assert [n["title"] for n in notes] == [NOTE_TITLE], notes
    text = notes[0]["text"]
    for name, folder, source in template.files:
        assert f"{folder}/{name}" in text, (name, text)
        assert source in text, (source, text)
    assert ("11 real clips at 256x128: blurry by design" in text) == template.runs_here, text  # what the lab model is
    switch = "wan2.1_t2v_1.3B_bf16" if template.runs_here else "'storyboard_wan21_lab'"
    assert switch in text, text  # how to switch: to real weights, or (no weights yet) to the no-download template
    assert NOTE_TITLE not in ui.hidden_nodes()  # in view, readable (tests/test_browser.py checks every node)
    shown = ui.page.evaluate("() => [...document.querySelectorAll('.dom-widget textarea')].map(t => t.value)")
    assert text in shown  # the text is on screen in the Note's box
