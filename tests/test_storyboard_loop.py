"""The storyboard loop in-process with tiny models of the real classes, starting from a real clip."""
from __future__ import annotations

import numpy as np
import pytest
import torch


def test_storyboard_from_real_clip(tiny_wan):
    from framememory.memory.grid import memory_grid
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.storyboard import SamplerSettings, history_from_frames, run_storyboard

    model, vae, encoder, clip, video = tiny_wan
    start, dropped = history_from_frames(model, vae, encoder, video, 4, 16.0, 256, 128)
    assert dropped == 4 and start.history.num_frames == 26 and len(start.history.segments) == 2
    per_segment = int(np.prod(memory_grid((4, 16, 32), encoder.cfg)))  # 2 x 2 x 4 = 16 at 4x4x2
    assert start.history.num_tokens == 2 * per_segment
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    shots = parse_storyboard("0.8 | a cyclist\n0.8 | a car")
    frames, final, report = run_storyboard(model, vae, clip, encoder, neg, shots, SamplerSettings(2, 3.0, "euler", "simple", 1),
                                           256, 128, 16.0, 4, start)
    assert frames.shape == (26, 128, 256, 3) and torch.isfinite(frames).all()
    assert 0 <= frames.min() and frames.max() <= 1
    segs = report["segments"]
    assert [s["shot"] for s in segs] == [0, 1]
    for k, s in enumerate(segs):
        assert s["start_frame"] == 26 + 13 * k == s["history_frames_total"] == s["history_frames_covered"]
        assert s["memory_tokens"] == (2 + k) * per_segment
    assert final.history.num_tokens == 4 * per_segment and final.history.num_frames == 52
    assert start.history.num_frames == 26  # the input memory is not mutated


def test_encoder_width_mismatch_is_a_clear_error(tiny_wan):
    from framememory.memory.config import EncoderConfig
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.storyboard import history_from_frames

    model, vae, _, _, video = tiny_wan
    wrong = MemoryEncoder(EncoderConfig(dim=1536), None, "wan14b.safetensors")
    with pytest.raises(ValueError, match="dim 1536 \\(model: 128\\)"):
        history_from_frames(model, vae, wrong, video, 4, 16.0, 256, 128)
    with pytest.raises(ValueError, match="multiples of 16x16 for wan21"):
        history_from_frames(model, vae, MemoryEncoder.untrained(), video, 4, 16.0, 250, 128)
    with pytest.raises(ValueError, match="needs 13"):
        history_from_frames(model, vae, MemoryEncoder.untrained(), video[:10], 4, 16.0, 256, 128)


def test_untrained_encoder_takes_the_model_width(tiny_wan):
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.storyboard import history_from_frames

    model, vae, _, _, video = tiny_wan
    mem, _ = history_from_frames(model, vae, MemoryEncoder.untrained(), video[:13], 4, 16.0, 256, 128)
    tokens, positions = mem.tokens(model)
    assert tokens.shape == (16, 128) and tokens.abs().max() > 0  # LR branch: VAE + the DiT's patch embedding
    assert positions[:, 0].max() < 0


def test_overlap_window_add_on(tiny_wan):
    """With overlap_latent_frames=3 the memory also holds the last 3 latent frames uncompressed (the DiT's own patch
    embedding at rate 1x1x1) at times -3..-1; the report's token counts include them."""
    import dataclasses

    from framememory.models.encoding import MemoryEncoder
    from framememory.models.families import patch_embed
    from framememory.models.storyboard import history_from_frames

    model, vae, encoder, _, video = tiny_wan
    overlap = MemoryEncoder(dataclasses.replace(encoder.cfg, overlap_latent_frames=3), encoder.state_dict, "overlap")
    mem, _ = history_from_frames(model, vae, overlap, video, 4, 16.0, 256, 128)
    plain_tokens, _ = mem.history.memory()
    tokens, positions = mem.tokens(model)
    window = 3 * 8 * 16  # 3 latent frames x DiT grid 8 x 16 at 256x128
    assert tokens.shape[0] == plain_tokens.shape[0] + window
    assert sorted(positions[-window:, 0].unique().tolist()) == [-3.0, -2.0, -1.0]
    last = mem.history.segments[-1].latent[:, -3:]
    expected = patch_embed(model, model.model.process_latent_in(last[None]))[0].flatten(1).T
    torch.testing.assert_close(tokens[-window:], expected)
