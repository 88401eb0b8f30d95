"""The HunyuanVideo family (``models/families/hunyuan_video.py``) on a tiny ComfyUI HunyuanVideo (CPU): the shared
family tests (:class:`family_contract.FamilyContract`: registry, no memory = identity, memory tokens in every double
and single block and gone before the head, CFG batching through the stock sampler, timestep rule, memory modes) and its
own: RoPE at the past times, clean (timestep 0) modulation, token layouts, the bounded modes refused, the storyboard
loop on real frames, the cross-attention add-on.

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
from family_contract import FamilyContract


class TestHunyuanVideoFamily(FamilyContract):
    family = "hunyuan_video"
    display_name = "HunyuanVideo"

    @staticmethod
    def make_dit():
        from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit

        return tiny_hunyuan_dit(seed=0)

    @staticmethod
    def forward_kwargs(g):
        """Pooled text y, embedded guidance and a text mask with 2 padded tokens."""
        return {"y": torch.randn(1, 768, generator=g), "guidance": torch.tensor([6.0]),
                "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}

    @staticmethod
    def cond_extras(g):
        return {"pooled_output": torch.randn(1, 768, generator=g)}


@pytest.fixture(scope="module")
def hv(comfy):
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit

    return tiny_hunyuan_dit(seed=0)


def _options(dm):
    """The memory patches on the bare DiT, as transformer_options (``families.install_memory``)."""
    from framememory.models.families import install_memory

    return install_memory(dm)


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
    from framememory.models.families import hunyuan_video

    tokens = hunyuan_video.patch_embed(dm, x[:, :, :frames]).flatten(2).transpose(1, 2)  # [1, frames*Ht*Wt, D]
    ht, wt = x.shape[3] // 2, x.shape[4] // 2
    ids = torch.stack(torch.meshgrid(torch.arange(frames) - float(frames), torch.arange(ht * 1.0),
                                     torch.arange(wt * 1.0), indexing="ij"), -1)
    return {"memory_tokens": tokens, "memory_positions2": (ids.reshape(1, -1, 3) * 2).long()}


def _whole_shifted(dm, x, context, kw, t, shift, transformer_options=None, **extra):
    """The whole video through ComfyUI's forward_orig with the img positions shifted by ``-shift`` frames."""
    img_ids = dm.img_ids(x)
    img_ids[..., 0] -= shift
    txt_ids = torch.zeros(1, context.shape[1], 3)
    return dm.forward_orig(x, img_ids, context, txt_ids, kw.get("attention_mask"), t, kw["y"],
                           guidance=kw["guidance"], transformer_options=transformer_options or {}, **extra)


def _guiding_frame_dims_for_text_first(dm):
    """transformer_options whose single-block patches put the stock ``guiding_frame_index`` modulation on the video
    tokens where the text comes first. ComfyUI >= 0.14 attends over ``[txt | video]`` but still hands the single
    blocks ``[(0, frame_tokens, 0), (frame_tokens, None, 1)]``, counted from the sequence start, i.e. the clean row
    lands on the text (an upstream inconsistency of HunyuanVideo I2V v1's token replace): shifted by the text length
    (``img_slice``), the text keeps the noisy row as it does on 0.3.75. A no-op where there is no ``img_slice``."""
    def single(args, extra):
        start = (args["transformer_options"].get("img_slice") or [0])[0]
        dims = args["modulation_dims"]
        if start and dims is not None:
            dims = [(0, start, 1)] + [(a + start, None if b is None else b + start, k) for a, b, k in dims]
        return extra["original_block"]({**args, "modulation_dims": dims})

    return {"patches_replace": {"dit": {("single_block", i): single for i in range(len(dm.single_blocks))}}}


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
    by ComfyUI's own per-token path (``guiding_frame_index=0``, HunyuanVideo I2V's token replace; its single-block
    dims moved past the text where the text comes first, :func:`_guiding_frame_dims_for_text_first`)."""
    x, context, kw = _inputs(1, t=4)
    t = torch.tensor([700.0])
    with torch.no_grad():
        clean_ref = _whole_shifted(hv, x, context, kw, t, shift=1, guiding_frame_index=torch.tensor([0.0]),
                                   transformer_options=_guiding_frame_dims_for_text_first(hv))[:, :, 1:]
        noisy_ref = _whole_shifted(hv, x, context, kw, t, shift=1)[:, :, 1:]
        out = hv(x[:, :, 1:], t, context, transformer_options=_options(hv), **kw, **_past(hv, x, 1))
    torch.testing.assert_close(out, clean_ref, atol=2e-4, rtol=1e-3)
    assert (out - noisy_ref).abs().max() > 1e-3  # the memory's modulation is not the sampled timestep's


def test_memory_next_to_a_reference_latent(hv):
    """A ReferenceLatent (``ref_latent``, prepended to the video tokens by forward_orig) and memory together: the stock
    output shape, and the memory changes the output (without a reference: :class:`TestHunyuanVideoFamily`)."""
    x, context, kw = _inputs(2, t=3)
    t = torch.tensor([500.0])
    opts = _options(hv)
    mem = torch.randn(1, 6, hv.hidden_size) * 0.5
    pos = torch.tensor([[[-3, 0, 0], [-3, 2, 2], [-3, 4, 4], [-1, 0, 0], [-1, 2, 2], [-1, 4, 4]]]) * 2
    ref = torch.randn(1, 16, 1, 8, 12)  # a ReferenceLatent (prepended at t = -1 by forward_orig)
    with torch.no_grad():
        plain = hv(x, t, context, **kw)
        with_ref = hv(x, t, context, ref_latent=ref, **kw)
        with_ref_mem = hv(x, t, context, transformer_options=opts, ref_latent=ref, **kw, memory_tokens=mem,
                          memory_positions2=pos)
    assert with_ref_mem.shape == plain.shape and (with_ref_mem - with_ref).abs().max() > 1e-3


def test_token_order_and_modulation_layout_are_detected_and_a_contradiction_fails_loudly(hv, monkeypatch):
    """The adapter reads the token order from the block (``flipped_img_txt``: [video | txt], ComfyUI < 0.14; absent:
    [txt | video]) and checks it against the single blocks' ``img_slice``; the modulation layout from a probe of
    ``apply_mod``. Where the two disagree (a ComfyUI with yet another layout) the forward raises."""
    import inspect

    import comfy.ldm.flux.layers as layers
    from framememory.models.families import hunyuan_video

    text_first = hunyuan_video.text_first(hv)
    assert text_first == (not getattr(hv.double_blocks[0], "flipped_img_txt", False))
    sliced = "d[2]:d[2] + 1" in inspect.getsource(layers.apply_mod)  # ComfyUI >= 0.17 slices the modulation rows
    assert hunyuan_video.modulation_rows() == (3 if sliced else 4)
    x, context, kw = _inputs(3, t=2)
    mem = _past(hv, x, 1)
    monkeypatch.setattr(hunyuan_video, "text_first", lambda dm: not text_first)  # the double blocks "say" the other order
    with pytest.raises(RuntimeError, match="HunyuanVideo token layout not recognised"), torch.no_grad():
        hv(x[:, :, 1:], torch.tensor([0.0]), context, transformer_options=_options(hv), **kw, **mem)


def test_patch_embed_is_img_in(hv):
    from framememory.models.families import hunyuan_video

    x = torch.randn(2, 16, 3, 8, 12)
    out = hunyuan_video.patch_embed(hv, x)
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

    from framememory.models import families
    from framememory.models.families import hunyuan_video

    assert type(loaded.model) is comfy.model_base.HunyuanVideo
    assert type(loaded.model.diffusion_model) is comfy.ldm.hunyuan_video.model.HunyuanVideo
    assert families.family_for(loaded) is hunyuan_video and families.model_width(loaded) == 128
    for name, p in hv.state_dict().items():  # every weight arrived (detection got every shape right)
        assert torch.equal(loaded.model.diffusion_model.state_dict()[name].float(), p), name
    lat = torch.randn(1, 16, 2, 8, 8)
    assert families.patch_embed(loaded, lat).shape == (1, 128, 2, 4, 4)


@pytest.mark.parametrize("mode", ["pack_forcing", "video_ssm"])
def test_bounded_memory_modes_are_refused_naming_what_works(loaded, mode):
    """HunyuanVideo's hooks have no PackForcing selection nor VideoSSM read-out (``MEMORY_MODES``): the memory mode is a
    ValueError that names the family, the mode and the modes that work, when the run resolves its mode config."""
    from framememory.memory.config import EncoderConfig
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.families import hunyuan_video
    from framememory.models.memory_modes import mode_config

    assert mode not in hunyuan_video.MEMORY_MODES
    encoder = MemoryEncoder(EncoderConfig(family="hunyuan_video", dim=0), None, "untrained")
    with pytest.raises(ValueError, match=rf"memory_mode {mode} is not implemented for hunyuan_video models \(only for "
                                         r"wan21, wan22\): use frame_preservation, sliding_window or off"):
        mode_config(encoder, loaded, mode)
    assert mode_config(encoder, loaded, "sliding_window").family == "hunyuan_video"


def test_storyboard_from_real_clip(loaded, media_dir):
    """run_storyboard end to end with HunyuanVideo's VAE class (real size, random weights) on real frames: one
    continuous stream of 2-latent-frame segments (5 frames, then 8 each), decoded in context mode (not a WanVAE)."""
    import comfy.sd

    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_encoder_config, tiny_hunyuan_vae_state_dict
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    vae = comfy.sd.VAE(sd=tiny_hunyuan_vae_state_dict())
    cfg = tiny_hunyuan_encoder_config(rate="2x2x1")
    net = HistoryEncoder(cfg)
    net.reset_parameters(torch.Generator().manual_seed(2))
    with torch.no_grad():  # a random non-zero HR output, so both branches are exercised
        net.hr.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    encoder = MemoryEncoder(cfg, net.state_dict(), "tiny_hunyuan_encoder")
    with av.open(str(media_dir / "bikes.mp4")) as c:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for _, f in zip(range(7), c.decode(video=0))]
    video = torch.stack(frames).float() / 255.0  # [7, 272, 640, 3] real street video
    clip = StandInTextEncoder(pooled_dim=768)

    with torch.inference_mode():  # as ComfyUI runs nodes
        start, dropped = history_from_frames(loaded, vae, encoder, video, 2, 8.0, 64, 32)
        assert dropped == 2 and start.history.num_frames == 5 and start.history.num_tokens == 4  # 2x1x2 at 2x2x1
        neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
        shots = parse_storyboard("1.0 | a cyclist\n1.0 | a car")
        out, final, report = run_storyboard(loaded, vae, clip, encoder, neg, shots,
                                            SamplerSettings(2, 3.0, "euler", "simple", 1), 64, 32, 8.0, 2, start)
        assert out.shape == (16, 32, 64, 3) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
        assert report["model_family"] == "hunyuan_video" and report["decode"].startswith("context")
        assert [s["shot"] for s in report["segments"]] == [0, 1]  # middles at 0.5 s and 1.5 s
        assert [s["frames"] for s in report["segments"]] == [8, 8]  # continuing the clip's stream
        assert [s["memory_tokens"] for s in report["segments"]] == [4, 8]
        assert len(report["seams"]["per_boundary"]) == 1
        assert final.history.num_tokens == 12 and final.history.num_frames == 21
        tokens, positions = final.tokens(loaded)
        assert tokens.shape == (12, 128) and positions[:, 0].max() < 0
        # add-on: the last 2 latent frames uncompressed (the DiT's own img_in at 1x1x1) at times -2, -1
        overlap = MemoryEncoder(dataclasses.replace(cfg, overlap_latent_frames=2), net.state_dict(), "overlap")
        final.encoder = overlap
        tokens, positions = final.tokens(loaded)
        assert tokens.shape == (12 + 2 * 2 * 4, 128) and sorted(set(positions[12:, 0].tolist())) == [-2.0, -1.0]


# ---- cross-attention add-on (arXiv 2512.23851): one layer per double and per single block --------------------------

def _cross_net(dit_blocks: int = 4, seed: int | None = None, **changes):
    """The tiny HunyuanVideo encoder with ``dit_blocks`` cross-attention layers: zero output projections (seed None,
    i.e. untrained) or random ones (seeded)."""
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_encoder_config
    from framememory.memory.encoder import HistoryEncoder

    cfg = dataclasses.replace(tiny_hunyuan_encoder_config(), cross_attention=True, dit_blocks=dit_blocks, **changes)
    net = HistoryEncoder(cfg)
    net.reset_parameters(torch.Generator().manual_seed(0))
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in net.cross:
                layer.out.weight.normal_(0, 0.2, generator=g)
    return net


def _cross_options(dm, layers):
    from framememory.models import conds

    opts = _options(dm)
    if layers is not None:
        opts[conds.CROSS_KEY] = layers
    return opts


def _cross_inputs(hv, seed=4):
    """3 latent frames (72 video tokens), 6 memory tokens at past times, 6 hidden states of width 64."""
    x, context, kw = _inputs(seed, t=3)
    g = torch.Generator().manual_seed(seed)
    mem = {"memory_tokens": torch.randn(1, 6, hv.hidden_size, generator=g) * 0.5,
           "memory_positions2": torch.tensor([[[-3, 0, 0], [-3, 2, 2], [-3, 4, 4], [-1, 0, 0], [-1, 2, 2], [-1, 4, 4]]]) * 2}
    return x, context, kw, mem, torch.randn(1, 6, 64, generator=g)


def test_cross_attention_zero_init_is_identity_and_every_block_has_its_layer(hv):
    """dit_blocks = 2 double + 2 single; zero-initialised layers leave the output bit-identical to memory without the
    add-on (and hidden states without layers are ignored when absent); trained layers change it; each of the four
    layers alone (cross.0, cross.1 after the double blocks, cross.2, cross.3 after the single blocks) changes it."""
    from framememory.models.families import hunyuan_video

    assert hunyuan_video.cross_blocks(hv) == len(hv.double_blocks) + len(hv.single_blocks) == 4
    x, context, kw, mem, hidden = _cross_inputs(hv)
    t = torch.tensor([500.0])
    zero, trained = _cross_net(), _cross_net(seed=5)
    with torch.no_grad():
        plain = hv(x, t, context, transformer_options=_cross_options(hv, None), **kw, **mem)
        with_zero = hv(x, t, context, transformer_options=_cross_options(hv, zero.cross), **kw, **mem, memory_hidden=hidden)
        with_trained = hv(x, t, context, transformer_options=_cross_options(hv, trained.cross), **kw, **mem,
                          memory_hidden=hidden)
        no_hidden = hv(x, t, context, transformer_options=_cross_options(hv, trained.cross), **kw, **mem)
        no_memory = hv(x, t, context, transformer_options=_cross_options(hv, trained.cross), **kw, memory_hidden=hidden)
        stock = hv(x, t, context, **kw)
        single = []
        for k in range(4):  # only layer k trained
            one = _cross_net()
            with torch.no_grad():
                one.cross[k].load_state_dict(trained.cross[k].state_dict())
            single.append(hv(x, t, context, transformer_options=_cross_options(hv, one.cross), **kw, **mem,
                             memory_hidden=hidden))
    assert torch.equal(with_zero, plain) and torch.equal(no_hidden, plain) and torch.equal(no_memory, stock)
    assert (with_trained - plain).abs().max() > 1e-3
    for k, out in enumerate(single):
        assert (out - plain).abs().max() > 1e-4, f"cross.{k} had no effect"
        assert all((out - other).abs().max() > 1e-6 for other in single[k + 1:])


def test_cross_attention_queries_are_the_video_tokens_only(hv):
    """Each layer runs once per forward, in block order, on exactly the N video tokens of its block's output (the
    video stream, ref_latent tokens included: the first N, or after the text in single blocks where the text comes
    first); memory tokens (double blocks) and memory + text tokens (single blocks) leave the patch exactly as the block
    produced them."""
    from framememory.models import conds
    from framememory.models.families import hunyuan_video

    x, context, kw, mem, hidden = _cross_inputs(hv, seed=6)
    t = torch.tensor([300.0])
    trained = _cross_net(seed=7)
    calls, blocks = [], {}
    hooks = [layer.register_forward_hook(
        lambda mod, args, out, k=k: calls.append((k, args[0].clone(), args[1].clone(), out.clone())))
        for k, layer in enumerate(trained.cross)]
    opts = _cross_options(hv, trained.cross)
    replace = opts["patches_replace"]["dit"]

    def copy(d):  # the next block adds to its input in place (flux layers): record copies
        return {k: v.clone() for k, v in d.items()}

    def spy(key, patch):  # record the original block's output and the patch's output
        def run(args, extra):
            def original(a):
                out = extra["original_block"](a)
                blocks[key] = {"block": copy(out)}
                return out
            out = patch(args, {"original_block": original})
            blocks[key]["patch"] = copy(out)
            return out
        return run

    for key in list(replace):
        replace[key] = spy(key, replace[key])
    ref = torch.randn(1, 16, 1, 8, 12, generator=torch.Generator().manual_seed(8))  # ReferenceLatent: 24 more img tokens
    try:
        with torch.no_grad():
            hv(x, t, context, transformer_options=opts, ref_latent=ref, **kw, **mem, memory_hidden=hidden)
    finally:
        for h in hooks:
            h.remove()
    n, m, txt = 24 + 3 * 4 * 6, 6, 5
    assert [k for k, *_ in calls] == [0, 1, 2, 3]
    order = [("double_block", 0), ("double_block", 1), ("single_block", 0), ("single_block", 1)]
    for (k, q, ctx, out), key in zip(calls, order):
        block, patched = blocks[key]["block"]["img"], blocks[key]["patch"]["img"]
        s = txt if key[0] == "single_block" and hunyuan_video.text_first(hv) else 0  # [txt | video | memory] (>= 0.14)
        assert q.shape == (1, n, hv.hidden_size) and torch.equal(q, block[:, s:s + n]), key
        assert torch.equal(ctx, hidden)
        assert block.shape[1] == n + m + (txt if key[0] == "single_block" else 0)
        assert torch.equal(patched[:, s:s + n], out) and (out - q).abs().max() > 1e-3  # the video tokens changed
        assert torch.equal(patched[:, :s], block[:, :s])  # text before the video untouched
        tail = patched[:, s + n:]
        if key == order[-1]:  # the last block also drops the memory tokens
            assert torch.equal(tail, block[:, s + n + m:]) and patched.shape[1] == n + txt
        else:
            assert torch.equal(tail, block[:, s + n:])  # memory (and text) untouched
        if key[0] == "double_block":
            assert torch.equal(blocks[key]["patch"]["txt"], blocks[key]["block"]["txt"])  # text stream untouched
    assert conds.CROSS_KEY in opts


def test_cross_attention_layers_must_match_the_block_count(hv, loaded):
    """The state dict has one ``cross.i`` per counted block (double + single); an encoder whose dit_blocks differs
    from the model's is a ValueError when it is checked, installed (Apply Memory / Storyboard path) or, with layers
    handed over by hand, when the model runs; a file whose weights disagree with its own config too."""
    from framememory.models import cross_attention, families
    from framememory.models.conds import CROSS_KEY
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.segment_sampler import memory_model

    four, two = _cross_net(4), _cross_net(2)
    idx = lambda sd: sorted({int(k.split(".")[1]) for k in sd if k.startswith("cross.")})  # noqa: E731
    assert idx(four.state_dict()) == [0, 1, 2, 3] and idx(two.state_dict()) == [0, 1]
    assert families.family_for(loaded).cross_blocks(loaded.model.diffusion_model) == 4
    ok = MemoryEncoder(four.cfg, four.state_dict(), "hv4")
    assert ok.check(loaded).dit_blocks == 4
    patched = memory_model(loaded, ok)
    layers = patched.model_options["transformer_options"][CROSS_KEY]
    assert len(layers) == 4 and layers is ok.patcher(loaded).model.cross
    bad = MemoryEncoder(two.cfg, two.state_dict(), "hv2")
    message = r"'hv2' does not fit this model: dit_blocks 2 \(model: 4\) \(dit_blocks counts .*double \+ single"
    with pytest.raises(ValueError, match=message):
        bad.check(loaded)
    with pytest.raises(ValueError, match=message):
        memory_model(loaded, bad)
    with pytest.raises(ValueError, match=message):
        cross_attention.install_cross_attention(families.install_memory(loaded), bad)
    with pytest.raises(ValueError, match="does not fit its own config"):
        MemoryEncoder(four.cfg, two.state_dict(), "hv4_with_2_layers").patcher(loaded)
    x, context, kw, mem, hidden = _cross_inputs(hv)
    t = torch.tensor([500.0])
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"\(2 blocks, width 128, hidden width 64\) do not fit this model \(4 blocks"):
            hv(x, t, context, transformer_options=_cross_options(hv, two.cross), **kw, **mem, memory_hidden=hidden)
        with pytest.raises(ValueError, match="no cross-attention layers"):
            hv(x, t, context, transformer_options=_cross_options(hv, None), **kw, **mem, memory_hidden=hidden)
        with pytest.raises(ValueError, match=r"hidden width 64\) do not fit .* hidden states \(32\)"):
            hv(x, t, context, transformer_options=_cross_options(hv, four.cross), **kw, **mem,
               memory_hidden=hidden[..., :32])


def test_cross_attention_hidden_states_incremental_equals_whole(loaded):
    """Hidden states of a history encoded segment by segment (encoding.encode_pending, HR branch only) equal the
    encoder's hidden states of the whole latent, one row per memory token, at every step."""
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.history import HistoryBuffer
    from framememory.models.cross_attention import memory_hidden
    from framememory.models.encoding import MemoryEncoder, encode_pending

    net = _cross_net(seed=9, use_lr=False)
    with torch.no_grad():
        net.hr.proj.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(10))
    encoder = MemoryEncoder(net.cfg, net.state_dict(), "hr_cross")
    latent = torch.randn(16, 8, 16, 16, generator=torch.Generator().manual_seed(11))  # 4 segments of rt = 2 frames
    reference = HistoryEncoder(net.cfg)
    reference.load_state_dict(net.state_dict())
    buf = HistoryBuffer()
    assert memory_hidden(loaded, encoder, buf) is None
    for k in range(4):
        buf.append(latent[:, 2 * k:2 * k + 2], torch.zeros(5, 128, 128, 3, dtype=torch.uint8))
        assert encode_pending(loaded, None, encoder, buf) == 1
        hidden = memory_hidden(loaded, encoder, buf)
        with torch.no_grad():
            x = loaded.model.process_latent_in(latent[None, :, : 2 * k + 2])
            y, whole = reference.hr(x, reference.grid(x))
            tokens, hidden_tokens = reference(x)  # HR branch only: no LR latent needed
        whole = whole[0].flatten(1).T  # [Ch, Tm, Hm, Wm] -> [M, Ch]
        torch.testing.assert_close(hidden_tokens[0], whole)
        assert hidden.shape == (4 * (k + 1), 64) and buf.num_tokens == hidden.shape[0]
        assert whole.abs().max() > 0
        torch.testing.assert_close(hidden, whole, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(buf.memory()[0], y[0].flatten(1).T, atol=1e-5, rtol=1e-5)


def test_cross_attention_through_the_stock_sampler(loaded):
    """Hidden states travel as a third model cond (conds.attach_memory) through comfy.sample.sample with CFG (cond and
    uncond in one batched call); zero-initialised layers give exactly the result without the add-on, trained ones
    change it."""
    import comfy.patcher_extension
    import comfy.sample

    from framememory.models import conds
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.segment_sampler import memory_model

    g = torch.Generator().manual_seed(12)
    pos_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {"pooled_output": torch.randn(1, 768, generator=g)}]]
    neg_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {"pooled_output": torch.randn(1, 768, generator=g)}]]
    tokens = torch.randn(8, 128, generator=g) * 0.5
    positions = torch.tensor([[-1.5 - 2 * (i // 4), 1.5, 1.5 + (i % 4)] for i in range(8)])
    hidden = torch.randn(8, 64, generator=g)
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 7)
    seen = []

    def spy(executor, *args, **kwargs):  # batch size and hidden states of every call (a kwarg before our wrapper,
        h = kwargs.get(conds.HIDDEN_KEY)  # in transformer_options after it)
        h = args[-1].get(conds.PATCH_KEY, {}).get("hidden") if h is None else h
        seen.append((args[0].shape[0], None if h is None else tuple(h.shape)))
        return executor(*args, **kwargs)

    def run(encoder, with_hidden):
        m = memory_model(loaded, encoder)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "aaa_spy", spy)
        h = hidden if with_hidden else None
        p, n = (conds.attach_memory(c, tokens, positions, h) for c in (pos_c, neg_c))
        return comfy.sample.sample(m, noise, 3, 4.0, "euler", "simple", p, n, latent, seed=7, disable_pbar=True)

    zero, trained = _cross_net(), _cross_net(seed=13)
    plain = run(MemoryEncoder(zero.cfg, zero.state_dict(), "zero"), with_hidden=False)
    seen.clear()
    with_zero = run(MemoryEncoder(zero.cfg, zero.state_dict(), "zero"), with_hidden=True)
    with_trained = run(MemoryEncoder(trained.cfg, trained.state_dict(), "trained"), with_hidden=True)
    assert seen and all(s == (2, (2, 8, 64)) for s in seen)  # cond + uncond batched, hidden states present
    assert torch.equal(with_zero, plain)
    assert torch.isfinite(with_trained).all() and (with_trained - plain).abs().max() > 1e-3
