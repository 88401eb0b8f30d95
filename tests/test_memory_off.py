"""memory_mode "off": the Storyboard samples every segment without memory tokens (each segment sees only its prompt),
still keeping the history for the output and the decode stream: the baseline that measures what memory buys."""
from __future__ import annotations

import pytest
import torch

W, H = 128, 64  # small frames: the tiny VAE dominates the run time
SHOTS = "0.8 | a cyclist\n0.8 | a car"  # 2 segments of 16 frames after the history


def _run(tiny_wan, mode: str):
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, video = tiny_wan
    start, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H, mode=mode)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    frames, final, report = run_storyboard(model, vae, clip, encoder, neg, parse_storyboard(SHOTS),
                                           SamplerSettings(2, 3.0, "euler", "simple", 1), W, H, 16.0, 4, start,
                                           mode=mode)
    return start, frames, final, report


def test_memory_off_has_no_tokens_and_changes_the_video(tiny_wan):
    start_on, on, final_on, report_on = _run(tiny_wan, "frame_preservation")
    start_off, off, final_off, report_off = _run(tiny_wan, "off")
    assert report_on["memory_mode"] == "frame_preservation" and report_off["memory_mode"] == "off"
    assert all(s["memory_tokens"] > 0 for s in report_on["segments"])
    assert [s["memory_tokens"] for s in report_off["segments"]] == [0, 0]
    assert report_off["final_memory_tokens"] == 0
    # no encoding work: the history holds latents and frames, no memory tokens
    assert start_off.history.num_tokens == 0 and final_off.history.num_tokens == 0
    assert start_off.tokens(tiny_wan[0]) == (None, None) and start_off.conds(tiny_wan[0]).count == 0
    # the same history, geometry and continuous decode stream; only the memory differs
    assert on.shape == off.shape == (32, H, W, 3) and torch.isfinite(off).all()
    assert final_on.history.num_frames == final_off.history.num_frames == 13 + 32
    assert [s["start_frame"] for s in report_off["segments"]] == [13, 29] and report_off["decode"].startswith("exact")
    assert (on - off).abs().mean() > 1e-3, "memory on and off gave the same video with the same seed"


def test_off_history_can_be_encoded_later(tiny_wan):
    """A memory kept with mode "off" is unencoded, not lost: a storyboard with memory on encodes it then."""
    import dataclasses

    from framememory.models.history_writer import history_from_frames

    model, vae, encoder, _, video = tiny_wan
    kept, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H, mode="off")
    on = dataclasses.replace(kept, mode="frame_preservation").for_expert(model, 0, vae)
    encoded, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H)
    torch.testing.assert_close(on.tokens(model)[0], encoded.tokens(model)[0])


def test_node_input_and_bad_mode(tiny_wan):
    from framememory.models.history_writer import history_from_frames
    from framememory.nodes.storyboard_node import Storyboard

    inputs = {i.id: i for i in Storyboard.define_schema().inputs}
    mode = inputs["memory_mode"]
    names = list(inputs)
    later = names[names.index("memory_mode"):]  # widgets added since come after it: saved UI workflows keep their slots
    assert later[:1] == ["memory_mode"] and all(inputs[n].optional for n in later)
    assert later[1:] == ["save_path", "resume", "colour_correction", "colour_strength"]
    assert mode.options == ["frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off"]
    assert mode.default == "frame_preservation"
    model, vae, encoder, _, video = tiny_wan
    with pytest.raises(ValueError, match="memory_mode must be one of"):
        history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H, mode="packforcing")
