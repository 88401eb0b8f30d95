"""The storyboard loop in-process with tiny models of the real classes, starting from a real clip."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from framememory.memory.history import PartKey


def test_storyboard_from_real_clip(tiny_wan):
    from framememory.memory.grid import memory_grid
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, video = tiny_wan
    # one VAE stream: 13 frames (the causal first latent is one frame), then 16; 30 = 1 + 13 + 16
    start, dropped = history_from_frames(model, vae, encoder, video, 4, 16.0, 256, 128)
    assert dropped == 1 and start.history.num_frames == 29 and len(start.history.segments) == 2
    assert [(s.num_frames, s.stream_start) for s in start.history.segments] == [(13, True), (16, False)]
    per_segment = int(np.prod(memory_grid((4, 16, 32), encoder.cfg)))  # 2 x 2 x 4 = 16 at 4x4x2
    assert start.history.num_tokens == 2 * per_segment
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    shots = parse_storyboard("0.8 | a cyclist\n0.8 | a car")
    frames, final, report = run_storyboard(model, vae, clip, encoder, neg, shots, SamplerSettings(2, 3.0, "euler", "simple", 1),
                                           256, 128, 16.0, 4, start)
    # continuing the history's stream: every segment is 16 frames (1.6 s at 16 fps -> 2 segments)
    assert frames.shape == (32, 128, 256, 3) and torch.isfinite(frames).all()
    assert 0 <= frames.min() and frames.max() <= 1
    segs = report["segments"]
    assert [s["shot"] for s in segs] == [0, 1]  # middles at 0.5 s and 1.5 s
    assert [s["frames"] for s in segs] == [16, 16]
    for k, s in enumerate(segs):
        assert s["start_frame"] == 29 + 16 * k == s["history_frames_total"] == s["history_frames_covered"]
        assert s["memory_tokens"] == (2 + k) * per_segment
    assert len(report["seams"]["per_boundary"]) == 1 and report["decode"].startswith("exact")
    assert final.history.num_tokens == 4 * per_segment and final.history.num_frames == 61
    assert [s.stream_start for s in final.history.segments] == [True, False, False, False]
    assert start.history.num_frames == 29  # the input memory is not mutated


def test_encoder_width_mismatch_is_a_clear_error(tiny_wan):
    from framememory.memory.config import EncoderConfig
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.history_writer import history_from_frames

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
    from framememory.models.history_writer import history_from_frames

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
    from framememory.models.history_writer import history_from_frames

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


# ---- Wan 2.2 A14B: a high-noise and a low-noise expert (two Wan 2.1-architecture DiTs) -----------------------
W, H = 128, 64  # small frames: the tiny VAE dominates the run time
PER_SEGMENT = 4  # memory tokens of one 4-latent-frame segment at 128x64 and 4x4x2: 2 x 1 x 2


@pytest.fixture(scope="module")
def low_noise_expert(comfy, tmp_path_factory):
    """A second tiny Wan 2.1-architecture DiT with other weights (its own patch embedding), via the stock loader."""
    import comfy.sd
    from framememory.demo.make_tiny_models import write_family

    paths = write_family(str(tmp_path_factory.mktemp("low_noise")), seed=7, vae=False)
    return comfy.sd.load_diffusion_model(paths["dit"])


def _recording(model, calls: list):
    """A clone of ``model`` whose every diffusion-model call appends ``(timestep, memory_tokens [B, M, D])`` to
    ``calls`` (an outer DIFFUSION_MODEL wrapper: it sees the memory before the adapter's wrapper takes it out)."""
    import comfy.patcher_extension

    def record(executor, x, timestep, *args, **kwargs):
        calls.append((float(timestep.flatten()[0]), kwargs.get("memory_tokens")))
        return executor(x, timestep, *args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_recorder", record)
    return clone


def _timesteps(model, steps: int) -> list[float]:
    """The timesteps ComfyUI's Wan gets at each step of the 'simple' schedule (euler: one call per step)."""
    import comfy.samplers

    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", steps)
    return [float(sampling.timestep(s)) for s in sigmas[:-1]]


def _ksampler_advanced(model, memory, expert, positive, negative, latent, start, end, seed, steps=4, vae=None):
    """One Apply Memory node (``expert`` 0: high noise / only model, 1: low noise) into one stock KSamplerAdvanced:
    add_noise / return_with_leftover_noise enabled for the first expert (start 0), disabled for the second
    (end_at_step 10000)."""
    import comfy.sample
    from framememory.nodes.memory_nodes import EXPERTS, ApplyMemory

    patched, pos_c, neg_c = ApplyMemory.execute(model, memory, positive, negative, EXPERTS[expert], vae).args
    first = start == 0
    noise = comfy.sample.prepare_noise(latent, seed) if first else torch.zeros(latent.shape)
    return comfy.sample.sample(patched, noise, steps, 3.0, "euler", "simple", pos_c, neg_c, latent,
                               disable_noise=not first, start_step=start, last_step=end, force_full_denoise=not first,
                               seed=seed)


def test_a14b_pair_each_expert_samples_its_steps_with_its_own_memory(tiny_wan, low_noise_expert, monkeypatch):
    """Through the Storyboard node: the high-noise expert runs steps 0-1 of 4, the low-noise expert steps 2-3
    (switch_step 0 = half), each attending to memory tokens of its own patch embedding; the segment equals two
    stock KSamplerAdvanced calls; both experts encode each segment once."""
    from framememory.models import families
    from framememory.models.history_writer import history_from_frames
    from framememory.nodes.storyboard_node import Storyboard

    model, vae, encoder, clip, video = tiny_wan
    calls_high, calls_low = [], []
    high, low = _recording(model, calls_high), _recording(low_noise_expert, calls_low)
    embedded = []  # the DiT whose patch embedding made each LR branch
    patch_embed = families.patch_embed
    monkeypatch.setattr(families, "patch_embed",
                        lambda m, latent: embedded.append(families.diffusion_model(m)) or patch_embed(m, latent))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    frames, final, text = Storyboard.execute(high, vae, clip, encoder, neg, "0.8 | a cyclist", W, H, 16.0, 4, 1, 4, 3.0,
                                             "euler", "simple", False, start_images=video[:13],
                                             model_low_noise=low).args
    report = json.loads(text)
    assert frames.shape == (16, H, W, 3) and len(report["segments"]) == 1  # continues the clip's stream: 16 frames
    assert report["experts"] == [{"expert": "high_noise", "steps": [0, 2]}, {"expert": "low_noise", "steps": [2, 4]}]

    # each expert ran exactly its steps (CFG may batch cond and uncond into one call per step)
    t_high, t_low = _timesteps(model, 4), _timesteps(low_noise_expert, 4)
    assert sorted({t for t, _ in calls_high}, reverse=True) == pytest.approx(t_high[:2])
    assert sorted({t for t, _ in calls_low}, reverse=True) == pytest.approx(t_low[2:])

    # the memory each attended to: the starting clip's tokens through its own patch embedding
    monkeypatch.setattr(families, "patch_embed", patch_embed)
    start, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H, model_low_noise=low_noise_expert)
    own_high, own_low = start.tokens(model)[0], start.tokens(low_noise_expert, 1)[0]
    alone, _ = history_from_frames(low_noise_expert, vae, encoder, video[:13], 4, 16.0, W, H)
    assert torch.equal(own_low, alone.tokens(low_noise_expert)[0])  # as if it were the only model
    assert own_high.shape == own_low.shape == (PER_SEGMENT, 128) and not torch.allclose(own_high, own_low)
    for calls, own in ((calls_high, own_high), (calls_low, own_low)):
        assert calls and all(torch.equal(m[i], own) for _, m in calls for i in range(m.shape[0]))

    # the segment is the stock two-KSamplerAdvanced chain with the same split
    pos = clip.encode_from_tokens_scheduled(clip.tokenize("a cyclist"))
    latent = torch.zeros([1, 16, 4, H // 8, W // 8])
    x = _ksampler_advanced(model, start, 0, pos, neg, latent, 0, 2, seed=1)
    x = _ksampler_advanced(low_noise_expert, start, 1, pos, neg, x, 2, 10000, seed=1)
    assert torch.equal(final.history.segments[-1].latent, x[0])
    alone_high = _ksampler_advanced(model, start, 0, pos, neg, latent, 0, 10000, seed=1)
    assert not torch.allclose(alone_high, x)  # the low-noise expert's steps count

    # incremental encoding for both: the clip, then the new segment, each once per expert (last expert first)
    dm_high, dm_low = families.diffusion_model(model), families.diffusion_model(low_noise_expert)
    assert [d is dm_high for d in embedded] == [False, True, False, True] and embedded[0] is dm_low
    assert set(final.history.keys) == {PartKey(), PartKey(0, 1)} and all(s.frames is None for s in final.history.segments)
    assert report["final_memory_tokens"] == 2 * PER_SEGMENT and final.history.num_tokens == 2 * 2 * PER_SEGMENT
    assert final.tokens(low_noise_expert, 1)[0].shape == final.tokens(model)[0].shape == (2 * PER_SEGMENT, 128)


def test_apply_memory_low_noise_expert_continues_a_one_model_memory(tiny_wan, low_noise_expert):
    """A memory made with one model (pixels dropped) continued by the stock A14B graph: two Apply Memory nodes
    (the second with expert 'low noise') into two KSamplerAdvanced give exactly the segment the Storyboard node makes
    from the same memory with the same pair; the low-noise Apply Memory needs no VAE (its tokens come from the kept
    latents and LR latents), the optional VAE changes nothing; the input memory is not changed."""
    from framememory.models.history_writer import history_from_frames
    from framememory.nodes.memory_nodes import EXPERTS, ApplyMemory
    from framememory.nodes.storyboard_node import Storyboard

    model, vae, encoder, clip, video = tiny_wan
    start, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H)
    assert start.history.keys == [PartKey()] and all(s.frames is None for s in start.history.segments)
    pos = clip.encode_from_tokens_scheduled(clip.tokenize("a cyclist"))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))

    with pytest.raises(ValueError, match="expert must be one of"):
        ApplyMemory.execute(model, start, pos, neg, "medium noise")
    _, low_pos, _ = ApplyMemory.execute(low_noise_expert, start, pos, neg, EXPERTS[1]).args  # no VAE connected
    _, low_pos_vae, _ = ApplyMemory.execute(low_noise_expert, start, pos, neg, EXPERTS[1], vae).args
    conds = [p[0][1]["model_conds"]["memory_tokens"].cond for p in (low_pos, low_pos_vae)]
    assert conds[0].shape == (1, PER_SEGMENT, 128) and torch.equal(*conds)

    latent = torch.zeros([1, 16, 4, H // 8, W // 8])
    x = _ksampler_advanced(model, start, 0, pos, neg, latent, 0, 2, seed=1)
    x = _ksampler_advanced(low_noise_expert, start, 1, pos, neg, x, 2, 10000, seed=1)
    assert start.history.keys == [PartKey()]  # the input memory got no tokens of the low-noise expert

    _, final, _ = Storyboard.execute(model, vae, clip, encoder, neg, "0.8 | a cyclist", W, H, 16.0, 4, 1, 4, 3.0,
                                     "euler", "simple", False, memory=start, model_low_noise=low_noise_expert).args
    assert torch.equal(final.history.segments[-1].latent, x[0])
    # the low-noise expert's tokens come from its own patch embedding: not the high-noise expert's
    low_tokens = start.for_expert(low_noise_expert, 1).tokens(low_noise_expert, 1)[0]
    assert low_tokens.shape == start.tokens(model)[0].shape == (PER_SEGMENT, 128)
    assert not torch.allclose(low_tokens, start.tokens(model)[0])
    alone = _ksampler_advanced(low_noise_expert, start, 0, pos, neg, latent, 0, 2, seed=1)  # high-noise tokens
    assert not torch.equal(alone, _ksampler_advanced(low_noise_expert, start, 1, pos, neg, latent, 0, 2, seed=1))


def test_one_model_is_the_plain_ksampler_call(tiny_wan):
    """Without model_low_noise the segment is exactly the stock KSampler call (switch_step is ignored), every step
    on the one model, and the memory keeps only the first expert's keys."""
    import comfy.sample
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.conds import attach_memory
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings, memory_model
    from framememory.models.storyboard import run_storyboard
    from framememory.nodes.storyboard_node import Storyboard

    model, vae, encoder, clip, video = tiny_wan
    inputs = {i.id: i for i in Storyboard.define_schema().inputs}
    # widgets of saved UI workflows keep their slots: new inputs go last
    names = list(inputs)
    later = names[names.index("model_low_noise"):]
    assert later == ["model_low_noise", "switch_step", "memory_mode", "save_path", "resume", "colour_correction",
                     "colour_strength"]
    assert all(inputs[k].optional for k in later)  # old API workflows still validate
    calls = []
    recorded = _recording(model, calls)
    start, _ = history_from_frames(recorded, vae, encoder, video[:13], 4, 16.0, W, H)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    settings = SamplerSettings(3, 3.0, "euler", "simple", 1, switch_step=1)
    _, final, report = run_storyboard(recorded, vae, clip, encoder, neg, parse_storyboard("0.8 | a cyclist"), settings,
                                      W, H, 16.0, 4, start, model_low_noise=None)
    assert "experts" not in report and final.history.keys == [PartKey()]
    assert sorted({t for t, _ in calls}, reverse=True) == pytest.approx(_timesteps(model, 3))

    inp = start.conds(model)
    tokens, positions, hidden = inp.tokens, inp.positions, inp.hidden
    pos = attach_memory(clip.encode_from_tokens_scheduled(clip.tokenize("a cyclist")), tokens, positions, hidden)
    latent = torch.zeros([1, 16, 4, H // 8, W // 8])
    expected = comfy.sample.sample(memory_model(model, encoder), comfy.sample.prepare_noise(latent, 1), 3, 3.0, "euler",
                                   "simple", pos, attach_memory(neg, tokens, positions, hidden), latent, denoise=1.0, seed=1)
    assert torch.equal(final.history.segments[-1].latent, expected[0])


def test_history_of_one_model_is_encoded_for_the_low_noise_expert(tiny_wan, low_noise_expert):
    """A memory encoded for one model (pixels dropped) continued with a pair: its spans are encoded through the
    low-noise expert's patch embedding from the kept latents and LR latents, with no VAE and no pixels; the first
    expert's tokens are kept. The kept LR latent is the VAE of lr_clip of the segment's frames (a fresh stream)."""
    from framememory.memory.encoder import lr_clip
    from framememory.memory.frames import fit_frames, to_uint8
    from framememory.memory.history import HistoryBuffer
    from framememory.models.encoding import encode_segment
    from framememory.models.experts import encode_pending_experts
    from framememory.models.history_writer import history_from_frames

    model, vae, encoder, _, video = tiny_wan
    mem, _ = history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H)
    seg = mem.history.segments[0]
    assert seg.frames is None and mem.history.keys == [PartKey()] and list(seg.lr_latents) == [0]
    pixels = to_uint8(fit_frames(video[:13], W, H)).float() / 255.0
    lr = vae.encode(lr_clip(pixels, encoder.cfg, stream_start=True))[0].float()  # [C, Tm, h', w']
    assert seg.lr_latents[0].shape == (16, 2, 2, 4)  # Tm = 2 (4 latent frames at rt = 2) on the 1x2 grid x 2x2 patch
    torch.testing.assert_close(seg.lr_latents[0], lr, rtol=0, atol=1e-5)
    history = mem.history.copy()
    assert encode_pending_experts([model, low_noise_expert], None, encoder, history) == 1  # no VAE needed
    assert history.segments[0].frames is None and history.segments[0].encoded[PartKey()] is seg.encoded[PartKey()]
    expected = encode_segment(low_noise_expert, encoder, seg.latent, seg.lr_latents[0])
    got = history.segments[0].encoded[PartKey(0, 1)]
    assert len(got) == len(expected) == 2 and all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not torch.equal(got[0], seg.encoded[PartKey()][0])  # its own patch embedding
    assert encode_pending_experts([model, low_noise_expert], None, encoder, history) == 0  # nothing left to encode
    assert mem.history.keys == [PartKey()]  # the input memory is not changed

    fresh = HistoryBuffer()  # a span without an LR latent and no LR stream yet: the VAE is needed
    fresh.append(seg.latent, to_uint8(fit_frames(video[:13], W, H)))
    with pytest.raises(ValueError, match="needs the VAE"):
        encode_pending_experts([model], None, encoder, fresh)


def test_experts_must_fit_each_other_and_the_encoder(tiny_wan, tmp_path):
    import comfy.sd
    from framememory.demo.make_tiny_models import write_family
    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.models.experts import expert_models
    from framememory.models.history_writer import history_from_frames

    model, vae, encoder, _, video = tiny_wan
    wan22 = comfy.sd.load_diffusion_model(write_family(str(tmp_path), "wan22", vae=False)["dit"])
    with pytest.raises(ValueError, match="model_low_noise is a wan22 model but model is wan21"):
        expert_models(model, wan22)
    wide = comfy.sd.load_diffusion_model_state_dict(tiny_wan21_dit(3, dim=256, ffn_dim=512, num_heads=2).state_dict())
    with pytest.raises(ValueError, match="dim 128 \\(model: 256\\)"):  # the trained encoder is for width 128
        history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H, model_low_noise=wide)
    assert expert_models(model) == [model]
