"""The pack's example workflows as the real frontend sees them (issues 15 and 26): ``workflows/NAME.json`` is a
template a user opens from the Templates browser, ``workflows/api/NAME_api.json`` the API prompt the frontend makes
of it (``app.graphToPrompt``; what scripts and tests POST to ``/prompt``), ``workflows/NAME.jpg`` its thumbnail in
the Templates browser (ComfyUI serves ``/api/workflow_templates/<pack>/NAME.jpg``; made by
:mod:`framememory.headless.templates`: frames of what it makes). Each template has a Note node (the frontend's own
``Note``) saying what it needs. ``demo/workflows/`` holds the test-only workflows of the tiny random models (same
layout, no thumbnail, no Note), out of the Templates browser.

Every function takes an open :class:`~framememory.headless.browser.ComfyFrontend`; ``scripts/sync_workflows.py``
is the command line, ``tests/test_browser.py`` and ``tests/test_browser_templates.py`` the tests.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..memory.io import write_file_atomic
from .browser import ComfyFrontend
from .templates import NOTE_TITLE, NOTE_TYPE, THUMBNAIL_MARK, THUMBNAIL_SIZE, note_text, template_for

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"  # the templates (ComfyUI lists <pack>/workflows/*.json)
DEMO_WORKFLOWS = REPO_ROOT / "demo" / "workflows"  # test-only workflows of the tiny random models


def template_workflows(directory: Path = WORKFLOWS) -> list[Path]:
    """The templates: every top-level ``*.json`` of ``directory`` (what the Templates browser lists)."""
    return sorted(directory.glob("*.json"))


def ui_workflows() -> list[Path]:
    """Every UI-format workflow kept in step with the frontend: the templates, then ``demo/workflows/*.json``."""
    return template_workflows() + sorted(DEMO_WORKFLOWS.glob("*.json"))


def is_template(ui_path: Path) -> bool:
    """True for a Templates-browser workflow (in ``workflows/``), False for a test-only one."""
    return ui_path.resolve().parent == WORKFLOWS


MODEL_SUFFIXES = (".safetensors", ".gguf", ".ckpt", ".pt", ".pth", ".bin")
MODEL_FOLDERS = ("diffusion_models", "vae", "text_encoders", "memory_encoders", "loras")
LAB_MODEL = REPO_ROOT / "lab_model"


def add_named_model_files(models_dir: Path, paths: list[Path]) -> list[str]:
    """Make every model file the workflows ``paths`` name (a widget value ending in a model suffix) listable in a
    server's ``models_dir``, so the frontend shows the loaders as a user with those files sees them (frontend >= 1.48
    outlines a loader whose file is missing in red, which would end up in the thumbnails): the ``lab_model/`` file
    of that name linked in, else an empty placeholder (never loaded: listing only), in each of
    :data:`MODEL_FOLDERS`. Files already present are left alone. Returns the names added. Call before the server
    starts."""
    names = set()
    for path in paths:
        for node in json.loads(path.read_text()).get("nodes", []):
            values = node.get("widgets_values")
            for value in values if isinstance(values, list) else []:
                if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                    names.add(value)
    present = {p.name for p in models_dir.rglob("*") if p.is_file() or p.is_symlink()}
    added = sorted(names - present)
    for name in added:
        for folder in MODEL_FOLDERS:
            target = models_dir / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (LAB_MODEL / name).is_file():
                target.symlink_to(LAB_MODEL / name)
            else:
                target.touch()
    return added


def api_path_for(ui_path: Path) -> Path:
    """``workflows/NAME.json`` -> ``workflows/api/NAME_api.json``."""
    return ui_path.parent / "api" / f"{ui_path.stem}_api.json"


def thumbnail_path_for(ui_path: Path) -> Path:
    """``workflows/NAME.json`` -> ``workflows/NAME.jpg``."""
    return ui_path.with_suffix(".jpg")


def dumps(data: dict) -> str:
    """The committed JSON layout: 2-space indent, UTF-8, trailing newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def open_workflow(ui: ComfyFrontend, ui_path: Path) -> list[str]:
    """Load ``ui_path`` in the frontend; returns its problems so far (missing node types, page errors).

    Raises:
        ValueError: ``ui_path`` is not a UI-format workflow (no ``nodes``: an API file in the wrong folder)."""
    workflow = json.loads(ui_path.read_text())
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise ValueError(f"{ui_path}: not a UI-format workflow (no 'nodes'); API-format files belong in "
                         f"{ui_path.parent / 'api'}")
    errors_before = len(ui.errors)
    missing = ui.load_workflow(workflow, ui_path.stem)
    problems = [f"missing node type {t!r} (is the pack loaded, FRAMEMEMORY_DEMO=1 for demo nodes?)" for t in missing]
    return problems + [f"page error while loading: {e}" for e in ui.errors[errors_before:]]


def check_workflow(ui: ComfyFrontend, ui_path: Path) -> list[str]:
    """Everything a user would trip over in ``ui_path``, as messages (``[]`` = fine): missing node types, page
    errors, an API file that differs from the frontend's ``graphToPrompt`` of the graph (beyond inputs of a newer
    ComfyUI that this one lacks, :func:`for_this_server`), a saved view that hides a node (off screen or under the
    toolbar, side bar or minimap) or draws nodes as blank boxes; for a template also a missing or wrong Note
    (:func:`note_problems`) and a missing thumbnail or one not made by :mod:`~framememory.headless.templates`."""
    problems = open_workflow(ui, ui_path)
    hidden, view = ui.hidden_nodes(), ui.view()
    if hidden:
        problems.append(f"the saved view hides {hidden} in a {ui.viewport['width']}x{ui.viewport['height']} window")
    if view["low_quality"]:
        problems.append(f"the saved view's zoom {view['scale']:.2f} draws nodes as blank boxes")
    api_path = api_path_for(ui_path)
    prompt = ui.graph_to_prompt()
    committed = json.loads(api_path.read_text()) if api_path.exists() else None
    if committed is None:
        problems.append(f"{api_path} is missing")
    elif (committed := for_this_server(ui, committed, prompt)) != prompt:
        problems.append(f"{api_path.name} differs from the frontend's graphToPrompt of {ui_path.name}: "
                        + prompt_difference(committed, prompt))
    if is_template(ui_path):
        problems += note_problems(ui, ui_path) + thumbnail_problems(thumbnail_path_for(ui_path))
    return problems


def thumbnail_problems(path: Path) -> list[str]:
    """``[]`` when ``path`` is a :data:`THUMBNAIL_SIZE` JPEG whose comment starts with :data:`THUMBNAIL_MARK`
    (made from frames by ``scripts/sync_workflows.py --thumbnails``), else what is wrong."""
    from PIL import Image

    if not path.exists():
        return [f"{path.name} (thumbnail) is missing: scripts/sync_workflows.py --thumbnails"]
    with Image.open(path) as image:
        kind, size, comment = image.format, image.size, image.info.get("comment", b"")
    if (kind, size) != ("JPEG", THUMBNAIL_SIZE) or not comment.startswith(THUMBNAIL_MARK.encode()):
        return [f"{path.name} is not a frame thumbnail ({kind} {size}, comment {comment[:60]!r}): "
                "scripts/sync_workflows.py --thumbnails"]
    return []


# The Note the frontend shows: its text, its rectangle and the rectangles of the other nodes (graph units).
READ_NOTES = """([type, title]) => window.app.graph.nodes.filter(n => n.type === type && n.title === title)
    .map(n => ({id: n.id, text: n.widgets?.[0]?.value ?? null, rect: Array.from(n.boundingRect),
                others: window.app.graph.nodes.filter(m => m !== n).map(m => Array.from(m.boundingRect))}))"""


def note_problems(ui: ComfyFrontend, ui_path: Path) -> list[str]:
    """``[]`` when the open graph (template ``ui_path``) has exactly one Note titled :data:`NOTE_TITLE` whose
    text is :func:`~framememory.headless.templates.note_text` and which overlaps no other node."""
    notes = ui.page.evaluate(READ_NOTES, [NOTE_TYPE, NOTE_TITLE])
    if len(notes) != 1:
        return [f"{len(notes)} {NOTE_TYPE} nodes titled {NOTE_TITLE!r} (want 1): scripts/sync_workflows.py --write"]
    note, want = notes[0], note_text(template_for(ui_path))
    problems = [] if note["text"] == want else [f"the Note's text differs from templates.note_text: "
                                                 "scripts/sync_workflows.py --write"]
    x, y, w, h = note["rect"]
    overlapped = [r for r in note["others"] if x < r[0] + r[2] and r[0] < x + w and y < r[1] + r[3] and r[1] < y + h]
    return problems + ([f"the Note overlaps {len(overlapped)} node(s)"] if overlapped else [])


def for_this_server(ui: ComfyFrontend, committed: dict, frontend: dict) -> dict:
    """``committed`` without the inputs a newer ComfyUI added that this one neither defines nor makes: an input of a
    committed node is dropped when the server's node type has no input of that name and the frontend's own prompt
    (``frontend``) has none either (e.g. Create Video's ``bit_depth`` and Save Video's ``codec.encoding`` of ComfyUI
    0.33.0, unknown to 0.3.75, whose server ignores them in a POSTed prompt). Everything else must match exactly."""
    defined = ui.node_inputs(sorted({node["class_type"] for node in committed.values()}))
    out = {}
    for node_id, node in committed.items():
        mine = frontend.get(node_id, {}).get("inputs", {})
        names = defined.get(node["class_type"])
        inputs = {k: v for k, v in node.get("inputs", {}).items() if names is None or k in names or k in mine}
        out[node_id] = {**node, "inputs": inputs}
    return out


def prompt_difference(committed: dict, frontend: dict) -> str:
    """The first nodes in which two API prompts differ, as ``id: committed -> frontend`` text (for messages)."""
    ids = sorted(set(committed) | set(frontend), key=lambda k: (len(k), k))
    diffs = [f"node {k}: {json.dumps(committed.get(k))[:300]} -> {json.dumps(frontend.get(k))[:300]}"
             for k in ids if committed.get(k) != frontend.get(k)]
    return "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")


def write_workflow(ui: ComfyFrontend, ui_path: Path) -> list[str]:
    """Re-save ``ui_path`` through the frontend: for a template first its Note (:func:`place_note`), then a view
    fitted to the whole graph (:data:`~framememory.headless.browser.SAFE_AREA`); write its API file from
    ``graphToPrompt``. Thumbnails are made apart (``scripts/sync_workflows.py --thumbnails``). Returns the problems
    that remain (then nothing is written for this workflow: missing nodes, or a graph too large to be readable when
    it fits)."""
    problems = open_workflow(ui, ui_path)
    if is_template(ui_path) and not problems:
        place_note(ui, note_text(template_for(ui_path)))
    view = ui.fit_view()
    if view["low_quality"]:
        problems.append(f"the whole graph only fits at zoom {view['scale']:.2f}, where nodes draw as blank boxes: "
                        "lay it out more compactly")
    if problems:
        return problems
    workflow, prompt = ui.serialize(), ui.graph_to_prompt()
    write_file_atomic(ui_path, dumps(workflow))
    write_file_atomic(api_path_for(ui_path), dumps(prompt))
    return []


# Add (or update) the template's Note with the frontend's own API: LiteGraph.createNode + graph.add, its text in the
# node's widget. It goes into the free space right of the Storyboard, under the nodes that follow it (Create / Save
# Video), down to the Storyboard's bottom; below the whole graph when that space is under MIN_NOTE_HEIGHT.
PLACE_NOTE = """([type, title, text, gap, minHeight, fallback]) => {
    const graph = window.app.graph;
    let note = graph.nodes.find(n => n.type === type && n.title === title);
    if (!note) { note = window.LiteGraph.createNode(type); note.title = title; graph.add(note); }
    note.widgets[0].value = text;
    const rects = graph.nodes.filter(n => n !== note).map(n => Array.from(n.boundingRect));
    const title_h = window.LiteGraph.NODE_TITLE_HEIGHT;
    const board = graph.nodes.find(n => n.type === 'FrameMemoryStoryboard');
    const b = board ? Array.from(board.boundingRect) : null;
    const after = b ? rects.filter(r => r[0] >= b[0] + b[2]) : [];
    let x, y, w, h;
    if (after.length) {
      x = Math.min(...after.map(r => r[0])); y = Math.max(...after.map(r => r[1] + r[3])) + gap + title_h;
      w = Math.max(...after.map(r => r[0] + r[2])) - x; h = b[1] + b[3] - y;
    }
    if (!after.length || h < minHeight) {
      x = Math.min(...rects.map(r => r[0])); y = Math.max(...rects.map(r => r[1] + r[3])) + gap + title_h;
      [w, h] = fallback;
    }
    note.pos = [x, y]; note.size = [w, h]; graph.setDirtyCanvas(true, true);
    return [x, y, w, h]; }"""
MIN_NOTE_HEIGHT = 380  # graph units: the note's text (about 22 lines) without a scroll bar


def place_note(ui: ComfyFrontend, text: str) -> list[float]:
    """Give the open graph one :data:`NOTE_TYPE` node titled :data:`NOTE_TITLE` holding ``text``, placed where it
    overlaps no node (:data:`PLACE_NOTE`); returns its ``[x, y, w, h]`` (graph units, body without title bar)."""
    return ui.page.evaluate(PLACE_NOTE, [NOTE_TYPE, NOTE_TITLE, text, 40, MIN_NOTE_HEIGHT, [760, 440]])
