"""End to end through a real headless ComfyUI server (tests/harness.py) with the embedded default models.

One server per module: tiny random Wan 2.1 / VAE / memory encoder written by demo/make_tiny_models.py,
bikes.mp4 from .cache/media (scripts/setup.sh fetches it) as the history video, FRAMEMEMORY_DEMO=1.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import ComfyServer, substitute_inputs

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
TINY_API = WORKFLOWS / "api" / "storyboard_wan21_tiny_api.json"
OUR_NODES = ("FrameMemoryLoadEncoder", "FrameMemoryEncodeHistory", "FrameMemoryApplyMemory", "FrameMemoryStoryboard")
TINY_NAMES = {
    ("UNETLoader", "unet_name"): "framememory_tiny_wan21.safetensors",
    ("VAELoader", "vae_name"): "framememory_tiny_wan21_vae.safetensors",
    ("FrameMemoryLoadEncoder", "encoder_name"): "framememory_tiny_wan21_encoder.safetensors",
}
VIDEO = "bikes.mp4"
RUN_TIMEOUT = 900  # seconds for one tiny storyboard on 2 CPU cores
UI_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
# Combo inputs whose options are files on the server: the value only has to be a string.
FILE_INPUTS = {"unet_name", "vae_name", "clip_name", "clip_name1", "clip_name2", "encoder_name", "ckpt_name",
               "lora_name", "control_net_name", "file", "image", "video", "audio"}
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(comfyui_dir, media_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    srv = ComfyServer(base, comfyui_dir=comfyui_dir)
    srv.prepare_base()
    proc = subprocess.run([srv.python, str(REPO_ROOT / "demo" / "make_tiny_models.py"), "--comfyui-dir",
                           str(comfyui_dir), "--out", str(srv.models_dir)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"demo/make_tiny_models.py failed:\n{proc.stdout}\n{proc.stderr}"
    shutil.copy2(media_dir / VIDEO, srv.input_dir / VIDEO)
    with srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_prompt() -> dict:
    assert TINY_API.exists(), f"{TINY_API} is missing"
    api = json.loads(TINY_API.read_text())
    return substitute_inputs(api, {**TINY_NAMES, ("LoadVideo", "file"): VIDEO})


@pytest.fixture(scope="module")
def run(server, tiny_prompt):
    """The tiny storyboard, run once: {"prompt_id", "events", "history", "report", "video"}."""
    prompt_id = server.post_prompt(tiny_prompt)
    events = server.follow(prompt_id, timeout=RUN_TIMEOUT)
    history = server.history(prompt_id)
    reports = [ui["framememory_report"] for ui in (history.get("outputs") or {}).values() if ui.get("framememory_report")]
    videos = [p for nid, n in tiny_prompt.items() if n["class_type"] == "SaveVideo"
              for p in server.output_files(history, nid, (".mp4",))]
    return {"prompt_id": prompt_id, "events": events, "history": history,
            "report": reports[0][0] if reports else None, "video": videos[0] if videos else None}


def _decode(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


# ---- server and nodes ---------------------------------------------------------------------------
def test_object_info_lists_our_nodes(server):
    info = server.object_info()
    missing = [n for n in OUR_NODES if n not in info]
    assert not missing, f"/object_info lacks {missing}; pack import error: {server.pack_import_error()}"


def test_storyboard_runs_to_success_with_progress(server, run):
    types = [e["type"] for e in run["events"]]
    if types[-1] != "execution_success":
        server.raise_for_events(run["events"])  # raises with the node's exception and the server log
    assert "progress" in types, f"no progress events over the websocket: {types}"
    assert run["history"]["status"]["status_str"] == "success"


def test_output_video_has_report_frame_count(server, run):
    report, video = run["report"], run["video"]
    assert report is not None, f"no framememory_report in outputs: {json.dumps(run['history']['outputs'])[:2000]}"
    assert video is not None and video.is_file(), f"no SaveVideo mp4 in outputs: {run['history']['outputs']}"
    frames = _decode(video)
    # total_frames counts generated frames; output_frames what the node outputs (the starting clip first
    # when include_history is on, as in the tiny workflow).
    expected = report.get("output_frames", report["total_frames"])
    assert frames.shape[0] == expected, (frames.shape, report)
    assert frames.shape[1:3] == (report["height"], report["width"])
    pixels = frames.astype("float64")
    assert all(math.isfinite(v) for v in (pixels.mean(), pixels.std()))
    assert pixels.std() > 0, "every pixel of the video has the same value"


def test_report_segments_tile_the_video_and_memory_covers_history(run):
    report = run["report"]
    assert report is not None
    segments = report["segments"]
    assert len(segments) >= 2, f"the tiny storyboard should have several segments: {segments}"
    assert segments[0]["start_frame"] == report["start_frames"]
    for prev, seg in zip(segments, segments[1:]):
        assert seg["start_frame"] == prev["start_frame"] + prev["frames"], (prev, seg)
    assert segments[-1]["start_frame"] + segments[-1]["frames"] == report["start_frames"] + report["total_frames"]
    assert sum(s["frames"] for s in segments) == report["total_frames"]
    for seg in segments:
        assert 0 <= seg["shot"] < len(report["shots"]), seg
    for prev, seg in zip(segments[1:], segments[2:]):
        assert seg["memory_tokens"] > prev["memory_tokens"], (prev, seg)
    for seg in segments[1:]:
        assert seg["history_frames_covered"] == seg["history_frames_total"] == seg["start_frame"], seg
        assert seg["memory_tokens"] > 0, seg
    # one continuous video: 4 frames per latent frame, except the stream's first latent frame (one frame) when the
    # storyboard starts the stream; the decode keeps the WanVAE cache; one seam ratio per segment boundary
    for k, seg in enumerate(segments):
        starts_stream = k == 0 and report["start_frames"] == 0
        assert seg["frames"] == 4 * seg["latent_frames"] - (3 if starts_stream else 0), seg
    assert report["decode"].startswith("exact"), report["decode"]
    assert len(report["seams"]["per_boundary"]) == len(segments) - 1, report["seams"]


# ---- UI workflows -------------------------------------------------------------------------------
def _ui_workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def _combo_options(spec: list) -> list | None:
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return (spec[1] if len(spec) > 1 else {}).get("options", [])
    return None


def _widget_inputs(node_info: dict) -> list[tuple[str, list]]:
    """(name, spec) of the inputs the frontend shows as widgets, in widgets_values order."""
    inputs, order = node_info.get("input") or {}, node_info.get("input_order") or {}
    out = []
    for group in ("required", "optional"):
        specs = inputs.get(group) or {}
        for name in order.get(group) or list(specs):
            spec = specs.get(name)
            if not spec:
                continue
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if opts.get("forceInput") or opts.get("rawLink"):
                continue
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                out.append((name, spec))
    return out


def _check_value(name: str, spec: list, value) -> str | None:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    combo = _combo_options(spec)
    if combo is not None:
        is_file = (name in FILE_INPUTS or any(opts.get(f) for f in UPLOAD_FLAGS)
                   or (isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES))
                   or (combo and all(isinstance(o, str) and o.lower().endswith(MODEL_SUFFIXES) for o in combo)))
        if is_file:
            return None if isinstance(value, str) else f"{name}: file name {value!r} is not a string"
        return None if value in combo else f"{name}: {value!r} not in {combo}"
    kind = spec[0]
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name}: {value!r} is not an INT"
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name}: {value!r} is not a FLOAT"
    elif kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a BOOLEAN"
    elif kind == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a STRING"
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{name}: {value} < min {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{name}: {value} > max {opts['max']}"
    return None


def _check_ui_node(node: dict, info: dict) -> list[str]:
    ntype = node.get("type")
    where = f"node {node.get('id')} ({ntype})"
    if ntype in UI_ONLY_TYPES:
        return []
    if ntype not in info:
        return [f"{where}: type not in /object_info"]
    values = node.get("widgets_values")
    if values is None:
        return []
    widgets = _widget_inputs(info[ntype])
    errors = []
    if isinstance(values, dict):
        specs = dict(widgets)
        for name, value in values.items():
            if name in specs:
                err = _check_value(name, specs[name], value)
                errors += [f"{where}: {err}"] if err else []
        return errors
    i = uploads = 0
    for name, spec in widgets:
        if i >= len(values):
            errors.append(f"{where}: widgets_values has {len(values)} entries, no value for '{name}'")
            break
        err = _check_value(name, spec, values[i])
        errors += [f"{where}: {err}"] if err else []
        i += 1
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        # frontend-only companions: seed "control after generate", and the upload button of file combos
        if (opts.get("control_after_generate") or name in ("seed", "noise_seed")) and i < len(values) \
                and values[i] in CONTROL_VALUES:
            i += 1
        uploads += any(opts.get(f) for f in UPLOAD_FLAGS)
    # the upload button of file combos is serialised after all the node's inputs (frontend: uploadImage.ts adds it last)
    while uploads and i < len(values) and values[i] in ("image", "video", "audio", ""):
        i, uploads = i + 1, uploads - 1
    if i < len(values):
        errors.append(f"{where}: {len(values) - i} widgets_values left over after {[n for n, _ in widgets]}: {values[i:]}")
    return errors


def test_ui_workflows_match_server_node_specs(server):
    paths = _ui_workflows()
    assert paths, f"no UI-format workflows in {WORKFLOWS}"
    info = server.object_info()
    errors = []
    for path in paths:
        workflow = json.loads(path.read_text())
        nodes = workflow.get("nodes")
        if not nodes:
            errors.append(f"{path.name}: no 'nodes' (is it API format? name it *_api.json)")
            continue
        errors += [f"{path.name}: {e}" for node in nodes for e in _check_ui_node(node, info)]
    assert not errors, "\n".join(errors)


# ---- interrupt ----------------------------------------------------------------------------------
def test_interrupt_stops_the_storyboard_and_server_survives(server, tiny_prompt, media_dir):
    # A different input file name and seed so nothing is served from ComfyUI's cache.
    shutil.copy2(media_dir / VIDEO, server.input_dir / "interrupt_bikes.mp4")
    prompt = substitute_inputs(tiny_prompt, {("LoadVideo", "file"): "interrupt_bikes.mp4"})
    for node in prompt.values():
        for key in ("seed", "noise_seed"):
            if isinstance(node["inputs"].get(key), int):
                node["inputs"][key] += 1
    sent = []

    def on_event(event):
        if event["type"] == "progress" and not sent:
            server.interrupt()
            sent.append(event)

    prompt_id = server.post_prompt(prompt)
    events = server.follow(prompt_id, timeout=RUN_TIMEOUT, on_event=on_event)
    types = [e["type"] for e in events]
    assert sent, f"no progress event before the end: {types}"
    assert types[-1] == "execution_interrupted", types
    assert server.alive()
    assert "FrameMemoryStoryboard" in server.object_info()
