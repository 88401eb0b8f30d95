"""The HunyuanVideo adapter on a tiny ComfyUI HunyuanVideo (CPU): memory tokens reach every double and single
block with RoPE at their past times, are modulated as clean (timestep 0) tokens and leave before the head; no
memory = identity; CFG batching through the stock sampler; the storyboard loop on real frames.

Reference for "memory = attending to the past": HunyuanVideo's text tokens sit at RoPE position 0, i.e. at the
first frame of whatever video the model sees. Memory tokens at negative times therefore equal the whole video
*with the segment being generated starting at t = 0* (``forward_orig`` with shifted ``img_ids``), not the whole
video at its own positions 0..T-1 (where the text would sit at the start of the past); the tests show both.
"""
from __future__ import annotations

import dataclasses

import av
import pytest
import torch


@pytest.fixture(scope="module")
def hv(comfy):
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit

    return tiny_hunyuan_dit(seed=0)


class _Recorder:
    """Stands in for a ModelPatcher: collects what ``hunyuan.install`` registers as transformer_options."""

    def __init__(self):
        self.options = {"patches_replace": {}, "wrappers": {}}

    def remove_wrappers_with_key(self, wrapper_type, key):
        self.options["wrappers"].get(wrapper_type, {}).pop(key, None)

    def add_wrapper_with_key(self, wrapper_type, key, fn):
        self.options["wrappers"].setdefault(wrapper_type, {}).setdefault(key, []).append(fn)

    def set_model_patch_replace(self, patch, name, block_name, number):
        self.options["patches_replace"].setdefault(name, {})[(block_name, number)] = patch


def _options(dm):
    from framememory.models import hunyuan

    rec = _Recorder()
    hunyuan.install(rec, dm)
    return rec.options


def _inputs(seed=0, t=6):
    """x [1, 16, t, 8, 12] (t x 4 x 6 DiT tokens), text [1, 5, 4096] with 2 padded tokens, pooled y, guidance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, t, 8, 12, generator=g)
    context = torch.randn(1, 5, 4096, generator=g) * 0.1
    kw = {"y": torch.randn(1, 768, generator=g), "guidance": torch.tensor([6.0]),
          "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}
    return x, context, kw


def _past(dm, x, frames):
    """The first ``frames`` latent frames of x, patch-embedded by the model's own img_in, at times -frames..-1."""
    from framememory.models import hunyuan

    tokens = hunyuan.patch_embed(dm, x[:, :, :frames]).flatten(2).transpose(1, 2)  # [1, frames*Ht*Wt, D]
    ht, wt = x.shape[3] // 2, x.shape[4] // 2
    ids = torch.stack(torch.meshgrid(torch.arange(frames) - float(frames), torch.arange(ht * 1.0),
                                     torch.arange(wt * 1.0), indexing="ij"), -1)
    return {"memory_tokens": tokens, "memory_positions2": (ids.reshape(1, -1, 3) * 2).long()}


def _whole_shifted(dm, x, context, kw, t, shift, **extra):
    """The whole video through ComfyUI's forward_orig with the img positions shifted by ``-shift`` frames."""
    img_ids = dm.img_ids(x)
    img_ids[..., 0] -= shift
    txt_ids = torch.zeros(1, context.shape[1], 3)
    return dm.forward_orig(x, img_ids, context, txt_ids, kw.get("attention_mask"), t, kw["y"],
                           guidance=kw["guidance"], transformer_options={}, **extra)


def test_memory_of_the_past_equals_attending_to_the_past(hv):
    """Memory = the first 3 latent frames, uncompressed, at times -3..-1 (timestep 0: clean and noisy modulation
    coincide): the output for the last 3 frames equals the whole 6-frame video's, with the text anchored at the
    segment's first frame. Exercises pe insertion in double and single blocks and the text-mask columns."""
    x, context, kw = _inputs()
    t = torch.tensor([0.0])
    with torch.no_grad():
        reference = _whole_shifted(hv, x, context, kw, t, shift=3)[:, :, 3:]
        out = hv(x[:, :, 3:], t, context, transformer_options=_options(hv), **kw, **_past(hv, x, 3))
        plain = hv(x[:, :, 3:], t, context, **kw)
        naive = hv(x, t, context, **kw)[:, :, 3:]  # text at the start of the past instead
    assert out.shape == plain.shape == (1, 16, 3, 8, 12)
    torch.testing.assert_close(out, reference, atol=2e-4, rtol=1e-3)
    assert (out - plain).abs().max() > 1e-3  # memory really changed the output
    assert (out - naive).abs().max() > 1e-3  # text RoPE position 0 is relative to the segment, not the past


def test_memory_tokens_are_clean_like_the_stock_guiding_frame(hv):
    """At a noisy timestep, a 1-frame memory equals the whole video where that frame is modulated at timestep 0
    by ComfyUI's own per-token path (``guiding_frame_index=0``, HunyuanVideo I2V's token replace)."""
    x, context, kw = _inputs(1, t=4)
    t = torch.tensor([700.0])
    with torch.no_grad():
        clean_ref = _whole_shifted(hv, x, context, kw, t, shift=1, guiding_frame_index=torch.tensor([0.0]))[:, :, 1:]
        noisy_ref = _whole_shifted(hv, x, context, kw, t, shift=1)[:, :, 1:]
        out = hv(x[:, :, 1:], t, context, transformer_options=_options(hv), **kw, **_past(hv, x, 1))
    torch.testing.assert_close(out, clean_ref, atol=2e-4, rtol=1e-3)
    assert (out - noisy_ref).abs().max() > 1e-3  # the memory's modulation is not the sampled timestep's


def test_positions_matter_and_no_memory_is_identity(hv):
    x, context, kw = _inputs(2, t=3)
    t = torch.tensor([500.0])
    opts = _options(hv)
    mem = torch.randn(1, 6, hv.hidden_size) * 0.5
    pos = torch.tensor([[[-3, 0, 0], [-3, 2, 2], [-3, 4, 4], [-1, 0, 0], [-1, 2, 2], [-1, 4, 4]]]) * 2
    ref = torch.randn(1, 16, 1, 8, 12)  # a ReferenceLatent (prepended at t = -1 by forward_orig)
    with torch.no_grad():
        plain = hv(x, t, context, **kw)
        patched_no_memory = hv(x, t, context, transformer_options=opts, **kw)
        empty = hv(x, t, context, transformer_options=opts, **kw, memory_tokens=mem[:, :0], memory_positions2=pos[:, :0])
        a = hv(x, t, context, transformer_options=opts, **kw, memory_tokens=mem, memory_positions2=pos)
        b = hv(x, t, context, transformer_options=opts, **kw, memory_tokens=mem, memory_positions2=pos - 20)
        with_ref = hv(x, t, context, ref_latent=ref, **kw)
        with_ref_mem = hv(x, t, context, transformer_options=opts, ref_latent=ref, **kw, memory_tokens=mem,
                          memory_positions2=pos)
    assert torch.equal(plain, patched_no_memory) and torch.equal(plain, empty)
    assert (a - plain).abs().max() > 1e-3 and (a - b).abs().max() > 1e-5
    assert with_ref_mem.shape == plain.shape and (with_ref_mem - with_ref).abs().max() > 1e-3


def test_patch_embed_is_img_in(hv):
    from framememory.models import hunyuan

    x = torch.randn(2, 16, 3, 8, 12)
    out = hunyuan.patch_embed(hv, x)
    assert out.shape == (2, hv.hidden_size, 3, 4, 6) and out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out.flatten(2).transpose(1, 2), hv.img_in(x))


@pytest.fixture(scope="module")
def loaded(hv, tmp_path_factory):
    """The tiny DiT saved and loaded back through the stock loader (comfy.sd.load_diffusion_model)."""
    import comfy.sd
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("hunyuan") / "tiny_hunyuan.safetensors"
    save_file({k: v.contiguous() for k, v in hv.state_dict().items()}, str(path))
    return comfy.sd.load_diffusion_model(str(path))


def test_stock_loader_detects_hunyuan_video(loaded, hv):
    import comfy.ldm.hunyuan_video.model
    import comfy.model_base

    from framememory.models import families, hunyuan

    assert type(loaded.model) is comfy.model_base.HunyuanVideo
    assert type(loaded.model.diffusion_model) is comfy.ldm.hunyuan_video.model.HunyuanVideo
    assert families.adapter_for(loaded) is hunyuan and families.model_width(loaded) == 128
    for name, p in hv.state_dict().items():  # every weight arrived (detection got every shape right)
        assert torch.equal(loaded.model.diffusion_model.state_dict()[name].float(), p), name
    lat = torch.randn(1, 16, 2, 8, 8)
    assert families.patch_embed(loaded, lat).shape == (1, 128, 2, 4, 4)


def test_stock_sampler_with_cfg_batches_cond_and_uncond(loaded):
    """Through comfy.sample.sample (CFG > 1): patched without memory = unpatched; with memory in both conds the
    result differs, and cond and uncond arrive in one batched call with memory present."""
    import comfy.patcher_extension
    import comfy.sample

    from framememory.models import conds, families

    patched = families.patch_model(loaded)
    seen = []

    def spy(executor, *args, **kwargs):
        # x batch, and whether memory is present (a kwarg before our wrapper, in transformer_options after it)
        seen.append((args[0].shape[0], kwargs.get(conds.TOKENS_KEY) is not None or conds.PATCH_KEY in args[-1]))
        return executor(*args, **kwargs)

    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "spy", spy)
    g = torch.Generator().manual_seed(3)
    pos_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {"pooled_output": torch.randn(1, 768, generator=g)}]]
    neg_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {"pooled_output": torch.randn(1, 768, generator=g)}]]
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 7)

    def run(m, p, n):
        return comfy.sample.sample(m, noise, 3, 4.0, "euler", "simple", p, n, latent, seed=7, disable_pbar=True)

    base = run(loaded, pos_c, neg_c)
    same = run(patched, pos_c, neg_c)
    tokens = torch.randn(8, 128) * 0.5
    positions = torch.tensor([[-1.5 - 2 * (i // 4), 1.5, 1.5 + (i % 4)] for i in range(8)])
    seen.clear()
    withmem = run(patched, conds.attach_memory(pos_c, tokens, positions), conds.attach_memory(neg_c, tokens, positions))
    torch.testing.assert_close(base, same)
    assert torch.isfinite(withmem).all() and (withmem - base).abs().max() > 1e-3
    assert seen and all(batch == 2 and has for batch, has in seen)  # cond+uncond in one call, memory present


def test_storyboard_from_real_clip(loaded, media_dir):
    """run_storyboard end to end with HunyuanVideo's VAE class (real size, random weights) on real frames."""
    import comfy.sd

    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_encoder_config, tiny_hunyuan_vae_state_dict
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.storyboard import SamplerSettings, history_from_frames, run_storyboard

    vae = comfy.sd.VAE(sd=tiny_hunyuan_vae_state_dict())
    cfg = tiny_hunyuan_encoder_config(rate="2x2x1")
    net = HistoryEncoder(cfg)
    net.reset_parameters(torch.Generator().manual_seed(2))
    with torch.no_grad():  # a random non-zero HR output, so both branches are exercised
        net.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    encoder = MemoryEncoder(cfg, net.state_dict(), "tiny_hunyuan_encoder")
    with av.open(str(media_dir / "bikes.mp4")) as c:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for _, f in zip(range(7), c.decode(video=0))]
    video = torch.stack(frames).float() / 255.0  # [7, 272, 640, 3] real street video
    clip = StandInTextEncoder(pooled_dim=768)

    with torch.inference_mode():  # as ComfyUI runs nodes
        start, dropped = history_from_frames(loaded, vae, encoder, video, 2, 8.0, 64, 32)
        assert dropped == 2 and start.history.num_frames == 5 and start.history.num_tokens == 4  # 2x1x2 at 2x2x1
        neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
        shots = parse_storyboard("0.6 | a cyclist\n0.6 | a car")
        out, final, report = run_storyboard(loaded, vae, clip, encoder, neg, shots,
                                            SamplerSettings(2, 3.0, "euler", "simple", 1), 64, 32, 8.0, 2, start)
        assert out.shape == (10, 32, 64, 3) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
        assert report["model_family"] == "hunyuan_video"
        assert [s["shot"] for s in report["segments"]] == [0, 1]
        assert [s["memory_tokens"] for s in report["segments"]] == [4, 8]
        assert final.history.num_tokens == 12 and final.history.num_frames == 15
        tokens, positions = final.tokens(loaded)
        assert tokens.shape == (12, 128) and positions[:, 0].max() < 0
        # add-on: the last 2 latent frames uncompressed (the DiT's own img_in at 1x1x1) at times -2, -1
        overlap = MemoryEncoder(dataclasses.replace(cfg, overlap_latent_frames=2), net.state_dict(), "overlap")
        final.encoder = overlap
        tokens, positions = final.tokens(loaded)
        assert tokens.shape == (12 + 2 * 2 * 4, 128) and sorted(set(positions[12:, 0].tolist())) == [-2.0, -1.0]
