"""Unit tests of the pure-torch core (memory/): encoder shapes and token counts, zero-init, incremental
encoding, RoPE positions, safetensors round trip, storyboard and history arithmetic."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from framememory.memory.config import EncoderConfig, parse_rate
from framememory.memory.encoder import HistoryEncoder, combine_branches, lr_clip, lr_frames_per_span
from framememory.memory.grid import memory_grid, memory_positions, token_grid, tokens_per_second
from framememory.memory.frames import to_uint8
from framememory.memory.history import HistoryBuffer, PartKey
from framememory.memory.io import load_encoder_file, save_encoder
from framememory.memory.storyboard import parse_storyboard, plan_segments, seam_ratios, segment_frames, split_clip

SMALL = dict(dim=32, hr_channels=(8, 16, 16, 32), attn_heads=4)


def _randomise_proj(enc: HistoryEncoder, seed: int = 0) -> HistoryEncoder:
    with torch.no_grad():
        enc.hr.proj.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return enc


def _patch_embed(dim: int = 32, seed: int = 0) -> torch.nn.Conv3d:
    """A stand-in for the DiT's first projection: 16 latent channels -> ``dim``, patch 1x2x2."""
    torch.manual_seed(seed)
    return torch.nn.Conv3d(16, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))


def _hr_map(enc: HistoryEncoder, latent: torch.Tensor) -> torch.Tensor:
    """The HR branch alone: ``[B, D, Tm, Hm, Wm]``."""
    return enc.hr(latent, enc.grid(latent))[0]


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
    latent = torch.randn(2, 16, *latent_shape)
    assert enc.grid(latent) == memory_grid(latent_shape, cfg) == expected
    y, hidden = enc.hr(latent, expected)
    assert tuple(y.shape) == (2, 32, *expected) and tuple(hidden.shape) == (2, 32, *expected)
    # Fig. 2 end to end: the LR latent on the memory grid (x patch size) through the DiT's first projection
    lr_latent = torch.randn(2, 16, expected[0], 2 * expected[1], 2 * expected[2])
    tokens, hidden_tokens = enc(latent, lr_latent, _patch_embed())
    m = expected[0] * expected[1] * expected[2]
    assert tokens.shape == (2, m, 32) and hidden_tokens.shape == (2, m, 32)
    assert combine_branches(y, None).shape == (2, m, 32)
    with pytest.raises(ValueError, match="lr_latent"):
        enc(latent)
    with pytest.raises(ValueError, match="grid"):  # an LR latent off the memory grid
        enc(latent, torch.randn(2, 16, expected[0] + 1, 2 * expected[1], 2 * expected[2]), _patch_embed())


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
    latent = torch.randn(1, 16, 4, 16, 32)
    assert _hr_map(enc, latent).abs().max() == 0
    embed = _patch_embed()
    lr_latent = torch.randn(1, 16, 2, 4, 8)  # grid (2, 2, 4) x patch 1x2x2
    tokens, hidden = enc(latent, lr_latent, embed)
    with torch.no_grad():
        lr = embed(lr_latent)  # [1, 32, 2, 2, 4]
    torch.testing.assert_close(tokens, lr.flatten(2).transpose(1, 2))
    assert hidden.shape == (1, 16, 32) and hidden.abs().max() > 0  # the HR hidden states are not zero, only proj
    lr_only = HistoryEncoder(EncoderConfig(**SMALL, use_hr=False))
    assert lr_only.hr is None and not list(lr_only.parameters())
    tokens_lr, hidden_lr = lr_only(latent, lr_latent, embed)
    assert hidden_lr is None
    torch.testing.assert_close(tokens_lr, tokens)


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x4", "2x2x1"])
def test_incremental_equals_whole(rate):
    cfg = EncoderConfig(rate=rate, **SMALL)
    enc = _randomise_proj(HistoryEncoder(cfg))
    torch.manual_seed(0)
    latent = torch.randn(1, 16, 12, 16, 32)  # three segments of 4 latent frames
    whole = combine_branches(_hr_map(enc, latent), None)
    parts = torch.cat([combine_branches(_hr_map(enc, latent[:, :, i:i + 4]), None) for i in (0, 4, 8)], dim=1)
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
    lr_latent = torch.randn(1, 16, 2, 8, 8)
    torch.testing.assert_close(enc(x, lr_latent, _patch_embed()), enc2(x, lr_latent, _patch_embed()))
    assert [p.name for p in tmp_path.iterdir()] == ["enc.safetensors"]  # no temp files left
    assert any(k.startswith("hr.layers.") for k in sd) and any(k.startswith("hr.proj.") for k in sd)


def test_format_1_files_load_under_the_current_layout(tmp_path):
    """A history_encoder/1 file (HR convolutions under ``hr.N.*``, output projection under ``proj.*``) loads into the
    current ``hr.layers.N.*`` / ``hr.proj.*`` layout with the same weights."""
    cfg = EncoderConfig(family="wan21", dim=32, rate="4x4x2", hr_channels=(8, 16, 16, 32), attn_heads=4, use_lr=False)
    enc = _randomise_proj(HistoryEncoder(cfg), seed=4)
    old = {("proj." + k[len("hr.proj."):]) if k.startswith("hr.proj.") else "hr." + k[len("hr.layers."):]: v
           for k, v in enc.state_dict().items()}
    assert "proj.weight" in old and not any(k.startswith("hr.layers.") for k in old)
    path = tmp_path / "old.safetensors"
    save_encoder(str(path), old, cfg)
    sd, cfg2 = load_encoder_file(str(path))
    assert sd.keys() == enc.state_dict().keys()
    enc2 = HistoryEncoder(cfg2)
    enc2.load_state_dict(sd)
    x = torch.randn(1, 16, 4, 16, 16)
    torch.testing.assert_close(enc(x)[0], enc2(x)[0])
    assert enc(x)[0].abs().max() > 0


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
    assert EncoderConfig().memory_timestep == "zero"  # clean context for every family by default
    assert EncoderConfig(memory_timestep="shared").memory_timestep == "shared"  # the Wan 2.1 ablation
    with pytest.raises(ValueError, match="memory_timestep"):
        EncoderConfig(memory_timestep="noisy")


def test_lr_clip_resizes_the_covered_region_and_pools_time():
    cfg = EncoderConfig(rate="4x4x2", **SMALL)
    frames = torch.rand(13, 128, 256, 3)
    # 4 latent frames starting the stream = 13 frames -> 2 memory steps -> LR frames 1 + 4 * (2 - 1) = 5
    assert lr_frames_per_span(4, cfg, stream_start=True) == (13, 5)
    assert lr_frames_per_span(4, cfg, stream_start=False) == (16, 8)
    lr = lr_clip(frames, cfg, stream_start=True)
    # 256x128 -> latent 32x16 -> grid 4x2 at 4x4 -> LR frame 4*2*8 x 2*2*8 px
    assert lr.shape == (5, 32, 64, 3)
    area = lambda x: F.interpolate(x.movedim(-1, 1), size=(32, 64), mode="area").movedim(1, -1)
    torch.testing.assert_close(lr[0], area(frames[:5].mean(0, keepdim=True))[0])  # the causal first step: 1 + 4 frames
    torch.testing.assert_close(lr[1:], area(frames[5:].reshape(4, 2, 128, 256, 3).mean(1)))  # then means of rt frames
    continuing = torch.rand(16, 128, 256, 3)
    assert lr_clip(continuing, cfg, stream_start=False).shape == (8, 32, 64, 3)
    # clamp=False keeps the map linear (values outside 0..1 pass through); the default clamps to 0..1
    for shift in (-0.8, 0.8):
        linear = lr_clip(frames + shift, cfg, stream_start=True, clamp=False)
        torch.testing.assert_close(linear, lr + shift)
        assert (linear.min() < 0) if shift < 0 else (linear.max() > 1)
        torch.testing.assert_close(lr_clip(frames + shift, cfg, stream_start=True), linear.clamp(0, 1))
    with pytest.raises(ValueError, match="no whole number of memory time steps"):
        lr_clip(frames[:12], cfg, stream_start=True)
    with pytest.raises(ValueError, match="no whole number of memory time steps"):
        lr_clip(continuing[:13], cfg, stream_start=False)
    with pytest.raises(ValueError, match="not a whole number of memory time steps"):
        lr_frames_per_span(3, cfg, stream_start=True)


def _latent_of_frame(f: int, stream_start: bool, ft: int = 4) -> int:
    """Latent frame (of the span) that video frame ``f`` of the span belongs to in a causal VAE stream."""
    if stream_start:
        return 0 if f == 0 else (f - 1) // ft + 1
    return f // ft


def _lr_latent_groups(n_lr: int, stream_start: bool, ft: int = 4) -> list[list[int]]:
    """LR frames of each LR latent frame of the causal VAE: ``[0], [1..4], ...`` at a stream start, else ``[0..3], ...``."""
    if stream_start:
        assert (n_lr - 1) % ft == 0
        return [[0]] + [list(range(1 + ft * k, 1 + ft * (k + 1))) for k in range((n_lr - 1) // ft)]
    assert n_lr % ft == 0
    return [list(range(ft * k, ft * (k + 1))) for k in range(n_lr // ft)]


@pytest.mark.parametrize("rate", ["4x4x2", "2x2x1", "2x2x8"])
@pytest.mark.parametrize("stream_start", [True, False])
def test_lr_clip_lands_on_the_hr_memory_grid(rate, stream_start):
    """For one span of 8 latent frames at 272x144 (a size that does not divide into memory tokens): the LR clip has
    exactly the frames and size whose VAE latent, patch-embedded, lands on the HR branch's (Tm, Hm, Wm) grid; it
    covers only the region the HR grid covers; and each LR latent frame is made of exactly the video frames of the
    latent frames its memory token covers, so its time centre (latent-frame units) is the token's time from
    memory_positions."""
    cfg = EncoderConfig(rate=rate, **SMALL)
    enc = _randomise_proj(HistoryEncoder(cfg))
    rh, rw, rt = cfg.rate
    width, height, t = 272, 144, 8
    latent = torch.randn(1, 16, t, height // 8, width // 8)
    grid = enc.grid(latent)
    assert tuple(_hr_map(enc, latent).shape[2:]) == grid
    tm, hm, wm = grid
    assert (tm, hm, wm) == (t // rt, (144 // 16) // rh, (272 // 16) // rw)
    covered_h, covered_w = hm * rh * 16, wm * rw * 16  # pixels under the HR grid (the rest is floored away)
    assert covered_h < height and covered_w < width  # this size does not divide

    n_frames, n_lr = lr_frames_per_span(t, cfg, stream_start)
    assert n_frames == (1 + 4 * (t - 1) if stream_start else 4 * t)
    frames = torch.rand(n_frames, height, width, 3)
    frames[:, covered_h:] = 1.0  # outside the covered region: white; inside: at most 0.5
    frames[:, :, covered_w:] = 1.0
    frames[:, :covered_h, :covered_w] *= 0.5
    lr = lr_clip(frames, cfg, stream_start)
    assert lr.shape == (n_lr, hm * 16, wm * 16, 3)  # LR VAE latent (hm*2, wm*2) -> patch 1x2x2 -> (hm, wm)
    assert lr.max() <= 0.5 + 1e-6  # nothing from outside the HR-covered region
    expected = F.interpolate(frames[:, :covered_h, :covered_w].movedim(-1, 1).float(), size=(hm * 16, wm * 16),
                             mode="area").movedim(1, -1)
    groups = _lr_latent_groups(n_lr, stream_start)
    if stream_start:  # the first LR frame: the mean of the causal first step's 1 + 4 * (rt - 1) frames
        torch.testing.assert_close(lr[0], expected[: 1 + 4 * (rt - 1)].mean(0))
    assert len(groups) == tm  # the causal VAE turns the LR clip into exactly Tm latent frames

    # through Fig. 2: the LR latent of that many frames and that size lands on the HR grid (no error, M tokens)
    lr_latent = torch.randn(1, 16, len(groups), hm * 2, wm * 2)
    tokens, _ = enc(latent, lr_latent, _patch_embed())
    assert tokens.shape == (1, tm * hm * wm, 32)

    # time: which video frames feed each LR frame (lr_clip of one-hot-in-time videos)
    weights = torch.stack([lr_clip(torch.eye(n_frames)[:, f, None, None, None].expand(n_frames, 16, 16, 3).contiguous(),
                                   dataclasses.replace(cfg, rate=(1, 1, rt)), stream_start)[:, 0, 0, 0]
                           for f in range(n_frames)], dim=1)  # [n_lr, n_frames]
    assert torch.allclose(weights.sum(1), torch.ones(n_lr))  # each LR frame is a mean of video frames
    centres = memory_positions(grid, cfg, t_start=0.0).reshape(tm, hm, wm, 3)[:, 0, 0, 0]
    for i, group in enumerate(groups):
        used = sorted({_latent_of_frame(f, stream_start) for f in range(n_frames) if weights[group, f].sum() > 0})
        assert used == list(range(i * rt, (i + 1) * rt))  # exactly the latent frames memory token i covers
        assert sum(used) / len(used) == centres[i].item() == i * rt + (rt - 1) / 2


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
    # one continuous stream: the first segment 1 + 4 (T - 1) frames, every later one 4 T
    assert segment_frames(4) == 13 and segment_frames(1) == 1 and segment_frames(21) == 81
    assert segment_frames(4, stream_start=False) == 16 and segment_frames(1, stream_start=False) == 4
    assert segment_frames(4, 1) == segment_frames(4, 1, stream_start=False) == 4  # a VAE without temporal stride
    with pytest.raises(ValueError, match="at least 1"):
        segment_frames(0)
    shots = parse_storyboard("1.0 | a\n2.0 | b")
    plans = plan_segments(shots, fps=16, latent_frames=4)  # 48 frames: 13 + 16 + 16 = 45 is closest
    assert len(plans) == 3
    assert [(p.start_frame, p.frames, p.latent_frames) for p in plans] == [(0, 13, 4), (13, 16, 4), (29, 16, 4)]
    assert [p.shot for p in plans] == [0, 1, 1]  # middles at 0.41 s, 1.31 s, 2.31 s
    cont = plan_segments(shots, fps=16, latent_frames=4, continues=True)  # continuing a history: 16 each
    assert [(p.start_frame, p.frames) for p in cont] == [(0, 16), (16, 16), (32, 16)]
    assert [p.shot for p in cont] == [0, 1, 1]  # middles at 0.5 s, 1.5 s, 2.5 s
    assert len(plan_segments(parse_storyboard("0.1 | a"), 16, 4)) == 1  # at least one segment
    with pytest.raises(ValueError, match="fps"):
        plan_segments(shots, fps=0, latent_frames=4)
    # a starting clip: 13, then 16 per segment; the oldest frames that do not fill a segment are dropped
    assert split_clip(30, 4) == (1, 2) and split_clip(29, 4) == (0, 2) and split_clip(28, 4) == (15, 1)
    assert split_clip(13, 4) == (0, 1) and split_clip(45, 4) == (0, 3)
    with pytest.raises(ValueError, match="needs 13"):
        split_clip(12, 4)


def test_seam_ratios():
    frames = torch.zeros(8, 2, 2, 3)
    for i in range(8):
        frames[i] = 0.01 * i  # moves by 0.01 per frame
    frames[4:] += 0.02  # a jump of 0.03 between frames 3 and 4
    seams = seam_ratios(frames, [4])
    assert seams["per_boundary"] == [pytest.approx(3.0)] and seams["mean"] == pytest.approx(3.0)
    assert seams["inside_mean_abs"] == pytest.approx(0.01)
    assert seam_ratios(to_uint8(frames), [4])["per_boundary"][0] == pytest.approx(3.0, rel=0.2)  # uint8 frames too
    assert seam_ratios(frames, [2, 4, 6])["per_boundary"] == [pytest.approx(1.0), pytest.approx(3.0),
                                                              pytest.approx(1.0)]  # one ratio per boundary
    assert seam_ratios(frames, [])["per_boundary"] == [] and seam_ratios(frames, [])["mean"] is None


def _fill_encode(calls: list | None = None, rows: int = 2):
    """An EncodeFn whose tokens carry the span's first latent value (segments are filled with their start latent)
    and whose positions are two fixed points; records ``(first latent value, lr_latent)`` calls."""

    def encode(latent, lr_latent):
        start = float(latent[0, 0, 0, 0])
        if calls is not None:
            calls.append((start, lr_latent))
        pos = torch.tensor([[0.5, 1.5, 1.5], [2.5, 1.5, 1.5]])[:rows] if rows <= 2 else torch.zeros(rows, 3)
        return torch.full((rows, 8), start), pos

    return encode


def test_history_buffer_encodes_only_new_segments():
    buf = HistoryBuffer()
    calls, lr_calls = [], []

    def lr_encode(frames, stream_start):
        lr_calls.append((int(frames.shape[0]), stream_start, frames.dtype))
        return torch.full((16, 2, 1, 1), float(len(lr_calls)))

    # one stream: 13 frames, then 16 per segment (latents filled with their start latent frame)
    buf.append(torch.full((1, 16, 4, 8, 8), 0.0), torch.rand(13, 64, 64, 3))
    buf.append(torch.full((16, 4, 8, 8), 4.0), torch.rand(16, 64, 64, 3))
    assert [(s.stream_start, s.num_frames, s.start_frame) for s in buf.segments] == [(True, 13, 0), (False, 16, 13)]
    assert buf.segments[0].frames.dtype == torch.uint8  # pixels kept as uint8
    assert buf.encode_lr_pending(0, 1, lr_encode) == 2
    assert lr_calls == [(13, True, torch.float32), (16, False, torch.float32)]  # 0..1 floats, in stream order
    assert buf.encode_lr_pending(0, 1, lr_encode) == 0  # never twice
    assert buf.encode_pending(_fill_encode(calls)) == 2
    assert [c[0] for c in calls] == [0.0, 4.0] and [float(c[1].flatten()[0]) for c in calls] == [1.0, 2.0]
    assert all(s.frames is not None for s in buf.segments)  # tokens alone do not drop pixels
    buf.drop_frames([0])
    assert all(s.frames is None for s in buf.segments)  # dropped once the LR latents cover them
    buf.append(torch.full((16, 4, 8, 8), 8.0), torch.rand(16, 64, 64, 3))
    copy = buf.copy()
    assert buf.encode_lr_pending(0, 1, lr_encode) == 1 and lr_calls[-1][:2] == (16, False)
    assert buf.encode_pending(_fill_encode(calls)) == 1 and [c[0] for c in calls] == [0.0, 4.0, 8.0]
    assert copy.segments[2].tokens is None and not copy.segments[2].lr_latents  # copies do not see later encodings
    assert buf.segments[2].encoded[PartKey()] is buf.segments[2].encoded[PartKey(0, 0)]  # PartKey() == PartKey(0, 0)
    tokens, pos = buf.memory()
    assert tokens.shape == (6, 8) and buf.num_frames == 45 and buf.latent_frames == 12 and buf.encoded_frames == 45
    # times relative to the end of the history (latent 12): segment 0 token 0 at 0.5 - 12
    assert pos[:, 0].tolist() == [0.5 - 12, 2.5 - 12, 4.5 - 12, 6.5 - 12, 8.5 - 12, 10.5 - 12]
    with pytest.raises(ValueError, match="does not match"):
        buf.append(torch.randn(16, 4, 8, 16), torch.rand(16, 64, 128, 3))
    with pytest.raises(ValueError, match="no pixels left"):  # an LR latent for another encoder: the pixels are gone
        buf.encode_lr_pending(1, 1, lr_encode)


def test_history_keys_per_encoder_and_expert():
    """Several encoders (PartKey.part) and experts (PartKey.expert) share the latents; each key has its own tokens;
    pixels are dropped only once every encoder with an LR branch has its LR latent."""
    buf = HistoryBuffer()
    for k in range(2):
        buf.append(torch.full((16, 4, 2, 2), 4.0 * k), torch.rand(13 if k == 0 else 16, 16, 16, 3))
    lr = lambda frames, start: torch.zeros(16, 1, 1, 1)
    buf.encode_lr_pending(0, 4, lr)
    buf.drop_frames([0, 1])
    assert all(s.frames is not None for s in buf.segments)  # encoder 1 has no LR latent yet
    buf.encode_lr_pending(1, 8, lr)  # at 2x2x8: both segments in one span
    assert list(buf.segments[0].lr_latents) == [0] and list(buf.segments[1].lr_latents) == [0, 1]
    buf.drop_frames([0, 1])
    assert all(s.frames is None for s in buf.segments)
    buf.encode_pending(_fill_encode(), unit=4, key=PartKey(0, 1))
    buf.encode_pending(_fill_encode(rows=1), unit=8, key=PartKey(1))
    assert buf.keys == [PartKey(0, 1), PartKey(1)]
    assert buf.memory(key=PartKey())[0] is None  # nothing under the first expert's key yet
    assert buf.memory(key=PartKey(0, 1))[0].shape == (4, 8) and buf.memory(key=PartKey(1))[0].shape == (1, 8)
    assert buf.num_tokens == 5 and buf.encoded_frames == 29


def test_to_uint8():
    x = torch.tensor([-0.5, 0.0, 0.499 / 255, 0.5 / 255 + 1e-6, 0.5, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255]
    u = torch.arange(5, dtype=torch.uint8)
    assert to_uint8(u) is u


def test_memory_gather_is_incremental_and_views_stay_valid():
    buf = HistoryBuffer()

    first = None
    for k in range(6):
        buf.append(torch.full((16, 4, 2, 2), 4.0 * k), torch.rand(13 if k == 0 else 16, 16, 16, 3))
        buf.encode_pending(_fill_encode(rows=3))
        tokens, _ = buf.memory()
        first = tokens if first is None else first
        assert tokens.shape == (3 * (k + 1), 8)
        assert tokens[:, 0].tolist() == [float(4 * (i // 3)) for i in range(3 * (k + 1))]
    assert first.tolist() == [[0.0] * 8] * 3  # a view handed out earlier is not overwritten by later appends


def test_segments_shorter_than_the_time_rate_are_encoded_in_groups():
    """At 2x2x8 one memory time step spans 8 latent frames = two 4-frame segments: the pair is encoded together
    (its LR latent from the pair's 13 + 16 frames, one stream start) and equals encoding the 8 frames at once; a lone
    trailing segment waits."""
    cfg = EncoderConfig(rate="2x2x8", **SMALL)
    enc = _randomise_proj(HistoryEncoder(cfg))
    embed = _patch_embed()
    latent = torch.randn(16, 12, 16, 16)
    lr_calls = []

    def lr_encode(frames, stream_start):
        lr_calls.append((int(frames.shape[0]), stream_start))
        clip = lr_clip(frames, cfg, stream_start)  # [1, 64, 64, 3]: one LR frame for one memory step
        return clip.mean(-1)[None].expand(16, -1, -1, -1)[:, :, ::8, ::8].contiguous()  # [16, 1, 8, 8] stand-in VAE

    def encode(lat, lr_latent):
        with torch.no_grad():
            tokens, _ = enc(lat[None], lr_latent[None], embed)
        return tokens[0], memory_positions(memory_grid(tuple(lat.shape[1:]), cfg), cfg, 0.0)

    buf = HistoryBuffer()
    for k in range(3):
        buf.append(latent[:, 4 * k:4 * k + 4], torch.rand(13 if k == 0 else 16, 128, 128, 3))
    assert lr_frames_per_span(8, cfg, stream_start=True) == (29, 1)
    assert buf.encode_lr_pending(0, 8, lr_encode) == 1 and lr_calls == [(29, True)]
    assert buf.encode_pending(encode, unit=8) == 2
    assert buf.segments[2].tokens is None and buf.encoded_frames == 29
    assert buf.segments[2].frames is not None and not buf.segments[2].lr_latents  # waits for its pair
    tokens, pos = buf.memory()
    with torch.no_grad():
        whole, _ = enc(latent[None, :, :8], buf.segments[1].lr_latents[0][None], embed)
    assert (tokens - whole[0]).abs().max() <= 1e-4 and tokens.shape[0] == 16
    assert pos[:, 0].unique().tolist() == [3.5 - 12]  # centre of latent frames 0..7, relative to the end (12)
