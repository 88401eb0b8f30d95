"""The memory modes (models/memory_modes.py): PackForcing's partitions, top-K selection and RoPE re-packing
(memory/designs/pack_forcing.py), VideoSSM's local window + state (memory/designs/video_ssm.py), the sliding-window baseline; on real
frames through the tiny Wan 2.1 models, in the Storyboard loop and through Apply Memory + the stock sampler."""
from __future__ import annotations

import dataclasses

import pytest
import torch

W, H = 128, 64
SHOTS = "0.8 | a cyclist\n0.8 | a car"  # 2 segments of 16 frames after the history


# ----------------------------------------------------------------------------------------------- re-packing (pure)


def _context(history: int, sink: int, recent: int, rt: int, per_frame: int = 2):
    """A PackForcing context of a ``history``-latent-frame history: sink / mid (compressed, one token per block) /
    recent tokens with their original positions."""
    from framememory.memory.designs import pack_forcing as packing

    t_sink = torch.arange(sink).double() - history
    sink_pos = torch.stack([t_sink.repeat_interleave(per_frame), torch.zeros(sink * per_frame),
                            torch.arange(per_frame).double().repeat(sink)], dim=1)
    n_mid = (history - sink - recent) // rt
    mid_t = -history + sink + torch.arange(n_mid).double() * rt + (rt - 1) / 2
    mid_pos = torch.stack([mid_t, torch.zeros(n_mid), torch.zeros(n_mid)], dim=1)
    t_rec = torch.arange(-recent, 0).double()
    rec_pos = torch.stack([t_rec.repeat_interleave(per_frame), torch.zeros(recent * per_frame),
                           torch.arange(per_frame).double().repeat(recent)], dim=1)
    part = lambda p: (torch.randn(p.shape[0], 8), p)  # noqa: E731
    return packing.assemble(part(sink_pos), part(mid_pos), part(rec_pos))


def test_repack_is_identity_when_nothing_is_dropped():
    from framememory.memory.designs import pack_forcing as packing

    _, pos, blocks = _context(history=14, sink=2, recent=2, rt=2)
    kept = torch.arange(int(blocks.max()) + 1)
    index, packed = packing.repack_positions(pos, blocks, kept, rt=2, recent_frames=2, sink_frames=2)
    assert index.tolist() == list(range(pos.shape[0]))
    torch.testing.assert_close(packed, pos)


def test_repack_closes_gaps_and_stays_in_the_trained_range():
    """60 s of history at K = 4: the context spans exactly S + K * rt + R latent frames, gap-free, ending at -1;
    the selected blocks keep their order and the recent window its positions (the reported 5-10 s jump with a
    RoPE range mismatch cannot happen)."""
    from framememory.memory.designs import pack_forcing as packing

    s, r, rt, k = 2, 2, 2, 4
    _, pos, blocks = _context(history=240, sink=s, recent=r, rt=rt)
    kept = torch.tensor([3, 50, 51, 110])
    index, packed = packing.repack_positions(pos, blocks, kept, rt, r, s)
    lab = blocks[index]
    assert (lab == packing.SINK).sum() == 2 * s and (lab == packing.RECENT).sum() == 2 * r
    assert sorted(set(lab[lab >= 0].tolist())) == kept.tolist()
    t = packed[:, 0]
    assert t.min() == -(s + k * rt + r) and t.max() == -1
    covered = set()
    for b in lab.unique().tolist():  # every token covers its frame(s): rate 1 for sink/recent, rt for a mid block
        c = t[lab == b]
        lo = c.min() - ((rt - 1) / 2 if b >= 0 else 0)
        covered |= {int(lo + i) for i in range(int(c.max() - c.min()) + (rt if b >= 0 else 1))}
    assert covered == set(range(-(s + k * rt + r), 0)), "gaps in the packed context"
    mid_t = [t[lab == b][0].item() for b in kept.tolist()]
    assert mid_t == sorted(mid_t)
    rec = lab == packing.RECENT
    torch.testing.assert_close(packed[rec], pos[blocks == packing.RECENT])
    torch.testing.assert_close(packed[:, 1:], pos[index, 1:])  # h, w untouched


def test_top_k_follows_the_affinity():
    from framememory.memory.designs import pack_forcing as packing

    keys = torch.zeros(1, 6, 4)
    blocks = torch.tensor([-1, 0, 1, 2, 3, -2])
    keys[0, 3] = torch.tensor([1.0, 0, 1.0, 0])  # block 2 aligns with the query in both heads
    keys[0, 1] = torch.tensor([0.5, 0, 0, 0])  # block 0 a little
    q = torch.tensor([[[1.0, 0, 1.0, 0]]])
    scores = packing.block_affinity(q, keys, blocks, heads=2)
    assert scores.argmax().item() == 2 and scores[0] > scores[1]
    assert packing.select_blocks(scores, 2).tolist() == [0, 2]
    assert packing.select_blocks(scores, 0).tolist() == [0, 1, 2, 3]  # 0: all blocks (non-destructive)


def test_mid_partition_excludes_sink_and_recent():
    from framememory.memory.designs import pack_forcing as packing

    pos = torch.tensor([[-7.5, 0, 0], [-5.5, 0, 0], [-3.5, 0, 0], [-1.5, 0, 0]], dtype=torch.float64)
    tokens = torch.arange(4.0)[:, None]
    mid = packing.mid_partition(tokens, pos, history_frames=8, sink=2, recent=2, rt=2)
    assert mid[0].flatten().tolist() == [1.0, 2.0]


# ------------------------------------------------------------------------------------- modes in the Storyboard loop


def _encoder(tiny_wan, **changes):
    from framememory.models.encoding import MemoryEncoder

    enc = tiny_wan[2]
    return MemoryEncoder(dataclasses.replace(enc.cfg, **changes), enc.state_dict, enc.name)


def _ssm_encoder(model, seed: int = 0, out_scale: float = 0.0):
    """A VideoSSM encoder for the tiny DiT with seeded random state modules (``out_scale`` 0: W_o zero, as
    untrained)."""
    from framememory.memory.config import EncoderConfig
    from framememory.memory.designs.video_ssm import StateMemory
    from framememory.models import families
    from framememory.models.encoding import MemoryEncoder

    dm = families.diffusion_model(model)
    cfg = EncoderConfig(dim=dm.dim, memory_type="video_ssm", dit_blocks=len(dm.blocks), ssm_heads=2, ssm_key_dim=16,
                        sink_latent_frames=1, overlap_latent_frames=3)
    net = StateMemory(cfg)
    net.reset_parameters(torch.Generator().manual_seed(seed))
    sd = net.state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    for k in sd:
        if k.endswith("weight") and sd[k].abs().sum() == 0:
            sd[k] = torch.randn(sd[k].shape, generator=g) * out_scale
    return MemoryEncoder(cfg, sd, "ssm-test")


def _run(tiny_wan, encoder, mode: str, steps: int = 2):
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, _, clip, video = tiny_wan
    start, _ = history_from_frames(model, vae, encoder, video[:29], 4, 16.0, W, H, mode=mode)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    frames, final, report = run_storyboard(model, vae, clip, encoder, neg, parse_storyboard(SHOTS),
                                           SamplerSettings(steps, 3.0, "euler", "simple", 1), W, H, 16.0, 4, start,
                                           mode=mode)
    return start, frames, final, report


def test_every_mode_runs_the_storyboard(tiny_wan):
    """Same seed, same history (29 frames = 8 latent frames), every mode: a finite video, its own context size."""
    pack = _encoder(tiny_wan, memory_type="pack_forcing", sink_latent_frames=2, overlap_latent_frames=2, top_k=1)
    runs = {"frame_preservation": _run(tiny_wan, tiny_wan[2], "frame_preservation"),
            "pack_forcing": _run(tiny_wan, pack, "pack_forcing"),
            "video_ssm": _run(tiny_wan, _ssm_encoder(tiny_wan[0], out_scale=0.5), "video_ssm"),
            "sliding_window": _run(tiny_wan, tiny_wan[2], "sliding_window"),
            "off": _run(tiny_wan, tiny_wan[2], "off")}
    per_frame = (H // 16) * (W // 16)  # uncompressed tokens per latent frame
    tokens = {m: [s["memory_tokens"] for s in r[3]["segments"]] for m, r in runs.items()}
    assert tokens["sliding_window"] == [3 * per_frame] * 2
    assert tokens["video_ssm"] == [4 * per_frame] * 2  # sink 1 + recent 3
    assert tokens["off"] == [0, 0]
    # PackForcing carries sink + recent uncompressed + the mid blocks (selection happens per forward)
    assert tokens["pack_forcing"][0] > 4 * per_frame
    for mode, (_, frames, final, report) in runs.items():
        assert report["memory_mode"] == mode and frames.shape == (32, H, W, 3) and torch.isfinite(frames).all(), mode
    videos = [r[1] for r in runs.values()]
    for i in range(len(videos)):
        for j in range(i + 1, len(videos)):
            assert (videos[i] - videos[j]).abs().mean() > 1e-4, f"modes {list(runs)[i]} and {list(runs)[j]} agree"
    # VideoSSM and sliding window encode nothing with the Fig. 2 encoder
    assert runs["video_ssm"][2].history.num_tokens == 0 and runs["sliding_window"][2].history.num_tokens == 0


def test_pack_forcing_selects_top_k_blocks_per_forward(tiny_wan):
    """The wrapper keeps sink + K mid blocks + recent and re-packs them; K = all keeps the original positions."""
    from framememory.models import families
    from framememory.models.families import wan21 as wan
    from framememory.models.history_writer import history_from_frames

    model, vae, _, _, video = tiny_wan
    pack = _encoder(tiny_wan, memory_type="pack_forcing", sink_latent_frames=2, overlap_latent_frames=2, top_k=1)
    mem, _ = history_from_frames(model, vae, pack, video[:29], 4, 16.0, W, H, mode="pack_forcing")
    inp = mem.conds(model)
    blocks, info = inp.extra["memory_blocks"], inp.extra["memory_pack"]
    assert info.tolist() == [1, 2, 2, 2] and int(blocks.max()) == 1  # 8 latent frames: 2 mid blocks of 2
    dm = families.diffusion_model(model)
    x = torch.randn(2, 16, 4, H // 8, W // 8)
    ids = inp.positions[None]
    tok, new_ids = wan.pack_context(dm, x, inp.tokens[None].expand(2, -1, -1), ids, blocks, info)
    per_block = int((blocks == 0).sum())
    assert tok.shape[1] == inp.count - per_block and new_ids.shape[1] == tok.shape[1]
    assert inp.attended == tok.shape[1]  # the report counts what a forward attends to, not what is carried
    assert new_ids[0, :, 0].min() == -(2 + 1 * 2 + 2)  # S + K rt + R: packed
    all_k = info.clone()
    all_k[0] = 0
    tok_all, ids_all = wan.pack_context(dm, x, inp.tokens[None], ids, blocks, all_k)
    torch.testing.assert_close(ids_all, ids)  # the 8 frames are contiguous already: nothing moves
    assert tok_all.shape[1] == inp.count


def test_video_ssm_state_is_incremental_and_used(tiny_wan):
    """The state absorbs only frames that left the window since the last segment and equals absorbing them at once;
    trained read-out modules change the video, zero ones (untrained) give the local window alone."""
    from framememory.models.memory_modes import latent_range
    from framememory.models import families

    model = tiny_wan[0]
    enc = _ssm_encoder(model, out_scale=0.5)
    start, on, final, _ = _run(tiny_wan, enc, "video_ssm")
    cached_end, cached = final.history.states[0]
    # at the last segment's sampling: everything but the 3 recent frames of the history before it ...
    assert cached_end == final.history.latent_frames - 4 - 3
    net = enc.parts[0].state_network(model)
    lat = latent_range(model, final.history)(1, cached_end)  # ... after the 1 sink frame
    emb = families.patch_embed(model, lat).flatten(2).transpose(1, 2)
    with torch.no_grad():
        whole = net.absorb(emb)
    torch.testing.assert_close(cached, whole, rtol=1e-4, atol=1e-5)
    _, zero, _, _ = _run(tiny_wan, _ssm_encoder(model, out_scale=0.0), "video_ssm")
    assert (on - zero).abs().mean() > 1e-4


def test_mode_errors_name_the_fix(tiny_wan):
    from framememory.models.memory_modes import mode_config

    model = tiny_wan[0]
    with pytest.raises(ValueError, match="set memory_mode to video_ssm"):
        mode_config(_ssm_encoder(model), model, "frame_preservation")
    with pytest.raises(ValueError, match="no VideoSSM state modules"):
        mode_config(tiny_wan[2], model, "video_ssm")
    with pytest.raises(ValueError, match="memory_mode must be one of"):
        mode_config(tiny_wan[2], model, "packforcing")
    cfg = mode_config(tiny_wan[2], model, "pack_forcing")  # a Frame Preservation encoder runs PackForcing's defaults
    assert (cfg.memory_type, cfg.sink_latent_frames, cfg.overlap_latent_frames, cfg.top_k) == ("pack_forcing", 2, 2, 16)


def test_apply_memory_with_stock_sampler(tiny_wan):
    """Apply Memory + comfy.sample.sample (what the stock KSampler calls) in PackForcing and VideoSSM modes: the
    memory changes the sample."""
    import comfy.sample

    from framememory.models.history_writer import history_from_frames

    model, vae, _, clip, video = tiny_wan
    pos = clip.encode_from_tokens_scheduled(clip.tokenize("a cyclist"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    latent = torch.zeros(1, 16, 4, H // 8, W // 8)
    noise = comfy.sample.prepare_noise(latent, 3)

    def sample(m, p, n):
        return comfy.sample.sample(m, noise, 2, 3.0, "euler", "simple", p, n, latent, seed=3, disable_pbar=True)

    plain = sample(model, pos, neg)
    pack = _encoder(tiny_wan, memory_type="pack_forcing", sink_latent_frames=2, overlap_latent_frames=2, top_k=1)
    for enc, mode in ((pack, "pack_forcing"), (_ssm_encoder(model, out_scale=0.5), "video_ssm")):
        mem, _ = history_from_frames(model, vae, enc, video[:29], 4, 16.0, W, H, mode=mode)
        out = sample(*mem.apply(model, pos, neg))
        assert torch.isfinite(out).all() and (out - plain).abs().mean() > 1e-4, mode
