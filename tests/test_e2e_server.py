"""End to end through a real headless ComfyUI server (headless/comfy_server.py) with the embedded default models.

The session's one server (tests/conftest.py ``comfy_server``, shared with every e2e and browser test): tiny random
Wan 2.1 / VAE / memory encoder written by demo/make_tiny_models.py, bikes.mp4 from .cache/media (scripts/setup.sh
fetches it) as the history video, FRAMEMEMORY_DEMO=1.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from framememory.headless.comfy_server import substitute_inputs

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_API = REPO_ROOT / "demo" / "workflows" / "api" / "storyboard_wan21_tiny_api.json"  # test-only, not a template
OUR_NODES = ("FrameMemoryLoadEncoder", "FrameMemoryEncodeHistory", "FrameMemoryApplyMemory", "FrameMemoryStoryboard")
TINY_NAMES = {
    ("UNETLoader", "unet_name"): "framememory_tiny_wan21.safetensors",
    ("VAELoader", "vae_name"): "framememory_tiny_wan21_vae.safetensors",
    ("FrameMemoryLoadEncoder", "encoder_name"): "framememory_tiny_wan21_encoder.safetensors",
}
VIDEO = "bikes.mp4"
RUN_TIMEOUT = 900  # seconds for one tiny storyboard on 2 CPU cores
pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 300)  # the run's own budget, plus the shared server's set-up


# ---- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(comfy_server):
    """The session's one server (tests/conftest.py ``comfy_server``: the tiny Wan 2.1 models, bikes.mp4)."""
    assert comfy_server.alive(), "the shared ComfyUI server died" + comfy_server.log_tail_text()
    comfy_server.wait_idle()  # nothing left running by an earlier test
    return comfy_server


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
