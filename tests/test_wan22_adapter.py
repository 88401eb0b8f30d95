"""Wan 2.2 TI2V 5B (``models/families/wan22.py``) and Wan 2.1 I2V on tiny ComfyUI WanModels (CPU): the shared family
tests (:class:`family_contract.FamilyContract`) for Wan 2.2, and its own: memory tokens at timestep 0 where the model
has per-token timesteps, the I2V patch embedding of memory latents, family detection through the stock loader, the
stock sampler with per-frame timesteps, and the storyboard loop on a real clip with the tiny Wan 2.2 models."""
from __future__ import annotations

import math

import av
import pytest
import torch
from family_contract import FamilyContract


class TestWan22Family(FamilyContract):
    family = "wan22"
    display_name = "Wan 2.2 TI2V 5B"

    @staticmethod
    def make_dit():
        from framememory.demo.tiny_wan22 import tiny_wan22_dit

        return tiny_wan22_dit(seed=0)


@pytest.fixture(scope="module")
def dm22(comfy):
    from framememory.demo.tiny_wan22 import tiny_wan22_dit

    return tiny_wan22_dit(seed=0)


@pytest.fixture(scope="module")
def dm_i2v(comfy):
    from framememory.demo.tiny_wan22 import tiny_wan21_i2v_dit

    return tiny_wan21_i2v_dit(seed=4)


def _grid_positions2(t, h, w, t0):
    """Twice the RoPE positions of a full-resolution token grid starting at latent frame ``t0``: [1, t*h*w, 3]."""
    ids = torch.stack(torch.meshgrid(torch.arange(t) + float(t0), torch.arange(float(h)), torch.arange(float(w)),
                                     indexing="ij"), -1)
    return (ids.reshape(1, -1, 3) * 2).long()


def _save(dm, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in dm.state_dict().items()}, str(path))
    return str(path)


@pytest.mark.parametrize("segment_timesteps", ["shared", "per_frame"])
def test_wan22_memory_of_the_past_equals_past_frames_at_timestep_0(dm22, segment_timesteps):
    """Memory = the first 3 latent frames, uncompressed, at their original (negative) times. With per-token
    timesteps memory tokens get timestep 0, so the output for the last 3 frames must equal that of the whole
    6-frame video run with timesteps [0, 0, 0 | segment], which Wan 2.2's per-token timestep path computes
    directly. The segment has one timestep ("shared", T2V) or one per frame with a clean first frame
    ("per_frame", as Wan22ImageToVideoLatent's noise_mask gives)."""
    from framememory.models.families import install_memory
    from framememory.models.families.wan22 import patch_embed

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, 6, 8, 12, generator=g)
    context = torch.randn(1, 5, 4096, generator=g) * 0.1
    seg_t = torch.tensor([[500.0]]) if segment_timesteps == "shared" else torch.tensor([[0.0, 500.0, 500.0]])
    whole_t = torch.cat([torch.zeros(1, 3), seg_t.expand(1, 3)], dim=1)  # [1, 6]: per latent frame
    with torch.no_grad():
        whole = dm22(x, whole_t, context)[:, :, 3:]
        past = patch_embed(dm22, x[:, :, :3]).flatten(2).transpose(1, 2)  # [1, 3*4*6, D]
        t = seg_t[:, 0] if segment_timesteps == "shared" else seg_t  # [1] or [1, 3]
        out = dm22(x[:, :, 3:], t, context, transformer_options=install_memory(dm22),
                   memory_tokens=past, memory_positions2=_grid_positions2(3, 4, 6, -3))
        plain = dm22(x[:, :, 3:], t, context)
    assert out.shape == plain.shape == (1, 48, 3, 8, 12)
    torch.testing.assert_close(out, whole, atol=2e-4, rtol=1e-3)
    assert (out - plain).abs().max() > 1e-3


def test_memory_vec_gives_video_rows_their_timestep_and_memory_rows_timestep_0(dm22):
    """The extended modulation, expanded by the model's own repeat_e, is per token exactly: video tokens keep the
    rows repeat_e gives them, memory tokens get the timestep-0 modulation; also when M shares no factor with the
    tokens per row (r = 1), with a single row, and when the rows do not divide the tokens (repeat_e's +1 case)."""
    from comfy.ldm.wan.model import repeat_e, sinusoidal_embedding_1d

    from framememory.models.families.wan21 import memory_vec

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        zero = dm22.time_projection(dm22.time_embedding(sinusoidal_embedding_1d(dm22.freq_dim, torch.zeros(1))))
        for rows, n, m in ((3, 72, 5), (3, 72, 48), (1, 72, 7), (4, 72, 12), (5, 72, 6)):
            vec = torch.randn(2, rows, 6, dm22.dim, generator=g)
            ext = memory_vec(dm22, vec, n, m)
            per_token = repeat_e(ext, torch.empty(1, n + m, 0))
            assert per_token.shape == (2, n + m, 6, dm22.dim)
            torch.testing.assert_close(per_token[:, :n], repeat_e(vec, torch.empty(1, n, 0)).expand(-1, n, -1, -1))
            torch.testing.assert_close(per_token[:, n:], zero.reshape(1, 1, 6, -1).expand(2, m, 6, -1))
            if n % rows == 0:
                assert ext.shape[1] == (n + m) // math.gcd(n // rows, m)


def test_family_detection_through_the_stock_loader(comfy, dm22, dm_i2v, tmp_path):
    """UNETLoader's path (comfy.sd.load_diffusion_model) gives WAN22 for the 48-channel 5B shape and WAN21 for
    T2V / I2V; each lands on its family; a Fun-Control-shaped model (i2v, in_dim 48, 16 out) on none."""
    import comfy.model_base
    import comfy.sd

    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.models import families
    from framememory.models.families import wan21, wan22

    m22 = comfy.sd.load_diffusion_model(_save(dm22, tmp_path / "wan22.safetensors"))
    m21 = comfy.sd.load_diffusion_model(_save(tiny_wan21_dit(seed=0), tmp_path / "wan21.safetensors"))
    mi2v = comfy.sd.load_diffusion_model(_save(dm_i2v, tmp_path / "i2v.safetensors"))
    assert type(m22.model) is comfy.model_base.WAN22 and m22.model.latent_format.latent_channels == 48
    assert type(m21.model) is comfy.model_base.WAN21 and not m21.model.image_to_video
    assert type(mi2v.model) is comfy.model_base.WAN21 and mi2v.model.image_to_video
    assert families.family_for(m22) is wan22 and families.family_for(m21) is wan21 and families.family_for(mi2v) is wan21
    assert (wan22.FAMILY, wan22.LATENT_CHANNELS, wan22.VAE_STRIDE, wan22.PATCH_SIZE) == ("wan22", 48, (4, 16, 16), (1, 2, 2))
    assert families.model_width(m22) == 128
    fun_control = tiny_wan21_dit(seed=0, model_type="i2v", in_dim=48)
    assert not any(f.matches(fun_control) for f in families.FAMILIES.values())


def test_wan22_stock_sampler_with_per_frame_timesteps(comfy, dm22, tmp_path):
    """comfy.sample.sample (stock KSampler path, CFG > 1) on the loader's WAN22 model with a noise_mask
    (Wan22ImageToVideoLatent: per-frame timesteps, clean first frame): per-frame timesteps reach the DiT and the
    memory path samples and changes the result (the plain CFG case: :class:`TestWan22Family`)."""
    import comfy.patcher_extension
    import comfy.sample
    import comfy.sd

    from framememory.models.conds import attach_memory
    from framememory.models.families import install_memory

    model = comfy.sd.load_diffusion_model(_save(dm22, tmp_path / "wan22.safetensors"))
    patched = install_memory(model)
    seen = []

    def spy(executor, *args, **kwargs):
        seen.append(args[1].ndim)
        return executor(*args, **kwargs)

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "spy", spy)
    g = torch.Generator().manual_seed(3)
    pos_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {}]]
    neg_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {}]]
    latent = torch.zeros(1, 48, 3, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 7)
    tokens = torch.randn(8, dm22.dim, generator=g) * 0.5
    positions = torch.tensor([[-1.5 - 2 * (i // 4), 1.5, 0.5 + (i % 4)] for i in range(8)])
    mem_pos, mem_neg = attach_memory(pos_c, tokens, positions), attach_memory(neg_c, tokens, positions)

    def run(m, p, n, **kw):
        return comfy.sample.sample(m, noise, 3, 4.0, "euler", "simple", p, n, latent, seed=7, disable_pbar=True, **kw)

    mask = torch.ones(1, 1, 3, 8, 8)
    mask[:, :, :1] = 0.0  # first latent frame clean (timestep 0), as Wan22ImageToVideoLatent
    masked = run(patched, mem_pos, mem_neg, noise_mask=mask)
    masked_plain = run(model, pos_c, neg_c, noise_mask=mask)
    assert seen and all(ndim == 2 for ndim in seen)  # per-frame timesteps [B, T] reached the DiT
    assert torch.isfinite(masked).all() and (masked - masked_plain).abs().max() > 1e-3


@pytest.mark.parametrize("memory_timestep", ["zero", "shared"])
def test_i2v_memory_is_a_clean_known_frame(dm_i2v, memory_timestep):
    """Wan 2.1 I2V (in_dim 36): the LR branch feeds memory latents as [latent | mask 1 | latent], the channels of a
    clean known frame. Memory = the first 3 latent frames so fed, at their past times: equals the whole video
    whose first 3 frames have those channels, with CLIP-vision features; the first 3 frames at timestep 0 (the
    default rule, per-frame timesteps of the whole video) or at the shared timestep (the "shared" ablation)."""
    from framememory.models import families
    from framememory.models.families import install_memory, wan21 as wan

    g = torch.Generator().manual_seed(5)
    latent = torch.randn(1, 16, 6, 8, 12, generator=g)
    cond = torch.randn(1, 20, 6, 8, 12, generator=g)  # mask + image channels of the generated frames
    x = torch.cat([latent, cond], dim=1)
    x[:, 16:, :3] = wan.model_input(dm_i2v, latent[:, :, :3])[:, 16:]
    context = torch.randn(1, 5, 4096, generator=g) * 0.1
    clip_fea = torch.randn(1, 257, 1280, generator=g) * 0.1
    t = torch.tensor([600.0])
    whole_t = torch.tensor([[0.0, 0.0, 0.0, 600.0, 600.0, 600.0]]) if memory_timestep == "zero" else t
    emb = wan.patch_embed(dm_i2v, latent[:, :, :3])
    assert emb.shape == (1, 128, 3, 4, 6) and wan.model_input(dm_i2v, latent).shape[1] == 36
    assert wan.matches(dm_i2v) and not any(f.matches(dm_i2v) for f in families.FAMILIES.values() if f is not wan)
    with torch.no_grad():
        whole = dm_i2v(x, whole_t, context, clip_fea=clip_fea)[:, :, 3:]
        out = dm_i2v(x[:, :, 3:], t, context, clip_fea=clip_fea,
                     transformer_options=install_memory(dm_i2v, memory_timestep == "zero"),
                     memory_tokens=emb.flatten(2).transpose(1, 2), memory_positions2=_grid_positions2(3, 4, 6, -3))
        plain = dm_i2v(x[:, :, 3:], t, context, clip_fea=clip_fea)
    assert out.shape == (1, 16, 3, 8, 12)
    torch.testing.assert_close(out, whole, atol=2e-4, rtol=1e-3)
    assert (out - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="48-channel latent"):
        wan.model_input(dm_i2v, torch.zeros(1, 48, 1, 2, 2))


def test_wan22_has_no_shared_timestep_ablation(comfy, dm22, tmp_path):
    """Wan 2.2 TI2V 5B memory tokens always get timestep 0: an encoder config with memory_timestep "shared" is a clear
    error (install_memory(memory_t0=False): :meth:`FamilyContract.test_memory_timestep_rules`)."""
    import comfy.sd

    from framememory.memory.config import EncoderConfig
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.segment_sampler import memory_model

    model = comfy.sd.load_diffusion_model(_save(dm22, tmp_path / "wan22.safetensors"))
    shared = MemoryEncoder(EncoderConfig(family="wan22", dim=0, memory_timestep="shared"), None, "shared")
    with pytest.raises(ValueError, match="only Wan 2.1 supports; wan22 needs 'zero'"):
        memory_model(model, shared)
    assert memory_model(model, MemoryEncoder(EncoderConfig(family="wan22", dim=0), None, "zero")) is not model


def test_i2v_stock_sampler_with_start_image_and_memory(comfy, dm_i2v, tmp_path):
    """The loader's I2V model (WAN21, image_to_video) samples with memory and a start image as WanImageToVideo
    passes it (concat_latent_image + concat_mask, so the DiT gets 36 channels), CFG > 1."""
    import comfy.sample
    import comfy.sd

    from framememory.models.conds import attach_memory
    from framememory.models.families import install_memory

    model = comfy.sd.load_diffusion_model(_save(dm_i2v, tmp_path / "i2v.safetensors"))
    g = torch.Generator().manual_seed(6)
    image = {"concat_latent_image": torch.randn(1, 16, 2, 8, 8, generator=g), "concat_mask": torch.ones(1, 1, 2, 8, 8)}
    image["concat_mask"][:, :, :1] = 0.0  # first latent frame known
    pos = [[torch.randn(1, 5, 4096, generator=g) * 0.1, dict(image)]]
    neg = [[torch.randn(1, 5, 4096, generator=g) * 0.1, dict(image)]]
    tokens = torch.randn(8, dm_i2v.dim, generator=g) * 0.5
    positions = torch.tensor([[-1.5 - 2 * (i // 4), 1.5, 0.5 + (i % 4)] for i in range(8)])
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 2)

    def run(p, n):
        return comfy.sample.sample(install_memory(model), noise, 2, 3.0, "euler", "simple", p, n, latent, seed=2,
                                   disable_pbar=True)

    plain = run(pos, neg)
    withmem = run(attach_memory(pos, tokens, positions), attach_memory(neg, tokens, positions))
    assert torch.isfinite(withmem).all() and (withmem - plain).abs().max() > 1e-3


@pytest.fixture(scope="module")
def wan22_files(comfy, tmp_path_factory):
    from framememory.demo.make_tiny_models import write_family

    return write_family(str(tmp_path_factory.mktemp("wan22")), "wan22", vae=False)


def test_storyboard_wan22_from_real_clip(comfy, wan22_files, media_dir):
    """history_from_frames + run_storyboard, unchanged, on 14 real frames with the tiny Wan 2.2 DiT (stock loader),
    the tiny Wan 2.2 VAE (ComfyUI's VAE class, 48 channels, 4x16x16) and a Wan 2.2 memory encoder file. Segments
    of 2 latent frames (one stream: 5 video frames, then 8) keep the CPU time down. The Wan 2.2 VAE is not the
    cached WanVAE: the video stream runs in context mode."""
    import numpy as np

    import comfy.sd
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.demo.tiny_wan22 import load_wan22_vae, tiny_wan22_vae_state_dict
    from framememory.memory.grid import memory_grid
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model = comfy.sd.load_diffusion_model(wan22_files["dit"])
    vae = load_wan22_vae(tiny_wan22_vae_state_dict())
    encoder = MemoryEncoder.from_file(wan22_files["encoder"])
    clip = StandInTextEncoder()
    with av.open(str(media_dir / "bikes.mp4")) as c:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for _, f in zip(range(14), c.decode(video=0))]
    video = torch.stack(frames).float() / 255.0  # [14, 272, 640, 3] real street video
    start, dropped = history_from_frames(model, vae, encoder, video, 2, 16.0, 256, 128)
    per_segment = int(np.prod(memory_grid((2, 8, 16), encoder.cfg)))  # 1 x 1 x 2 = 2 at 4x4x2
    assert dropped == 1 and len(start.history.segments) == 2 and start.history.num_tokens == 2 * per_segment  # 5 + 8
    assert [s.num_frames for s in start.history.segments] == [5, 8]
    assert start.history.segments[0].latent.shape == (48, 2, 8, 16)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    shots = parse_storyboard("0.5 | a cyclist\n0.5 | a car")
    out, final, report = run_storyboard(model, vae, clip, encoder, neg, shots, SamplerSettings(2, 3.0, "euler", "simple", 1),
                                        256, 128, 16.0, 2, start)
    assert out.shape == (16, 128, 256, 3) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert report["model_family"] == "wan22" and report["decode"].startswith("context")
    assert [s["frames"] for s in report["segments"]] == [8, 8]  # continuing the clip's stream
    assert [s["memory_tokens"] for s in report["segments"]] == [2 * per_segment, 3 * per_segment]
    assert len(report["seams"]["per_boundary"]) == 1
    assert final.history.num_tokens == 4 * per_segment and final.history.num_frames == 29
    with pytest.raises(ValueError, match="multiples of 32x32 for wan22"):
        history_from_frames(model, vae, encoder, video, 2, 16.0, 240, 128)


@pytest.fixture(scope="module")
def a14b_low_noise(comfy, tmp_path_factory):
    """The second DiT of a Wan 2.2 A14B-style pair: a tiny Wan 2.1-architecture DiT with other weights (its own
    patch embedding), via the stock loader."""
    import comfy.sd
    from framememory.demo.make_tiny_models import write_family

    return comfy.sd.load_diffusion_model(write_family(str(tmp_path_factory.mktemp("a14b_low")), seed=7, vae=False)["dit"])


def test_a14b_pair_runs_the_vae_and_hr_branch_once_per_span(tiny_wan, a14b_low_noise):
    """Two spans of a real clip encoded for a Wan 2.2 A14B pair: the LR clip's VAE encode and the HR branch run once
    per span (only the patch embedding runs per expert), and every expert's tokens, positions and cross-attention
    hidden states are bit-identical (torch.equal) to encoding each expert on its own (the per-expert path)."""
    import dataclasses

    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.frames import fit_frames
    from framememory.memory.history import HistoryBuffer, PartKey
    from framememory.models.encoding import MemoryEncoder, encode_pending
    from framememory.models.experts import encode_pending_experts

    model, vae, tiny_encoder, _, video = tiny_wan
    cfg = dataclasses.replace(tiny_encoder.cfg, cross_attention=True, dit_blocks=2)  # hidden states are cached too
    base = HistoryEncoder(cfg)
    base.load_state_dict(tiny_encoder.state_dict, strict=False)  # the tiny file's HR branch, new cross layers
    sd = base.state_dict()
    g = torch.Generator().manual_seed(3)
    sd["hr.proj.weight"] = torch.randn(sd["hr.proj.weight"].shape, generator=g) * 0.1  # an HR branch that adds something
    encoder = MemoryEncoder(cfg, sd, "hr-random")
    net = encoder.network(model)[0]
    frames = fit_frames(video[:29], 128, 64)  # 13 + 16 frames: two 4-latent-frame segments of one stream
    latent = vae.encode(frames)  # [1, 16, 8, 8, 16]
    history = HistoryBuffer()
    history.append(latent[:, :, :4], frames[:13])
    history.append(latent[:, :, 4:], frames[13:])
    models = [model, a14b_low_noise]

    def encode(run):
        counts = {"vae": 0, "hr": 0}
        hooks = [vae.first_stage_model.encoder.register_forward_hook(lambda *_: counts.__setitem__("vae", counts["vae"] + 1)),
                 net.hr.register_forward_hook(lambda *_: counts.__setitem__("hr", counts["hr"] + 1))]
        hist = history.copy()
        try:
            run(hist)
        finally:
            for h in hooks:
                h.remove()
        return hist, counts

    shared, once = encode(lambda h: encode_pending_experts(models, vae, encoder, h))
    apart, per_expert = encode(lambda h: [encode_pending(models[e], vae, encoder, h, expert=e) for e in (1, 0)])
    _, one_model = encode(lambda h: encode_pending(model, vae, encoder, h))
    assert once["hr"] == 2 and per_expert["hr"] == 4  # one HR branch per span instead of one per span and expert
    assert once["vae"] == per_expert["vae"] == one_model["vae"] > 0  # the LR clip's VAE encode: once per span
    for key in (PartKey(0, 0), PartKey(0, 1)):
        for seg_shared, seg_apart in zip(shared.segments, apart.segments):
            got, expected = seg_shared.encoded[key], seg_apart.encoded[key]
            assert len(got) == len(expected) == 3 and all(torch.equal(a, b) for a, b in zip(got, expected))
    tokens = [shared.segments[1].encoded[PartKey(0, e)][0] for e in (0, 1)]
    assert tokens[0].shape[0] > 0 and not torch.equal(tokens[0], tokens[1])  # each expert's own patch embedding
