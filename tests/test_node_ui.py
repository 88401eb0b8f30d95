"""What the nodes show in the ComfyUI frontend, checked at the Python level: the Storyboard's report summary of a real
run, the run-wide progress a real storyboard emits, the progress line, and the input tooltips of every node.
(The browser side, web/framememory.js, is exercised by the headless browser test.)"""
from __future__ import annotations

import math
import re

import pytest

W, H = 256, 128


@pytest.fixture(scope="module")
def node_run(tiny_wan):
    """The Storyboard node executed in-process on a real clip (2 segments x 3 steps), its progress reports recorded:
    ``(node output, [RunProgress, ...])``."""
    from framememory.nodes import storyboard_node
    from framememory.nodes.progress_ui import NodeDisplay

    calls = []

    class Recorder(NodeDisplay):
        def progress(self, p):
            super().progress(p)
            calls.append(p)

    model, vae, encoder, clip, video = tiny_wan
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    mp = pytest.MonkeyPatch()
    mp.setattr(storyboard_node, "NodeDisplay", Recorder)
    try:
        out = storyboard_node.Storyboard.execute(
            model, vae, clip, encoder, neg, "0.8 | a cyclist\n0.8 | a car", W, H, 16.0, 4, 7, 3, 3.0, "euler",
            "simple", True, start_images=video[:30])
    finally:
        mp.undo()
    return out, calls


def test_progress_is_one_fraction_through_sampling_decode_and_encode(node_run):
    out, calls = node_run
    # 2 segments x 3 steps: each announced at step 0, then every step, the decode, the encode, the end
    per_segment = [("sample", 0)] + [("sample", n) for n in (1, 2, 3)] + [("decode", 3), ("encode", 3),
                                                                          ("segment done", 3)]
    assert [(p.phase, p.step) for p in calls] == per_segment * 2
    fractions = [p.fraction for p in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0, fractions
    done = [p for p in calls if p.phase == "segment done"]
    assert [p.fraction for p in done] == [0.5, 1.0] and all(p.segments == 2 for p in calls)
    # decode and encode move the run's fraction: the percentage does not stand still for most of a segment
    decode, encode = (next(p for p in calls[7:] if p.phase == phase) for phase in ("decode", "encode"))
    assert 0.5 < decode.fraction < encode.fraction < 1.0, (decode.fraction, encode.fraction)
    segs = __import__("json").loads(out.result[2])["segments"]
    for p, seg in zip(done, segs):  # each finished segment's decoded frames, for its preview on the node
        assert str(p.frames.dtype) == "torch.uint8" and tuple(p.frames.shape) == (seg["frames"], H, W, 3)
        assert p.memory_tokens == seg["memory_tokens"] > 0
        assert p.history_seconds == pytest.approx(seg["history_frames_covered"] / 16)


def test_progress_runs_over_both_experts_of_a_wan22_a14b_pair(tiny_wan, comfy, tmp_path_factory):
    import comfy.sd
    from framememory.demo.make_tiny_models import write_family
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, video = tiny_wan
    low = comfy.sd.load_diffusion_model(write_family(str(tmp_path_factory.mktemp("low")), seed=7, vae=False)["dit"])
    start, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H, model_low_noise=low)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    calls = []
    run_storyboard(model, vae, clip, encoder, neg, parse_storyboard("0.8 | a cyclist"),
                   SamplerSettings(3, 3.0, "euler", "simple", 1, switch_step=2), W, H, 16.0, 4, start,
                   model_low_noise=low, progress=calls.append)
    # high-noise expert steps 1-2, low-noise expert step 3: one run-wide count over the whole schedule
    assert [p.step for p in calls if p.phase == "sample"] == [0, 1, 2, 3]
    assert [p.phase for p in calls][-3:] == ["decode", "encode", "segment done"]


def test_run_clock_weights_phases_by_their_measured_time():
    from framememory.models.run_progress import FIRST_SEGMENT_WEIGHTS, RunClock

    clock = RunClock(segments=4, steps=10)
    assert clock.fraction(0, "decode", 0.0) == pytest.approx(FIRST_SEGMENT_WEIGHTS["sample"] / 4)
    clock.measured({"sample": 2.0, "decode": 6.0, "encode": 2.0})  # the lab model on CPU: decode dominates
    assert clock.fraction(1, "sample", 1.0) == pytest.approx((1 + 0.2) / 4)
    assert clock.fraction(1, "encode", 0.0) == pytest.approx((1 + 0.8) / 4)
    assert clock.fraction(1, "segment done", 1.0) == 0.5
    with pytest.raises(ValueError, match="unknown phase"):
        clock.fraction(0, "upload", 0.0)
    with pytest.raises(ValueError, match="at least one segment"):
        RunClock(0, 4)


def test_report_summary_is_shown_and_states_the_reports_figures(node_run):
    import json

    from framememory.nodes.report_summary import report_summary

    out, _ = node_run
    report = json.loads(out.result[2])
    assert out.ui["framememory_report"] == [report]  # the raw report stays for API users and tests
    summary = out.ui["text"][0]
    assert summary == report_summary(report)
    segs = report["segments"]
    assert len(segs) == 2 and all(isinstance(s["colour_drift"], float) and math.isfinite(s["colour_drift"])
                                  and s["colour_drift"] >= 0 for s in segs)
    lines = summary.splitlines()
    assert 6 <= len(lines) <= 7 and "{" not in summary and "<" not in summary  # text, not JSON or HTML
    assert max(len(line) for line in lines) <= 72, lines  # fits the Storyboard node's width
    assert lines[0] == "Made 2.0 s of video: 2 segments, 256x128, 16 fps"
    last = segs[-1]
    assert lines[1] == (f"Memory (Frame Preservation): {last['memory_tokens']} tokens held the last "
                        f"{last['history_frames_covered'] / 16:.1f} s of video")
    seconds = sum(s["seconds"] for s in segs)
    assert lines[2].startswith(f"Took {seconds:.1f} s ({seconds / 2:.1f} s per segment), peak RAM ")
    assert "rate" not in summary and "Delta E" not in summary or "colour_correction" in summary
    assert report["start_frames_dropped"] == 1  # 30 frames: 1 + 13 + 16
    assert lines[-1] == "Output: 61 frames (1 start frame dropped to fit whole segments)"


def test_report_summary_points_to_the_setting_that_helps():
    from framememory.nodes.report_summary import report_summary

    def summary(drift, seams, colour_correction=0.0):
        return report_summary({
            "fps": 16.0, "width": 832, "height": 480, "memory_mode": "frame_preservation", "total_frames": 45,
            "colour_correction": colour_correction, "seams": {"per_boundary": seams},
            "segments": [{"index": k, "frames": 16, "memory_tokens": 182, "history_frames_covered": 13 + 16 * k,
                          "seconds": 1.0, "colour_drift": d} for k, d in enumerate(drift)]})

    assert "Colour: steady" in summary([1.0, 2.0], [1.1])
    assert "Joins between segments: smooth" in summary([1.0, 2.0], [1.1])
    drifting = summary([3.0, 11.4], [2.6])
    assert "Colour: drifts (worst 11.4 Delta E): set colour_correction to on" in drifting
    assert "Joins between segments: a visible jump (worst 2.6x the motion inside a segment)" in drifting
    assert "even with colour_correction on" in summary([3.0, 11.4], [1.0], colour_correction=1.0)
    assert "drifts a little (worst 4.0" in summary([4.0], [1.0])


def test_report_summary_of_a_resumed_single_segment_run():
    from framememory.nodes.report_summary import report_summary

    report = {"fps": 24.0, "width": 832, "height": 480, "model_family": "hunyuan_video", "memory_mode": "off",
              "rate": "4x4x2", "total_frames": 29, "final_memory_tokens": 0, "peak_rss_mb": 2048.0,
              "seams": {"per_boundary": [], "mean": None},
              "segments": [{"index": 0, "replayed": True, "frames": 13, "start_frame": 0},
                           {"index": 1, "frames": 16, "memory_tokens": 0, "history_frames_covered": 0,
                            "history_frames_total": 13, "seconds": 3.0, "colour_drift": None}]}
    text = report_summary(report)
    assert text.splitlines()[:2] == ["Made 1.2 s of video: 1 segment (+1 resumed), 832x480, 24 fps",
                                     "Memory: off (each segment saw only its prompt and the frames before it)"]
    assert "Joins: none (one segment)" in text and "Colour: not measured" in text
    assert "peak RAM 2.0 GiB" in text
    with pytest.raises(KeyError):
        report_summary({"fps": 16})


def test_progress_text():
    from framememory.models.run_progress import RunProgress
    from framememory.nodes.progress_ui import progress_text

    assert progress_text(RunProgress(0, 5, "sample", 0, 4, 0.0)) == "Segment 1/5: sampling, step 0/4 - 0 %"
    assert progress_text(RunProgress(2, 5, "sample", 3, 4, 0.55)) == "Segment 3/5: sampling, step 3/4 - 55 %"
    assert progress_text(RunProgress(2, 5, "decode", 4, 4, 0.58, 182, 2.8)) == (
        "Segment 3/5: decoding its frames - 57 %\nMemory: 182 tokens for the last 2.8 s of video")
    assert progress_text(RunProgress(4, 5, "segment done", 4, 4, 1.0, 0, 0.0)).startswith(
        "Segment 5/5: done - 100 %\nMemory: none")


def test_node_display_sends_nothing_outside_a_server():
    from framememory.models.run_progress import RunProgress
    from framememory.nodes.progress_ui import NodeDisplay

    display = NodeDisplay()
    assert not display.live
    display.progress(RunProgress(1, 4, "segment done", 4, 4, 0.5))  # no server, no executing node: no error
    assert (display.finished, display.segments) == (2, 4)
    display.show("text")


def test_frames_preview_is_a_grid_of_real_frames():
    import torch

    from framememory.nodes.progress_ui import frames_preview

    frames = torch.zeros(16, 128, 256, 3, dtype=torch.uint8)
    frames[-1] = 255  # the last frame white: it is the grid's bottom-right cell
    kind, image, max_px = frames_preview(frames)
    assert (kind, image.size, max_px) == ("JPEG", (2 * 256 + 6, 2 * 128 + 6), 512)
    assert image.getpixel((256 + 4 + 128, 128 + 4 + 64)) == (255, 255, 255)
    assert image.getpixel((2 + 128, 2 + 64)) == (0, 0, 0)


def test_cancel_text_and_the_interrupted_cap(comfy, tmp_path, monkeypatch):
    import os
    import time

    import folder_paths

    from framememory.nodes import storyboard_node as sb

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    folder = tmp_path / "framememory" / "interrupted"
    for k in range(7):  # seven earlier cancelled runs and a file of the user's
        run = folder / f"storyboard_2026120{k}-000000.fmem"
        run.mkdir(parents=True)
        os.utime(run, (time.time() - 100 + k, time.time() - 100 + k))
    (folder / "notes.txt").write_text("mine")
    path = sb.interrupted_path()
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["notes.txt"] + [f"storyboard_2026120{k}-000000.fmem" for k in (3, 4, 5, 6)], left
    assert path.startswith(str(folder)) and path.endswith(".fmem")  # the new run makes INTERRUPTED_KEEP = 5
    os.makedirs(path)
    text = sb.cancel_text(2, 3, path, with_save_path=False)
    name = os.path.relpath(path, tmp_path)
    assert text.splitlines()[:2] == ["Cancelled after segment 2 of 3.", f"The finished segments are saved in output/{name}."]
    assert f"Load Memory with path {name[:-5]}" in text and "newest 5" in text
    assert sb.cancel_text(1, 3, str(tmp_path / "story.fmem"), with_save_path=True).endswith(
        "To continue: switch resume on and Run again.")
    assert sb.cancel_text(0, 3, None, False) == "Cancelled during segment 1 of 3: nothing was finished or saved"


# ---- tooltips -------------------------------------------------------------------------------------------------------
FAMILY_NAMES = ("Wan 2.1", "Wan 2.2", "HunyuanVideo")
# inputs whose facts differ per family: their tooltip names every family
PER_FAMILY = {"model", "vae", "clip", "fps", "width", "height", "segment_latent_frames"}


@pytest.fixture(scope="module")
def schemas(comfy, tmp_path_factory):
    import folder_paths

    from framememory.nodes import NODES

    folder = str(tmp_path_factory.mktemp("memory_encoders"))
    mp = pytest.MonkeyPatch()
    mp.setitem(folder_paths.folder_names_and_paths, "memory_encoders", ([folder], {".safetensors"}))
    try:
        yield {n.__name__: n.define_schema() for n in NODES}
    finally:
        mp.undo()


def test_every_input_has_a_tooltip(schemas):
    missing = [f"{name}.{i.id}" for name, s in schemas.items() for i in s.inputs if not (i.tooltip or "").strip()]
    assert not missing, f"inputs without a tooltip: {missing}"


def test_tooltips_name_the_families_a_node_serves(schemas):
    checked = 0
    for name, schema in schemas.items():
        for i in schema.inputs:
            tip = i.tooltip or ""
            if i.id in PER_FAMILY:
                missing = [f for f in FAMILY_NAMES if f not in tip]
                assert not missing, f"{name}.{i.id} does not name {missing}: {tip!r}"
                checked += 1
            elif "Wan 2.1" in tip:  # a Wan-only statement must say so
                assert "HunyuanVideo" in tip or "only" in tip, f"{name}.{i.id} names only Wan 2.1: {tip!r}"
    assert checked >= 15
    fps = {name: next(i.tooltip for i in s.inputs if i.id == "fps") for name, s in schemas.items()
           if any(i.id == "fps" for i in s.inputs)}
    assert set(fps) == {"EncodeHistory", "Storyboard", "LoadVideoAsHistory"}
    for tip in fps.values():
        assert re.search(r"16 for Wan 2\.1 and Wan 2\.2 A14B, 24 for Wan 2\.2 TI2V 5B and HunyuanVideo", tip), tip


def test_storyboard_tooltip_explains_the_format_with_an_example_that_parses(schemas):
    from framememory.memory.storyboard import parse_storyboard

    tip = next(i.tooltip for i in schemas["Storyboard"].inputs if i.id == "storyboard")
    assert "'seconds | prompt'" in tip and "Example:" in tip
    example = tip.split("Example:\n", 1)[1]
    shots = parse_storyboard(example)
    assert [(s.duration_s, s.start_s) for s in shots] == [(2.0, 0.0), (1.5, 2.0), (3.0, 3.5)]


def test_the_lab_templates_load_without_the_demo_switch(comfy, monkeypatch, tmp_path, repo_root):
    """A user's ComfyUI (no FRAMEMEMORY_DEMO) registers every node type the lab templates use: the lab model's
    stand-in text encoder is part of the pack; only the HunyuanVideo test stand-in stays behind the switch."""
    import asyncio
    import json

    import folder_paths

    import framememory

    monkeypatch.delenv("FRAMEMEMORY_DEMO", raising=False)
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "memory_encoders", ([], set()))
    extension = asyncio.run(framememory.comfy_entrypoint())
    ours = {n.define_schema().node_id for n in asyncio.run(extension.get_node_list())}
    assert "FrameMemoryDemoTextEncoder" in ours and "FrameMemoryDemoTextEncoderHunyuanVideo" not in ours
    for path in sorted((repo_root / "workflows").glob("storyboard_wan21_lab*.json")):
        used = {n["type"] for n in json.loads(path.read_text())["nodes"]}
        pack_types = {t for t in used if t.startswith("FrameMemory")}
        assert pack_types <= ours, (path.name, pack_types - ours)


def test_reading_text():
    from framememory.nodes.progress_ui import reading_text

    assert reading_text(3, 7, 1.0) == "Reading the video into memory: segment 3 of 7 (3.0 s of 7.0 s) - 42 %"
    assert reading_text(7, 7, 1.0).endswith("- 100 %")
