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
    """The Storyboard node executed in-process on a real clip (2 segments x 3 steps), its progress calls recorded:
    ``(node output, [(done, total), ...])``."""
    from framememory.nodes import storyboard_node
    from framememory.nodes.progress_ui import NodeDisplay

    calls = []

    class Recorder(NodeDisplay):
        def progress(self, done, total):
            calls.append((done, total))

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


def test_progress_covers_every_step_of_the_run(node_run):
    _, calls = node_run
    # 2 segments x 3 steps: announced at 0 before the first segment, then once after every sampling step
    assert calls == [(n, 6) for n in range(7)]


def test_progress_runs_over_both_experts_of_a_wan22_a14b_pair(tiny_wan, comfy, tmp_path_factory):
    import comfy.sd
    from framememory.demo.make_tiny_models import write_family
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.storyboard import SamplerSettings, history_from_frames, run_storyboard

    model, vae, encoder, clip, video = tiny_wan
    low = comfy.sd.load_diffusion_model(write_family(str(tmp_path_factory.mktemp("low")), seed=7, vae=False)["dit"])
    start, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H, model_low_noise=low)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    calls = []
    run_storyboard(model, vae, clip, encoder, neg, parse_storyboard("0.8 | a cyclist"),
                   SamplerSettings(3, 3.0, "euler", "simple", 1, switch_step=2), W, H, 16.0, 4, start,
                   model_low_noise=low, progress=lambda done, total: calls.append((done, total)))
    # high-noise expert steps 1-2, low-noise expert step 3: one run-wide count over the whole schedule
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]


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
    assert 8 <= len(lines) <= 9 and "{" not in summary and "<" not in summary  # text, not JSON or HTML
    assert max(len(line) for line in lines) <= 72, lines  # fits the Storyboard node's width
    assert lines[:2] == ["2 segments generated", "32 frames = 2.0 s at 16 fps, 256x128, wan21"]
    last = segs[-1]
    assert (f"Last segment: {last['memory_tokens']} tokens for {last['history_frames_covered'] / 16:.1f} s of "
            f"{last['history_frames_total'] / 16:.1f} s history") in summary
    assert f"final {report['final_memory_tokens']} tokens" in summary
    seconds = sum(s["seconds"] for s in segs)
    assert f"Time: {seconds:.1f} s, {seconds / 2:.1f} s per segment" in summary
    ratio = report["seams"]["per_boundary"][0]
    assert f"Seams: mean {ratio:.2f}x, worst {ratio:.2f}x" in summary
    drift = [s["colour_drift"] for s in segs]
    assert f"Colour drift: mean {sum(drift) / 2:.1f}, worst {max(drift):.1f} Delta E" in summary
    assert report["start_frames_dropped"] == 1  # 30 frames: 1 + 13 + 16
    assert lines[-1] == "Output: 61 frames (1 start frame dropped to fit whole segments)"


def test_colour_drift_is_the_lab_distance_of_the_mean_colours():
    import torch

    from framememory.models.colour_match import lab_stats
    from framememory.models.storyboard import colour_drift

    grey = torch.full((2, 4, 4, 3), 0.5)
    assert colour_drift(None, lab_stats(grey)) is None  # no history colour before the first segment
    before = lab_stats(grey)
    assert colour_drift(before, before + lab_stats(grey)) == 0.0
    red = grey.clone()
    red[..., 0] = 0.7
    import kornia.color
    lab = lambda x: kornia.color.rgb_to_lab(x[:1, :1, :1].permute(0, 3, 1, 2)).flatten()  # noqa: E731
    expected = float((lab(red) - lab(grey)).norm())
    assert colour_drift(before, before + lab_stats(red)) == pytest.approx(expected, abs=1e-3)


def test_report_summary_of_a_resumed_single_segment_run():
    from framememory.nodes.report_summary import report_summary

    report = {"fps": 24.0, "width": 832, "height": 480, "model_family": "hunyuan_video", "memory_mode": "off",
              "rate": "4x4x2", "total_frames": 29, "final_memory_tokens": 0, "peak_rss_mb": 2048.0,
              "seams": {"per_boundary": [], "mean": None},
              "segments": [{"index": 0, "replayed": True, "frames": 13, "start_frame": 0},
                           {"index": 1, "frames": 16, "memory_tokens": 0, "history_frames_covered": 0,
                            "history_frames_total": 13, "seconds": 3.0, "colour_drift": None}]}
    text = report_summary(report)
    assert text.splitlines()[:2] == ["1 segment generated (1 resumed from the memory file)",
                                     "29 frames = 1.2 s at 24 fps, 832x480, hunyuan_video"]
    assert "Seams: none (one segment)" in text and "Colour drift: not measured" in text
    assert "peak RAM 2.0 GiB" in text
    with pytest.raises(KeyError):
        report_summary({"fps": 16})


def test_progress_text():
    from framememory.nodes.progress_ui import progress_text

    assert progress_text(0, 20, 4) == "Segment 1/5, step 0/4 - 0 % of the run"
    assert progress_text(11, 20, 4) == "Segment 3/5, step 3/4 - 55 % of the run"
    assert progress_text(12, 20, 4) == "Segment 3/5 sampled, decoding and encoding it - 60 % of the run"
    assert progress_text(13, 20, 4) == "Segment 4/5, step 1/4 - 65 % of the run"
    assert progress_text(20, 20, 4) == "Segment 5/5 sampled, decoding and encoding it - 100 % of the run"
    for bad in ((21, 20, 4), (-1, 20, 4), (0, 18, 4), (0, 20, 0)):
        with pytest.raises(ValueError, match="progress needs"):
            progress_text(*bad)


def test_node_display_sends_nothing_outside_a_server():
    from framememory.nodes.progress_ui import NodeDisplay

    display = NodeDisplay(4)
    assert not display.live
    display.progress(1, 4)  # no server, no executing node: nothing to send, no error
    display.show("text")


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
