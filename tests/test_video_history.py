"""Load Video as History (models/video_history.py, nodes/video_history_node.py): a real clip streamed into memory.

* the streaming reader gives the training reader's pixels (training/data.py: resample by nearest time, the nodes'
  fit_frames), also when it seeks (skip_first_seconds) and selects every n-th frame; its packet-count plan equals the
  frames it decodes;
* the streamed history equals Encode History's path (history_from_frames) on the same frames: latents, memory tokens;
* clear errors before model work; the interrupt stops it; the modes that encode nothing keep no pixels;
* through a real server (tiny Wan demo models): the node reads bikes.mp4 and a Storyboard continues that memory.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from framememory.models.video_history import history_from_video
from framememory.models.video_reader import FrameSelection, iter_frames, plan_video

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_API = REPO_ROOT / "demo" / "workflows" / "api" / "storyboard_wan21_tiny_api.json"  # test-only, not a template
W, H, FPS = 128, 64, 16.0  # small: the tiny VAE's convolutions are most of these tests' time


def training_frames(path: Path, count: int) -> np.ndarray:
    """The first ``count`` frames of ``path`` at W x H x FPS as the training reader gives them."""
    from framememory.training.data import decode_frames, resample

    return np.stack(list(itertools.islice(resample(decode_frames(path, W, H), FPS), count)))


def streamed(path: Path, sel: FrameSelection) -> np.ndarray:
    return torch.stack(list(iter_frames(plan_video(path, sel), sel, W, H))).numpy()


@pytest.mark.parametrize("skip_s, nth, cap", [(0.0, 1, 40), (2.5, 2, 30)])
def test_reader_gives_the_training_readers_pixels(media_dir, skip_s, nth, cap):
    sel = FrameSelection(FPS, skip_first_seconds=skip_s, select_every_nth=nth, frame_load_cap=cap)
    k0 = sel.first_index
    assert k0 == round(skip_s * FPS)
    want = training_frames(media_dir / "bikes.mp4", k0 + nth * cap)[k0::nth][:cap]  # bikes.mp4: 25 fps, 10 s
    got = streamed(media_dir / "bikes.mp4", sel)
    assert got.dtype == np.uint8 and got.shape == (cap, H, W, 3)
    assert np.array_equal(got, want), f"max diff {np.abs(got.astype(int) - want).max()}"


@pytest.mark.parametrize("name, skip_s", [("carphone_pristine.mp4", 0.0), ("bikes.mp4", 8.0)])
def test_plan_counts_the_frames_decoded(media_dir, name, skip_s):
    sel = FrameSelection(FPS, skip_first_seconds=skip_s)
    plan = plan_video(media_dir / name, sel)
    got = list(iter_frames(plan, sel, W, H))
    assert plan.selected == len(got) > 0
    duration = plan.source_frames / plan.source_fps  # bikes 10 s, carphone ~4 s: the tail after the skip at 16 fps
    assert abs(plan.selected - (duration - skip_s) * FPS) <= 2, (plan, len(got))


def test_reader_errors_name_the_input(tmp_path, media_dir):
    with pytest.raises(ValueError, match="no such file.*upload"):
        plan_video(tmp_path / "missing.mp4", FrameSelection(FPS))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(ValueError, match="PyAV cannot open junk.mp4"):
        plan_video(junk, FrameSelection(FPS))
    with pytest.raises(ValueError, match="skip_first_seconds 60 is past the end"):
        plan_video(media_dir / "bikes.mp4", FrameSelection(FPS, skip_first_seconds=60))
    with pytest.raises(ValueError, match="select_every_nth"):
        plan_video(media_dir / "bikes.mp4", FrameSelection(FPS, select_every_nth=0))


def test_streamed_history_equals_history_from_frames(tiny_wan, media_dir):
    from framememory.models.history_writer import history_from_frames

    model, vae, encoder, _, _ = tiny_wan
    sel = FrameSelection(FPS, frame_load_cap=50)  # 50 frames: 5 oldest dropped, 13 + 16 + 16 kept
    frames = streamed(media_dir / "bikes.mp4", sel)
    ref, dropped = history_from_frames(model, vae, encoder, torch.from_numpy(frames).float() / 255.0, 4, FPS, W, H)
    mem, report = history_from_video(model, vae, encoder, media_dir / "bikes.mp4", sel, W, H, 4)
    assert dropped == report["frames_dropped_oldest"] == 5 and report["segments"] == 3
    assert [s.num_frames for s in mem.history.segments] == [13, 16, 16]
    for a, b in zip(mem.history.segments, ref.history.segments, strict=True):
        assert torch.equal(a.latent, b.latent)
        assert a.stream_start == b.stream_start and a.frames is None  # pixels dropped once encoded
    tokens, positions = mem.tokens(model)
    ref_tokens, ref_positions = ref.tokens(model)
    assert tokens.shape[0] > 0 and torch.equal(tokens, ref_tokens) and torch.equal(positions, ref_positions)
    assert report["memory_tokens"] == mem.history.num_tokens and report["history_frames"] == 45


def test_modes_without_tokens_keep_no_pixels(tiny_wan, media_dir):
    model, vae, encoder, _, _ = tiny_wan
    mem, report = history_from_video(model, vae, encoder, media_dir / "bikes.mp4",
                                     FrameSelection(FPS, frame_load_cap=29), W, H, 4, mode="off")
    assert report["segments"] == 2 and mem.history.num_tokens == 0
    assert all(s.frames is None for s in mem.history.segments)


def test_short_selection_and_interrupt(tiny_wan, media_dir):
    import comfy.model_management

    model, vae, encoder, _, _ = tiny_wan
    with pytest.raises(ValueError, match="gives 10 frames.*needs 13.*frame_load_cap"):
        history_from_video(model, vae, encoder, media_dir / "bikes.mp4", FrameSelection(FPS, frame_load_cap=10),
                           W, H, 4)
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            history_from_video(model, vae, encoder, media_dir / "bikes.mp4", FrameSelection(FPS, frame_load_cap=29),
                               W, H, 4)
    finally:
        comfy.model_management.interrupt_current_processing(False)


def test_example_puts_the_node_in_place_of_a_load_video_chain(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_eval", repo_root / "scripts" / "example_eval.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    tiny = json.loads(TINY_API.read_text())  # LoadVideo chain
    lab = json.loads((repo_root / "workflows" / "api" / "storyboard_wan21_lab_api.json").read_text())  # the node already
    for api in (tiny, lab):
        sb_id, sb = ev.storyboard_node(api)
        out = ev.with_video_history(api, sb_id, "clip.mkv", 45)
        kinds = [n["class_type"] for n in out.values()]
        assert not set(ev.START_CHAIN) & set(kinds) and kinds.count(ev.VIDEO_HISTORY) == 1, kinds
        node_id, node = next((k, n["inputs"]) for k, n in out.items() if n["class_type"] == ev.VIDEO_HISTORY)
        assert out[sb_id]["inputs"]["memory"] == [node_id, 0] and "start_images" not in out[sb_id]["inputs"]
        assert node["video"] == "clip.mkv" and node["frame_load_cap"] == 45 and node["skip_first_seconds"] == 0
        assert all(node[k] == sb[k] for k in ("model", "vae", "memory_encoder", "width", "height", "fps",
                                              "segment_latent_frames", "memory_mode"))
        assert ev.history_input(out) is None


# ---- through a real server ----------------------------------------------------------------------
TINY_NAMES = {
    ("UNETLoader", "unet_name"): "framememory_tiny_wan21.safetensors",
    ("VAELoader", "vae_name"): "framememory_tiny_wan21_vae.safetensors",
    ("FrameMemoryLoadEncoder", "encoder_name"): "framememory_tiny_wan21_encoder.safetensors",
}


def video_history_prompt(video: str, cap: int) -> dict:
    """The tiny storyboard workflow with its LoadVideo / GetVideoComponents / ImageFromBatch replaced by Load Video as
    History feeding the Storyboard's memory input (a 1 s storyboard)."""
    from framememory.headless.comfy_server import substitute_inputs

    api = substitute_inputs(json.loads(TINY_API.read_text()), TINY_NAMES)
    for node in ("1", "2", "3"):
        assert api.pop(node)["class_type"] in ("LoadVideo", "GetVideoComponents", "ImageFromBatch")
    sb = api["9"]["inputs"]
    del sb["start_images"]
    sb.update(memory=["20", 0], storyboard="1.0 | a cyclist rides down a sunny city street", width=W, height=H)
    api["20"] = {"class_type": "FrameMemoryLoadVideoHistory", "inputs": {
        "video": video, "model": sb["model"], "vae": sb["vae"], "memory_encoder": sb["memory_encoder"],
        "width": sb["width"], "height": sb["height"], "fps": sb["fps"],
        "segment_latent_frames": sb["segment_latent_frames"], "frame_load_cap": cap, "skip_first_seconds": 1.0,
        "select_every_nth": 1, "memory_mode": sb["memory_mode"]}}
    return api


def test_server_storyboard_continues_a_video_read_as_history(comfy_server):
    """On the session's one server (tests/conftest.py ``comfy_server``: the tiny models, bikes.mp4 in its input folder)."""
    from framememory.headless.comfy_server import PromptError

    srv = comfy_server
    srv.wait_idle()
    spec = srv.object_info("FrameMemoryLoadVideoHistory")["FrameMemoryLoadVideoHistory"]["input"]["required"]
    options = spec["video"][0] if isinstance(spec["video"][0], list) else spec["video"][1]["options"]
    assert "bikes.mp4" in options and spec["video"][1].get("video_upload") is True, spec["video"]
    with pytest.raises(PromptError, match="no file 'nope.mp4'"):
        srv.post_prompt(video_history_prompt("nope.mp4", 31))
    prompt_id, events = srv.run(video_history_prompt("bikes.mp4", 31), timeout=900)  # 31: 2 oldest dropped
    history = srv.history(prompt_id)
    assert history["status"]["status_str"] == "success", history["status"]
    report = next(ui["framememory_report"][0] for ui in history["outputs"].values() if ui.get("framememory_report"))
    assert report["start_frames"] == 29, report  # the memory's history: 13 + 16 frames of bikes.mp4 from 1 s on
    first = report["segments"][0]
    assert first["start_frame"] == 29 and first["history_frames_covered"] == 29 and first["memory_tokens"] > 0, first
    assert any(e["type"] == "progress" and e["data"].get("node") == "20" for e in events), "no progress from the node"
