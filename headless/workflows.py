"""The pack's example workflows as the real frontend sees them (issue 15): ``workflows/NAME.json`` is the UI-format
workflow a user opens from the Templates browser, ``workflows/api/NAME_api.json`` the API prompt the frontend makes
of it (``app.graphToPrompt``; what scripts and tests POST to ``/prompt``), ``workflows/NAME.jpg`` its thumbnail in
the Templates browser (ComfyUI serves ``/api/workflow_templates/<pack>/NAME.jpg``).

Every function takes an open :class:`~framememory.headless.browser.ComfyFrontend`; ``scripts/sync_workflows.py``
is the command line, ``tests/test_browser.py`` the test.
"""
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

from ..memory.io import write_file_atomic
from .browser import SAFE_AREA, ComfyFrontend

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
THUMBNAIL_SIZE = (400, 300)  # px, 4:3 like the template cards; the graph is padded, never cropped


def ui_workflows(directory: Path = WORKFLOWS) -> list[Path]:
    """The UI-format workflows: every top-level ``*.json`` of ``directory`` (what the Templates browser lists)."""
    return sorted(directory.glob("*.json"))


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
    toolbar, side bar or minimap) or draws nodes as blank boxes, a missing thumbnail."""
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
    if not thumbnail_path_for(ui_path).exists():
        problems.append(f"{thumbnail_path_for(ui_path).name} (thumbnail) is missing")
    return problems


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
    """Re-save ``ui_path`` through the frontend with a view fitted to the whole graph (:data:`SAFE_AREA`), write its
    API file from ``graphToPrompt`` and its thumbnail. Returns the problems that remain (then nothing is written
    for this workflow: missing nodes, or a graph too large to be readable when it fits)."""
    problems = open_workflow(ui, ui_path)
    view = ui.fit_view()
    if view["low_quality"]:
        problems.append(f"the whole graph only fits at zoom {view['scale']:.2f}, where nodes draw as blank boxes: "
                        "lay it out more compactly")
    if problems:
        return problems
    workflow, prompt = ui.serialize(), ui.graph_to_prompt()
    write_file_atomic(ui_path, dumps(workflow))
    write_file_atomic(api_path_for(ui_path), dumps(prompt))
    write_thumbnail(ui, thumbnail_path_for(ui_path))
    return []


def write_thumbnail(ui: ComfyFrontend, path: Path) -> Path:
    """Screenshot the graph at the current view (its bounding box, 8 px margin), padded to
    :data:`THUMBNAIL_SIZE` on the canvas colour, as a JPEG (quality 80) at ``path``."""
    from PIL import Image, ImageOps

    rects = list(ui.node_rects().values())
    left, top, right, bottom = SAFE_AREA
    box = (max(left, min(r[0] for r in rects) - 8), max(top, min(r[1] for r in rects) - 8),
           min(right, max(r[0] + r[2] for r in rects) + 8), min(bottom, max(r[1] + r[3] for r in rects) + 8))
    with tempfile.TemporaryDirectory() as tmp:
        shot = ui.screenshot(Path(tmp) / "graph.png", clip=box)
        with Image.open(shot) as image:
            rgb = image.convert("RGB")
            background = rgb.getpixel((1, 1))
            thumb = ImageOps.pad(rgb, THUMBNAIL_SIZE, method=Image.Resampling.LANCZOS, color=background)
    jpeg = io.BytesIO()
    thumb.save(jpeg, format="JPEG", quality=80, optimize=True)
    write_file_atomic(path, jpeg.getvalue())
    return path
