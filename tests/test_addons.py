"""The two optional add-ons of arXiv 2512.23851 (both off by default): several encoders at different rates
concatenated (4x4x2 + 2x2x8), and cross-attention from the encoder's last hidden states into every DiT block."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from framememory.memory.config import EncoderConfig
from framememory.memory.encoder import HistoryEncoder, lr_clip
from framememory.memory.grid import memory_grid, memory_positions
from framememory.memory.history import HistoryBuffer, PartKey
from framememory.memory.io import load_encoder_file, save_encoder

SMALL = dict(dim=32, hr_channels=(8, 16, 16, 32), attn_heads=4, use_lr=False)


def _random_proj(enc: HistoryEncoder, seed: int) -> HistoryEncoder:
    with torch.no_grad():
        enc.hr.proj.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return enc


# ---- several encoders, shared history (pure torch) ---------------------------------------------------------------

def _standin_lr_vae(clip: torch.Tensor, stream_start: bool) -> torch.Tensor:
    """A causal-VAE stand-in for the LR branch: LR frames ``[F, H, W, 3]`` -> ``[16, T, H / 8, W / 8]`` (the stream's
    first frame alone, then means of 4 frames; 8x8 means in space; the grey value on 16 channels)."""
    x = clip.mean(-1)  # [F, H, W]
    parts = ([x[:1]] if stream_start else []) + [x[int(stream_start):].reshape(-1, 4, *x.shape[1:]).mean(1)]
    x = torch.nn.functional.avg_pool2d(torch.cat(parts)[:, None], 8)[:, 0]  # [T, H / 8, W / 8]
    return x[None].expand(16, -1, -1, -1).contiguous()


def test_two_encoders_share_a_history_each_incremental_equals_whole():
    """4x4x2 and 2x2x8 on one HistoryBuffer (keys PartKey(0) and PartKey(1)), both with an LR branch: each key's tokens
    equal that encoder on the whole latent (and the whole LR latent), although segments arrive one at a time; 2x2x8
    waits for a pair of 4-frame segments (its LR clip spans both); frames are kept until both encoders' LR latents
    cover them."""
    lr_small = {**SMALL, "use_lr": True}
    encs = [_random_proj(HistoryEncoder(EncoderConfig(rate="4x4x2", **lr_small)), 0),
            _random_proj(HistoryEncoder(EncoderConfig(rate="2x2x8", **lr_small)), 1)]
    torch.manual_seed(5)
    embed = torch.nn.Conv3d(16, 32, kernel_size=(1, 2, 2), stride=(1, 2, 2))  # stand-in for the DiT's patch embedding
    lr_spans = {0: [], 1: []}

    def lr_with(i, enc):
        def lr_encode(frames, stream_start):
            lr_spans[i].append((int(frames.shape[0]), stream_start))
            return _standin_lr_vae(lr_clip(frames, enc.cfg, stream_start), stream_start)
        return lr_encode

    def encode_with(enc):
        def encode(latent, lr_latent):
            with torch.no_grad():
                tokens, _ = enc(latent[None], lr_latent[None], embed)
            return tokens[0], memory_positions(memory_grid(tuple(latent.shape[1:]), enc.cfg), enc.cfg, 0.0)
        return encode

    latent = torch.randn(16, 16, 16, 32)  # four segments of 4 latent frames
    buf = HistoryBuffer()
    for k in range(4):
        buf.append(latent[:, 4 * k:4 * k + 4], torch.rand(13 if k == 0 else 16, 128, 256, 3))
        for i, enc in enumerate(encs):
            buf.encode_lr_pending(i, enc.cfg.rate[2], lr_with(i, enc))
            buf.encode_pending(encode_with(enc), unit=enc.cfg.rate[2], key=PartKey(i))
        buf.drop_frames([0, 1])
        if k == 2:  # the third segment: 4x4x2 has it, 2x2x8 waits for the fourth
            assert buf.segments[2].frames is not None and buf.encoded_frames == 29
            assert buf.segments[2].tokens is not None and PartKey(1) not in buf.segments[2].encoded
    assert lr_spans == {0: [(13, True), (16, False), (16, False), (16, False)], 1: [(29, True), (32, False)]}
    assert all(s.frames is None for s in buf.segments) and buf.encoded_frames == 61
    for i, enc in enumerate(encs):
        tokens, pos = buf.memory(key=PartKey(i))
        lr_whole = torch.cat([s.lr_latents[i] for s in buf.segments if i in s.lr_latents], dim=1)  # the LR stream
        with torch.no_grad():
            whole, _ = enc(latent[None], lr_whole[None], embed)
        expected = memory_positions(memory_grid((16, 16, 32), enc.cfg), enc.cfg, -16.0)
        assert whole.abs().max() > 0 and (tokens - whole[0]).abs().max() <= 1e-4, i
        torch.testing.assert_close(pos, expected)
    assert buf.num_tokens == 8 * 2 * 4 + 2 * 4 * 8  # 4x4x2: 8 time steps x 2x4; 2x2x8: 2 x 4x8
    assert buf.memory()[0].shape[0] == 64 and buf.memory(key=PartKey(1))[0].shape[0] == 64


def test_encoding_a_history_whose_pixels_are_gone_is_a_clear_error():
    buf = HistoryBuffer()
    buf.append(torch.randn(16, 4, 8, 8), torch.rand(13, 64, 64, 3))
    buf.encode_lr_pending(0, 1, lambda frames, start: torch.zeros(16, 2, 2, 2))
    buf.drop_frames([0])  # encoder 0's LR latent covers the segment: its pixels are dropped
    assert buf.segments[0].frames is None
    with pytest.raises(ValueError, match="no pixels left for encoder 1's LR branch"):
        buf.encode_lr_pending(1, 1, lambda frames, start: torch.zeros(16, 2, 2, 2))


# ---- cross-attention add-on: config, weights, round trip (pure torch) --------------------------------------------

def _cross_cfg(**kw) -> EncoderConfig:
    from framememory.demo.tiny_models import tiny_encoder_config

    return dataclasses.replace(tiny_encoder_config(), **{"cross_attention": True, "dit_blocks": 2, **kw})


def test_cross_attention_config_is_validated_and_off_by_default():
    assert EncoderConfig().cross_attention is False and HistoryEncoder(EncoderConfig(**SMALL)).cross is None
    with pytest.raises(ValueError, match="dit_blocks >= 1"):
        EncoderConfig(dim=128, cross_attention=True)
    with pytest.raises(ValueError, match="needs the HR branch"):
        EncoderConfig(dim=128, cross_attention=True, dit_blocks=2, use_hr=False)
    with pytest.raises(ValueError, match="fixed DiT width"):
        EncoderConfig(dim=0, cross_attention=True, dit_blocks=2)


def test_cross_attention_weights_are_zero_initialised_and_round_trip(tmp_path):
    cfg = _cross_cfg()
    net = HistoryEncoder(cfg)
    assert len(net.cross) == 2 and all(layer.out.weight.abs().max() == 0 for layer in net.cross)
    x, ctx = torch.randn(1, 5, 128), torch.randn(1, 7, 64)
    assert torch.equal(net.cross[0](x, ctx), x)  # untrained: adds nothing
    for layer in net.cross:
        torch.nn.init.normal_(layer.out.weight, std=0.1)
    assert (net.cross[0](x, ctx) - x).abs().max() > 1e-3
    path = str(tmp_path / "cross.safetensors")
    save_encoder(path, net.state_dict(), cfg)
    sd, loaded_cfg = load_encoder_file(path)
    assert loaded_cfg == cfg and "cross.1.out.weight" in sd
    again = HistoryEncoder(loaded_cfg)
    again.load_state_dict(sd, strict=True)
    torch.testing.assert_close(again.cross[1].out.weight, net.cross[1].out.weight)
    torch.testing.assert_close(again.cross[0](x, ctx), net.cross[0](x, ctx))
    # hidden states: the HR branch before its output projection, on the memory grid
    latent = torch.randn(1, 16, 4, 16, 32)
    y, hidden = net.hr(latent, net.grid(latent))
    assert y.shape == (1, 128, 2, 2, 4) and hidden.shape == (1, 64, 2, 2, 4)
    embed = torch.nn.Conv3d(16, 128, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    tokens, hidden_tokens = net(latent, torch.randn(1, 16, 2, 4, 8), embed)  # the encoder: one per memory token
    assert tokens.shape == (1, 16, 128) and torch.equal(hidden_tokens, hidden.flatten(2).transpose(1, 2))


# ---- with ComfyUI's tiny models ------------------------------------------------------------------------------------


def _variant(encoder, name: str, **changes):
    """The tiny encoder's config with ``changes``; new seeded weights (random HR output projection) when the rate
    changes the weight shapes, else the tiny encoder's own."""
    from framememory.models.encoding import MemoryEncoder

    cfg = dataclasses.replace(encoder.cfg, **changes)
    if cfg.rate == encoder.cfg.rate:
        return MemoryEncoder(cfg, encoder.state_dict, name)
    net = HistoryEncoder(cfg)
    net.reset_parameters(torch.Generator().manual_seed(sum(cfg.rate)))
    return MemoryEncoder(cfg, _random_proj(net, sum(cfg.rate)).state_dict(), name)


def test_combined_memory_is_the_concatenation_of_each_encoders_memory(tiny_wan):
    from framememory.models.encoding import MultiEncoder, next_memory
    from framememory.models.history_writer import history_from_frames

    model, vae, encoder, _, video = tiny_wan
    a, b = _variant(encoder, "a", rate="4x4x2"), _variant(encoder, "b", rate="2x2x8")
    both = MultiEncoder([a, b])
    assert both.name == "a + b" and [c.rate_str for c in both.check(model)] == ["4x4x2", "2x2x8"]
    combined, _ = history_from_frames(model, vae, both, video, 4, 16.0, 128, 64)
    tokens, positions = combined.tokens(model)
    parts = [history_from_frames(model, vae, e, video, 4, 16.0, 128, 64)[0].tokens(model) for e in (a, b)]
    # at 128x64 the DiT grid is 4x8: 4x4x2 gives 2 segments x 2x1x2 tokens; 2x2x8 one 8-frame step x 2x4
    assert [p[0].shape[0] for p in parts] == [2 * 4, 8]
    torch.testing.assert_close(tokens, torch.cat([p[0] for p in parts]))
    torch.testing.assert_close(positions, torch.cat([p[1] for p in parts]))
    assert combined.history.num_tokens == 16 and all(s.frames is None for s in combined.history.segments)
    # the overlap window is added once, after all encoders' tokens
    overlap = MultiEncoder([a, _variant(b, "b", overlap_latent_frames=2)])
    tokens2, _ = next_memory(model, overlap, combined.history)
    torch.testing.assert_close(tokens2[:16], tokens)
    assert tokens2.shape[0] == 16 + 2 * 4 * 8  # 2 latent frames of the 4x8 grid


def test_combine_node_output_runs_a_storyboard(tiny_wan):
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard
    from framememory.nodes import NODES
    from framememory.nodes.combine_node import CombineMemoryEncoders

    assert CombineMemoryEncoders in NODES
    schema = CombineMemoryEncoders.define_schema()
    assert schema.node_id == "FrameMemoryCombineEncoders" and schema.category == "FrameMemory"
    assert all(i.tooltip for i in schema.inputs) and len(schema.inputs) == 2
    model, vae, encoder, clip, video = tiny_wan
    (both,) = CombineMemoryEncoders.execute(_variant(encoder, "a", rate="4x4x2"),
                                             _variant(encoder, "b", rate="2x2x8")).args
    start, _ = history_from_frames(model, vae, both, video, 4, 16.0, 128, 64)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    shots = parse_storyboard("0.8 | a cyclist\n0.8 | a car")
    frames, final, report = run_storyboard(model, vae, clip, both, neg, shots, SamplerSettings(2, 3.0, "euler", "simple", 1),
                                           128, 64, 16.0, 4, start)
    assert frames.shape == (32, 64, 128, 3) and torch.isfinite(frames).all()  # 2 segments continuing the clip: 16 each
    assert report["rate"] == "4x4x2+2x2x8" and report["encoder"] == "a + b"
    segs = report["segments"]
    assert [s["memory_tokens"] for s in segs] == [8 + 8, 12 + 8]  # 2x2x8 waits for the 4th segment
    assert [s["history_frames_covered"] for s in segs] == [29, 29] and segs[1]["history_frames_total"] == 45
    assert final.history.num_tokens == 16 + 16 and final.history.encoded_frames == 61
    assert all(s.frames is None for s in final.history.segments)  # both encoders' LR latents cover every segment


def _cross_encoder(encoder, seed: int | None):
    """The tiny encoder plus cross-attention layers: zero output (seed None) or random output projections."""
    from framememory.models.encoding import MemoryEncoder

    cfg = dataclasses.replace(encoder.cfg, cross_attention=True, dit_blocks=2)
    net = HistoryEncoder(cfg)
    net.load_state_dict(encoder.state_dict, strict=False)
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in net.cross:
                layer.out.weight.normal_(0, 0.2, generator=g)
    return MemoryEncoder(cfg, net.state_dict(), "cross" if seed is None else f"cross{seed}")


def _dm_options(dm, layers):
    from framememory.models.families import install_memory

    return install_memory(dm, cross=layers)


def test_cross_attention_in_every_wan_block(comfy):
    """Zero-initialised layers leave the DiT output bit-identical; random ones change it; missing or mismatched
    layers are a clear error."""
    from framememory.demo.tiny_models import tiny_wan21_dit

    dm = tiny_wan21_dit(seed=0)
    g = torch.Generator().manual_seed(0)
    x, t, context = torch.randn(1, 16, 3, 8, 12, generator=g), torch.tensor([500.0]), torch.randn(1, 5, 4096, generator=g) * 0.1
    mem = torch.randn(1, 6, 128, generator=g) * 0.5
    pos = torch.tensor([[[-3, 0, 0], [-3, 2, 2], [-3, 4, 4], [-1, 0, 0], [-1, 2, 2], [-1, 4, 4]]]) * 2
    hidden = torch.randn(1, 6, 64, generator=g)
    zero = HistoryEncoder(_cross_cfg())
    trained = HistoryEncoder(_cross_cfg())
    with torch.no_grad():
        for layer in trained.cross:
            layer.out.weight.normal_(0, 0.2, generator=g)
    kw = dict(memory_tokens=mem, memory_positions2=pos)
    with torch.no_grad():
        plain = dm(x, t, context, transformer_options=_dm_options(dm, None), **kw)
        with_zero = dm(x, t, context, transformer_options=_dm_options(dm, zero.cross), memory_hidden=hidden, **kw)
        with_trained = dm(x, t, context, transformer_options=_dm_options(dm, trained.cross), memory_hidden=hidden, **kw)
        no_hidden = dm(x, t, context, transformer_options=_dm_options(dm, trained.cross), **kw)
        with pytest.raises(ValueError, match="no cross-attention layers"):
            dm(x, t, context, transformer_options=_dm_options(dm, None), memory_hidden=hidden, **kw)
        three = HistoryEncoder(_cross_cfg(dit_blocks=3))
        with pytest.raises(ValueError, match=r"\(3 blocks, width 128, hidden width 64\) do not fit this model \(2 blocks"):
            dm(x, t, context, transformer_options=_dm_options(dm, three.cross), memory_hidden=hidden, **kw)
    assert torch.equal(with_zero, plain) and torch.equal(no_hidden, plain)
    assert (with_trained - plain).abs().max() > 1e-3


def test_cross_attention_config_must_match_the_model(tiny_wan, comfy, tmp_path, monkeypatch):
    import comfy.sd
    from framememory.demo.make_tiny_models import write_family
    from framememory.models import encoding
    from framememory.models.encoding import MemoryEncoder, MultiEncoder

    model, _, encoder, _, _ = tiny_wan
    ok = _cross_encoder(encoder, None)
    assert ok.check(model).dit_blocks == 2
    blocks = MemoryEncoder(dataclasses.replace(ok.cfg, dit_blocks=30), None, "wan13b_cross")
    with pytest.raises(ValueError, match=r"dit_blocks 30 \(model: 2\)"):
        blocks.check(model)
    wide = MemoryEncoder(dataclasses.replace(ok.cfg, dim=1536), None, "wide")
    with pytest.raises(ValueError, match=r"dim 1536 \(model: 128\)"):
        wide.check(model)
    with pytest.raises(ValueError, match="at most one encoder"):
        MultiEncoder([ok, _cross_encoder(encoder, 1)])
    # HunyuanVideo counts double + single blocks (tiny: 2 + 2); tests/test_hunyuan_adapter.py runs the add-on
    hv = comfy.sd.load_diffusion_model(write_family(str(tmp_path), "hunyuan_video", vae=False)["dit"])
    hv_cross = MemoryEncoder(dataclasses.replace(ok.cfg, family="hunyuan_video"), None, "hv_cross")
    with pytest.raises(ValueError, match=r"dit_blocks 2 \(model: 4\) \(dit_blocks counts .*double \+ single blocks"):
        hv_cross.check(hv)
    assert MemoryEncoder(dataclasses.replace(hv_cross.cfg, dit_blocks=4), None, "hv4").check(hv).dit_blocks == 4
    # a family without cross-attention patches is a clear NotImplementedError, not a silent no-op
    monkeypatch.delitem(encoding.CROSS_ATTENTION_FAMILIES, "hunyuan_video")
    with pytest.raises(NotImplementedError, match="implemented for wan21, wan22 only, not hunyuan_video"):
        hv_cross.check(hv)


def test_cross_attention_through_the_storyboard_loop(tiny_wan):
    """Hidden states travel as a third model cond through the stock sampler (CFG batch); zero-initialised layers
    give exactly the frames of the same encoder without the add-on, trained ones change them. The Apply Memory
    node carries the add-on too (hidden states in both conds, layers installed on the patched model)."""
    import comfy.sample
    from framememory.models.conds import HIDDEN_KEY
    from framememory.nodes.memory_nodes import ApplyMemory
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, video = tiny_wan
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    shots = parse_storyboard("0.8 | a cyclist")
    settings = SamplerSettings(2, 3.0, "euler", "simple", 1)
    out = {}
    for name, enc in (("plain", encoder), ("zero", _cross_encoder(encoder, None)), ("trained", _cross_encoder(encoder, 5))):
        start, _ = history_from_frames(model, vae, enc, video, 4, 16.0, 128, 64)
        if name != "plain":
            inp = start.conds(model)
            tokens, positions, hidden = inp.tokens, inp.positions, inp.hidden
            assert hidden.shape == (8, 64) and tokens.shape == (8, 128)  # one hidden state per memory token
            patched, pos_c, neg_c = ApplyMemory.execute(model, start, neg, neg).args
            assert all(HIDDEN_KEY in c[1]["model_conds"] for c in pos_c + neg_c)
            latent = torch.zeros(1, 16, 2, 16, 32)
            noise = comfy.sample.prepare_noise(latent, 0)
            out[name + "_node"] = comfy.sample.sample(patched, noise, 2, 3.0, "euler", "simple", pos_c, neg_c, latent,
                                                      seed=0, disable_pbar=True)
        out[name] = run_storyboard(model, vae, clip, enc, neg, shots, settings, 128, 64, 16.0, 4, start)[0]
    assert torch.equal(out["zero"], out["plain"])
    assert (out["trained_node"] - out["zero_node"]).abs().max() > 1e-4
    assert (out["trained"] - out["plain"]).abs().max() > 1e-4
