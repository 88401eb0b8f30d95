"""End to end in a real headless ComfyUI server for the other model families: the HunyuanVideo and Wan 2.2 TI2V 5B
storyboard workflows with tiny DiTs. Their VAEs cannot be tiny (ComfyUI builds HunyuanVideo's and Wan 2.2's VAE at
fixed widths), so each uses its real-size VAE with random weights; the Wan 2.2 one is marked slow: its VAE runs the
continuous stream in context mode (each segment decoded after 4 latent frames of context, each LR span encoded
after 13 frames of context): ~10 min for the workflow on 2 idle CPU cores, over 25 min when they are shared."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from framememory.headless.comfy_server import add_demo_inputs, substitute_inputs

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "hunyuan_video": ("storyboard_hunyuan_tiny_api.json", "framememory_tiny_hunyuan"),
    "wan22": ("storyboard_wan22_tiny_api.json", "framememory_tiny_wan22"),
}
RUN_TIMEOUT = {"hunyuan_video": 1500, "wan22": 3600}  # seconds for the whole workflow on 2 (shared) CPU cores


@pytest.fixture(scope="module", params=[
    pytest.param("hunyuan_video", marks=pytest.mark.timeout(RUN_TIMEOUT["hunyuan_video"] + 300)),
    pytest.param("wan22", marks=[pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT["wan22"] + 300)])])
def family_run(request, comfy_server, media_dir):
    """The family's tiny storyboard run once on the session's one server (tests/conftest.py ``comfy_server``), its
    tiny models written into the running server's model folders first (over the placeholders listed for the browser
    tests): (family, events, report or None, SaveVideo mp4 paths)."""
    family = request.param
    workflow, stem = CASES[family]
    srv = comfy_server
    srv.wait_idle()  # nothing left running by an earlier test
    add_demo_inputs(srv, media_dir, "bikes.mp4", families=family)
    api = substitute_inputs(json.loads((REPO_ROOT / "demo" / "workflows" / "api" / workflow).read_text()), {
        ("UNETLoader", "unet_name"): f"{stem}.safetensors", ("VAELoader", "vae_name"): f"{stem}_vae.safetensors",
        ("FrameMemoryLoadEncoder", "encoder_name"): f"{stem}_encoder.safetensors", ("LoadVideo", "file"): "bikes.mp4"})
    prompt_id = srv.post_prompt(api)
    events = srv.follow(prompt_id, timeout=RUN_TIMEOUT[family])
    history = srv.history(prompt_id)
    save = next(nid for nid, n in api.items() if n["class_type"] == "SaveVideo")
    videos = srv.output_files(history, save, (".mp4",))
    reports = [ui["framememory_report"][0] for ui in (history.get("outputs") or {}).values() if ui.get("framememory_report")]
    return family, events, reports[0] if reports else None, videos


def test_family_storyboard_end_to_end(family_run):
    import av

    family, events, report, videos = family_run
    types = [e.get("type") for e in events]
    assert "execution_success" in types, [e for e in events if e.get("type") == "execution_error"]
    assert "progress" in types
    assert report is not None and report["model_family"] == family
    assert videos, "SaveVideo wrote no mp4"
    with av.open(str(videos[0])) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert frames.shape[0] == report["output_frames"] and frames.shape[1:3] == (report["height"], report["width"])
    segs = report["segments"]
    assert len(segs) >= 2
    for seg in segs:  # every segment was sampled with memory of everything before it
        assert seg["history_frames_covered"] == seg["history_frames_total"] == seg["start_frame"] > 0
        assert seg["memory_tokens"] > 0
    assert all(b["memory_tokens"] > a["memory_tokens"] for a, b in zip(segs, segs[1:]))
    # one continuous video (4 frames per latent frame once the stream started), decoded in context mode (these VAEs
    # are not ComfyUI's WanVAE); one seam ratio per segment boundary
    for k, seg in enumerate(segs):
        starts_stream = k == 0 and report["start_frames"] == 0
        assert seg["frames"] == 4 * seg["latent_frames"] - (3 if starts_stream else 0), seg
    assert report["decode"].startswith("context"), report["decode"]
    assert len(report["seams"]["per_boundary"]) == len(segs) - 1
