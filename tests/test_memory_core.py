"""Unit tests of the pure-torch core (memory/): encoder shapes and token counts, zero-init, incremental
encoding, RoPE positions, safetensors round trip, storyboard and history arithmetic."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from framememory.memory.config import EncoderConfig, parse_rate
from framememory.memory.encoder import HistoryEncoder, combine_branches, lr_frames
from framememory.memory.grid import memory_grid, memory_positions, token_grid, tokens_per_second
from framememory.memory.history import HistoryBuffer
from framememory.memory.io import load_encoder_file, save_encoder
from framememory.memory.storyboard import parse_storyboard, plan_segments, segment_frames, split_clip

SMALL = dict(dim=32, hr_channels=(8, 16, 16, 32), attn_heads=4)


def _randomise_proj(enc: HistoryEncoder, seed: int = 0) -> HistoryEncoder:
    with torch.no_grad():
        enc.hr.proj.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return enc


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x2", "2x2x4", "2x2x1", "1x1x1", "4x4x1"])
@pytest.mark.parametrize("latent_shape", [(4, 16, 32), (8, 24, 40), (5, 17, 33)])
def test_encoder_shapes_and_token_counts(rate, latent_shape):
    cfg = EncoderConfig(rate=rate, **SMALL)
    enc = HistoryEncoder(cfg)
    rh, rw, rt = parse_rate(rate)
    t, h, w = latent_shape
    expected = (t // rt, (h // 2) // rh, (w // 2) // rw)  # floored: DiT patchify 1x2x2, then the rate
    if min(expected) < 1:
        with pytest.raises(ValueError, match="smaller than one memory token"):
            enc(torch.randn(1, 16, *latent_shape))
        return
    y = enc(torch.randn(2, 16, *latent_shape))
    assert tuple(y.shape) == (2, 32, *expected)
    assert memory_grid(latent_shape, cfg) == expected
    tokens = combine_branches(y, None)
    assert tokens.shape == (2, expected[0] * expected[1] * expected[2], 32)


def test_tokens_per_second_480p_wan21():
    # 832x480, 16 fps: latent 60x104 per 4 frames, DiT grid 30x52 = 1560 tokens per latent frame
    rates = {"1x1x1": 6240, "2x2x1": 1560, "2x2x2": 780, "2x2x4": 390, "4x4x2": 182}
    for rate, tps in rates.items():
        assert tokens_per_second(EncoderConfig(rate=rate), 480, 832, 16) == tps, rate
    # 20 s at 4x4x2: 40 memory time steps x 7x13 tokens (30//4, 52//4 floored) = 3640 <= 3900 (unfloored)
    assert tokens_per_second(EncoderConfig(), 480, 832, 16) * 20 == 3640
    assert memory_grid((80, 60, 104), EncoderConfig()) == (40, 7, 13)


def test_untrained_hr_branch_is_zero_and_only_lr_passes_through():
    enc = HistoryEncoder(EncoderConfig(**SMALL))
    assert enc(torch.randn(1, 16, 4, 16, 32)).abs().max() == 0
    lr = torch.randn(1, 32, 2, 2, 4)
    tokens = combine_branches(enc(torch.randn(1, 16, 4, 16, 32)), lr)
    torch.testing.assert_close(tokens, lr.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x4", "2x2x1"])
def test_incremental_equals_whole(rate):
    cfg = EncoderConfig(rate=rate, **SMALL)
    enc = _randomise_proj(HistoryEncoder(cfg))
    torch.manual_seed(0)
    latent = torch.randn(1, 16, 12, 16, 32)  # three segments of 4 latent frames
    whole = combine_branches(enc(latent), None)
    parts = torch.cat([combine_branches(enc(latent[:, :, i:i + 4]), None) for i in (0, 4, 8)], dim=1)
    assert whole.abs().max() > 0
    assert (whole - parts).abs().max().item() <= 1e-4


def test_memory_positions_are_means_of_covered_positions():
    cfg = EncoderConfig(rate="4x4x2", **SMALL)
    t, ht, wt = 6, 8, 12  # DiT token grid of a segment
    full = torch.stack(torch.meshgrid(torch.arange(t) - 10.0, torch.arange(ht) * 1.0, torch.arange(wt) * 1.0,
                                      indexing="ij"), dim=0)  # [3, T, Ht, Wt]
    pooled = F.avg_pool3d(full[None], kernel_size=(2, 4, 4))[0]  # [3, T/2, Ht/4, Wt/4]
    pos = memory_positions((3, 2, 3), cfg, t_start=-10.0)
    torch.testing.assert_close(pos, pooled.flatten(1).T)
    assert pos[:, 0].max() < 0  # all in the past


def test_safetensors_round_trip_with_config(tmp_path):
    cfg = EncoderConfig(family="wan21", dim=32, rate="2x2x2", hr_channels=(8, 16, 16, 32), attn_heads=4)
    enc = _randomise_proj(HistoryEncoder(cfg))
    path = tmp_path / "enc.safetensors"
    save_encoder(str(path), enc.state_dict(), cfg)
    sd, cfg2 = load_encoder_file(str(path))
    assert cfg2 == cfg and cfg2.rate == (2, 2, 2)
    enc2 = HistoryEncoder(cfg2)
    enc2.load_state_dict(sd)
    x = torch.randn(1, 16, 4, 16, 16)
    torch.testing.assert_close(enc(x), enc2(x))
    assert [p.name for p in tmp_path.iterdir()] == ["enc.safetensors"]  # no temp files left


def test_load_rejects_foreign_and_broken_files(tmp_path):
    foreign = tmp_path / "lora.safetensors"
    save_file({"a": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="framememory_config"):
        load_encoder_file(str(foreign))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_encoder_file(str(broken))
    with pytest.raises(FileNotFoundError):
        load_encoder_file(str(tmp_path / "missing.safetensors"))
    newer = tmp_path / "newer.safetensors"
    meta = json.loads(EncoderConfig().to_json()) | {"future_field": 1}
    save_file({"a": torch.zeros(2)}, str(newer), metadata={"framememory_config": json.dumps(meta)})
    with pytest.raises(ValueError, match="future_field"):
        load_encoder_file(str(newer))


def test_config_validation():
    with pytest.raises(ValueError, match="HxWxT"):
        parse_rate("4x4")
    with pytest.raises(ValueError, match="family"):
        EncoderConfig(family="sd15")
    with pytest.raises(ValueError, match="use_hr / use_lr"):
        EncoderConfig(use_hr=False, use_lr=False)
    with pytest.raises(ValueError, match="attn_layout"):
        EncoderConfig(attn_layout="global")
    with pytest.raises(ValueError, match="with_dim"):
        HistoryEncoder(EncoderConfig(dim=0))


def test_lr_frames_lands_on_the_memory_grid():
    cfg = EncoderConfig(rate="4x4x2", **SMALL)
    frames = torch.rand(13, 128, 256, 3)
    lr = lr_frames(frames, 4, cfg)
    # T=4 -> 2 memory steps -> causal VAE needs 4*(2-1)+1 = 5 frames; 256x128 -> grid 4x2 -> 4*2*8 x 2*2*8 px
    assert lr.shape == (5, 32, 64, 3)
    assert torch.equal(lr[0], F.interpolate(frames[:1].movedim(-1, 1), size=(32, 64), mode="area").movedim(1, -1)[0])
    assert lr_frames(frames, 2, cfg).shape == (1, 32, 64, 3)  # one memory step: the middle frame


def test_storyboard_parsing_and_errors():
    shots = parse_storyboard("# comment\n2.0 | a cat walks\n\n1.5s | the cat sits\n")
    assert [(s.prompt, s.start_s, s.duration_s) for s in shots] == [("a cat walks", 0.0, 2.0), ("the cat sits", 2.0, 1.5)]
    with pytest.raises(ValueError, match="line 2: .* has no '\\|'"):
        parse_storyboard("1 | ok\njust a prompt")
    with pytest.raises(ValueError, match="line 1: duration 'abc'"):
        parse_storyboard("abc | x")
    with pytest.raises(ValueError, match="line 1: duration must be > 0"):
        parse_storyboard("0 | x")
    with pytest.raises(ValueError, match="line 1: the prompt is empty"):
        parse_storyboard("1 | ")
    with pytest.raises(ValueError, match="no shots"):
        parse_storyboard("# nothing\n")


def test_segment_arithmetic():
    assert segment_frames(4) == 13 and segment_frames(1) == 1 and segment_frames(21) == 81
    shots = parse_storyboard("1.0 | a\n2.0 | b")
    plans = plan_segments(shots, fps=16, latent_frames=4)
    assert len(plans) == round(3.0 * 16 / 13) == 4
    assert [p.start_frame for p in plans] == [0, 13, 26, 39]
    assert [p.shot for p in plans] == [0, 1, 1, 1]  # middles at 0.41 s, 1.22 s, 2.03 s, 2.84 s
    assert split_clip(30, 13) == (4, 2)
    with pytest.raises(ValueError, match="needs 13"):
        split_clip(12, 13)


def test_history_buffer_encodes_only_new_segments():
    buf = HistoryBuffer()
    calls = []

    def encode(seg):
        calls.append(seg.start_latent)
        return torch.full((2, 8), float(seg.start_latent)), torch.tensor([[0.5, 1.5, 1.5], [2.5, 1.5, 1.5]])

    buf.append(torch.randn(1, 16, 4, 8, 8), torch.rand(13, 64, 64, 3))
    buf.append(torch.randn(16, 4, 8, 8), torch.rand(13, 64, 64, 3))
    assert buf.encode_pending(encode) == 2 and calls == [0, 4]
    assert all(s.frames is None for s in buf.segments)  # pixels dropped once encoded
    buf.append(torch.randn(16, 4, 8, 8), torch.rand(13, 64, 64, 3))
    copy = buf.copy()
    assert buf.encode_pending(encode) == 1 and calls == [0, 4, 8]
    assert copy.segments[2].tokens is None  # copies do not see later encodings
    tokens, pos = buf.memory()
    assert tokens.shape == (6, 8) and buf.num_frames == 39 and buf.latent_frames == 12
    # times relative to the end of the history (latent 12): segment 0 token 0 at 0.5 - 12
    assert pos[:, 0].tolist() == [0.5 - 12, 2.5 - 12, 4.5 - 12, 6.5 - 12, 8.5 - 12, 10.5 - 12]
    with pytest.raises(ValueError, match="does not match"):
        buf.append(torch.randn(16, 4, 8, 16), torch.rand(13, 64, 128, 3))


def test_memory_gather_is_incremental_and_views_stay_valid():
    buf = HistoryBuffer()

    def encode(seg):
        return torch.full((3, 4), float(seg.start_latent)), torch.zeros(3, 3)

    first = None
    for k in range(6):
        buf.append(torch.randn(16, 4, 2, 2), torch.rand(13, 16, 16, 3))
        buf.encode_pending(encode)
        tokens, _ = buf.memory()
        first = tokens if first is None else first
        assert tokens.shape == (3 * (k + 1), 4)
        assert tokens[:, 0].tolist() == [float(4 * (i // 3)) for i in range(3 * (k + 1))]
    assert first.tolist() == [[0.0] * 4] * 3  # a view handed out earlier is not overwritten by later appends


def test_segments_shorter_than_the_time_rate_are_encoded_in_groups():
    """At 2x2x8 one memory time step spans 8 latent frames = two 4-frame segments: the pair is encoded together
    and equals encoding the 8 frames at once; a lone trailing segment waits."""
    cfg = EncoderConfig(rate="2x2x8", **SMALL)
    enc = _randomise_proj(HistoryEncoder(cfg))
    latent = torch.randn(16, 12, 16, 16)

    def encode(seg):
        tokens = combine_branches(enc(seg.latent[None]), None)[0]
        return tokens, memory_positions(memory_grid(tuple(seg.latent.shape[1:]), cfg), cfg, 0.0)

    buf = HistoryBuffer()
    for k in range(3):
        buf.append(latent[:, 4 * k:4 * k + 4], torch.rand(13, 32, 32, 3))
    assert buf.encode_pending(encode, unit=8) == 2
    assert buf.segments[2].tokens is None and buf.encoded_frames == 26
    tokens, pos = buf.memory()
    whole = combine_branches(enc(latent[None, :, :8]), None)[0]
    assert (tokens - whole).abs().max() <= 1e-4 and tokens.shape[0] == 16
    assert pos[:, 0].unique().tolist() == [3.5 - 12]  # centre of latent frames 0..7, relative to the end (12)
