"""The Wan 2.1 family (``models/families/wan21.py``) on a tiny ComfyUI WanModel (CPU): the shared family tests
(:class:`family_contract.FamilyContract`: registry, no memory = identity, tokens in every block, the stock sampler with
CFG, timestep rules, memory modes) and Wan's own: memory = attending to the past under both timestep rules, Bernini
context latents, the rules through the Storyboard's patch, conditioning, context windows."""
from __future__ import annotations

import pytest
import torch
from family_contract import FamilyContract


class TestWan21Family(FamilyContract):
    family = "wan21"
    display_name = "Wan 2.1"

    @staticmethod
    def make_dit():
        from framememory.demo.tiny_models import tiny_wan21_dit

        return tiny_wan21_dit(seed=0)


@pytest.fixture(scope="module")
def wan(comfy):
    from framememory.demo.tiny_models import tiny_wan21_dit
    from types import SimpleNamespace

    from framememory.models import conds, families

    adapter = SimpleNamespace(  # the pieces under test, by the names the tests use
        install_memory=families.install_memory, attach_memory=conds.attach_memory, PATCH_KEY=conds.PATCH_KEY,
        TOKENS_KEY=conds.TOKENS_KEY, POSITIONS_KEY=conds.POSITIONS_KEY)
    return tiny_wan21_dit(seed=0), adapter


def _inputs(seed=0, t=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, t, 8, 12, generator=g)
    context = torch.randn(1, 5, 4096, generator=g) * 0.1
    return x, torch.tensor([500.0]), context


@pytest.mark.parametrize("memory_timestep", ["zero", "shared"])
def test_memory_of_the_past_equals_attending_to_the_past(wan, memory_timestep):
    """Memory = the first 3 latent frames, uncompressed, at their original (negative) times: the output for the last 3
    frames must equal that of the whole 6-frame video (RoPE is relative). By default ("zero", every family) memory
    tokens are clean context at timestep 0: the whole video runs with per-frame timesteps [0, 0, 0 | 500, 500, 500]
    (ComfyUI's Wan 2.1 takes them like Wan 2.2). The "shared" ablation (install(memory_t0=False)) gives them the
    sampling timestep: the whole video at one shared timestep 500."""
    dm, adapter = wan
    x, t, context = _inputs()
    whole_t = torch.tensor([[0.0, 0.0, 0.0, 500.0, 500.0, 500.0]]) if memory_timestep == "zero" else t
    opts = adapter.install_memory(dm) if memory_timestep == "zero" else \
        adapter.install_memory(dm, memory_t0=False)  # the default patch is the "zero" rule
    with torch.no_grad():
        whole = dm(x, whole_t, context)[:, :, 3:]
        past = dm.patch_embedding(x[:, :, :3].float()).flatten(2).transpose(1, 2)  # [1, 3*4*6, D]
        ids = torch.stack(torch.meshgrid(torch.arange(3) - 3.0, torch.arange(4.0), torch.arange(6.0), indexing="ij"), -1)
        pos2 = (ids.reshape(1, -1, 3) * 2).long()
        out = dm(x[:, :, 3:], t, context, transformer_options=opts, memory_tokens=past, memory_positions2=pos2)
        other = dm(x[:, :, 3:], t, context, memory_tokens=past, memory_positions2=pos2,
                   transformer_options=adapter.install_memory(dm, memory_t0=memory_timestep == "shared"))
        plain = dm(x[:, :, 3:], t, context)
    assert out.shape == plain.shape == (1, 16, 3, 8, 12)
    torch.testing.assert_close(out, whole, atol=2e-4, rtol=1e-3)
    assert (out - plain).abs().max() > 1e-3  # and memory really changed the output
    assert (out - other).abs().max() > 1e-3  # the two timestep rules differ


def test_memory_next_to_bernini_context_latents(wan):
    """ComfyUI 0.33's Bernini in-context reference appends its own clean tokens (``context_latents``, RoPE with a
    source id, anchored at the video's first frame) after the video tokens and strips them after the head. Memory
    tokens go after those: every block sees [video | context | memory], the last block hands back [video | context],
    the add-ons' video tokens are prod(grid_sizes), and memory and context both act on the output. (Exact
    equivalence with the whole video does not exist here: the context is anchored at the segment's first frame with
    memory and at the past's first frame without.) On ComfyUI without ``context_latents`` (0.3.75) the kwarg is
    ignored: then no context tokens appear and the context changes nothing."""
    import inspect

    from comfy.ldm.wan.model import WanModel

    from framememory.models.families.wan21 import video_tokens

    dm, adapter = wan
    bernini = "context_latents" in inspect.getsource(WanModel._forward)
    x, t, context = _inputs(5, t=3)
    lat = torch.randn(1, 16, 1, 8, 12, generator=torch.Generator().manual_seed(9))
    n, c, m = 3 * 4 * 6, (1 * 4 * 6 if bernini else 0), 8
    mem = {"memory_tokens": torch.randn(1, m, dm.dim, generator=torch.Generator().manual_seed(10)) * 0.5,
           "memory_positions2": torch.tensor([[[-3 + (i // 4), 1, i % 4] for i in range(m)]]) * 2}
    opts, seen = adapter.install_memory(dm), []
    replace = opts["patches_replace"]["dit"]
    for key, patch in list(replace.items()):
        def spy(args, extra, patch=patch, key=key):
            out = patch(args, extra)
            seen.append((key[1], args["img"].shape[1], out["img"].shape[1],
                         video_tokens(args["transformer_options"], n + c)))
            return out
        replace[key] = spy
    with torch.no_grad():
        out = dm(x, t, context, transformer_options=opts, context_latents=[lat], **mem)
        no_memory = dm(x, t, context, context_latents=[lat])
        no_context = dm(x, t, context, transformer_options=opts, **mem)
    assert out.shape == no_memory.shape == (1, 16, 3, 8, 12)
    # block 0 gets [video | context] and returns it with the memory; the last returns [video | context] again
    first = seen[:len(dm.blocks)]  # the first forward's blocks
    assert first[0][1:] == (n + c, n + c + m, n) and first[-1][1:] == (n + c + m, n + c, n), first
    assert (out - no_memory).abs().max() > 1e-3
    if bernini:
        assert (out - no_context).abs().max() > 1e-3
    else:
        torch.testing.assert_close(out, no_context, atol=0, rtol=0)


def test_memory_timestep_rule_reaches_the_block_patches(wan, comfy, tmp_path):
    """install_memory / install default to timestep 0 for Wan 2.1; memory_t0=False installs the "shared" ablation; the
    memory_model of the storyboard follows EncoderConfig.memory_timestep."""
    import comfy.sd
    from safetensors.torch import save_file

    from framememory.memory.config import EncoderConfig
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.segment_sampler import memory_model

    dm, adapter = wan
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in dm.state_dict().items()}, str(path))
    model = comfy.sd.load_diffusion_model(str(path))
    dm = model.model.diffusion_model  # the patches are installed for the loaded model's DiT
    x, t, context = _inputs(3, t=3)
    mem = torch.randn(1, 6, dm.dim) * 0.5
    pos = torch.tensor([[[-3, 0, 0], [-3, 2, 2], [-3, 4, 4], [-1, 0, 0], [-1, 2, 2], [-1, 4, 4]]]) * 2

    def run(patched):
        opts = patched.model_options["transformer_options"]
        with torch.no_grad():
            return dm(x, t, context, transformer_options={**opts, "wrappers": patched.wrappers},
                      memory_tokens=mem, memory_positions2=pos)

    with torch.no_grad():
        zero = dm(x, t, context, transformer_options=adapter.install_memory(dm, memory_t0=True),
                  memory_tokens=mem, memory_positions2=pos)
        shared = dm(x, t, context, transformer_options=adapter.install_memory(dm, memory_t0=False),
                    memory_tokens=mem, memory_positions2=pos)
    assert (zero - shared).abs().max() > 1e-3
    torch.testing.assert_close(run(adapter.install_memory(model)), zero, rtol=0, atol=0)
    torch.testing.assert_close(run(adapter.install_memory(model, memory_t0=False)), shared, rtol=0, atol=0)
    for rule, expected in (("zero", zero), ("shared", shared)):
        enc = MemoryEncoder(EncoderConfig(dim=0, memory_timestep=rule), None, rule)  # untrained: the model width
        torch.testing.assert_close(run(memory_model(model, enc)), expected, rtol=0, atol=0)


def test_attach_memory_keeps_input_and_encodes_half_positions(wan):
    _, adapter = wan
    cond = [[torch.zeros(1, 5, 4096), {"pooled_output": None}]]
    pos = torch.tensor([[-1.5, 0.5, 1.5]])
    out = adapter.attach_memory(cond, torch.ones(1, 128), pos)
    mc = out[0][1]["model_conds"]
    assert "model_conds" not in cond[0][1]  # the input conditioning is not mutated
    assert mc[adapter.POSITIONS_KEY].cond.dtype == torch.int64
    assert mc[adapter.POSITIONS_KEY].cond.tolist() == [[[-3, 1, 3]]]
    assert mc[adapter.TOKENS_KEY].cond.shape == (1, 1, 128)
    assert "model_conds" in adapter.attach_memory(out, None, None)[0][1]
    assert adapter.TOKENS_KEY not in adapter.attach_memory(out, None, None)[0][1]["model_conds"]


def _stock_model(dm, tmp_path):
    """``dm``'s weights through the stock diffusion-model loader (a ModelPatcher of ComfyUI's WAN21)."""
    import comfy.sd
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in dm.state_dict().items()}, str(path))
    return comfy.sd.load_diffusion_model(str(path))


def test_memory_conds_stay_whole_in_context_windows(wan, comfy, tmp_path, monkeypatch):
    """ComfyUI's context windows (``model_options["context_handler"]``, as the stock Context Windows nodes set it)
    sample 3 latent frames in windows of 2. ComfyUI 0.33 slices every model cond whose dim 2 has the latent's length,
    here ``memory_positions2`` [B, M, 3]; the memory is the whole past, so every window's forward must get it whole
    (``conds.exempt_from_context_windows``: a RESIZE_COND_ITEM callback registered when sampling starts, whether the
    handler was set before or after the memory patch). Memory still changes the result."""
    import comfy.context_windows as cw
    import comfy.patcher_extension
    import comfy.sample

    from framememory.models.families import wan21 as wan_module

    dm, adapter = wan
    windows, positions_seen, real_pop = [], [], wan_module.pop_memory

    def pop_spy(kwargs, device):
        if adapter.POSITIONS_KEY in kwargs:
            positions_seen.append(tuple(kwargs[adapter.POSITIONS_KEY].shape))
        return real_pop(kwargs, device)

    monkeypatch.setattr(wan_module, "pop_memory", pop_spy)

    def windowed(m):
        m = m.clone()
        m.model_options["context_handler"] = cw.IndexListContextHandler(
            context_schedule=cw.get_matching_context_schedule("standard_static"),
            fuse_method=cw.get_matching_fuse_method("pyramid"), context_length=2, context_overlap=1, dim=2)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "spy",
                               lambda executor, *a, **k: windows.append(a[0].shape[2]) or executor(*a, **k))
        return m

    model = _stock_model(dm, tmp_path)
    g = torch.Generator().manual_seed(4)
    pos_c, neg_c = ([[torch.randn(1, 5, 4096, generator=g) * 0.1, {}]] for _ in range(2))
    latent = torch.zeros(1, 16, 3, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 3)
    tokens = torch.randn(8, dm.dim) * 0.5
    positions = torch.tensor([[-1.5 - 2 * (i // 4), 1.5, 1.5 + (i % 4)] for i in range(8)])
    mem_p, mem_n = (adapter.attach_memory(c, tokens, positions) for c in (pos_c, neg_c))

    def run(m, p, n):
        return comfy.sample.sample(m, noise, 2, 4.0, "euler", "simple", p, n, latent, seed=3, disable_pbar=True)

    before = run(windowed(adapter.install_memory(model)), mem_p, mem_n)  # handler set after the memory patch
    assert 2 in windows and set(windows) <= {2, 3}, windows  # windows of 2 (+ 0.33's causal fix frame after the first)
    assert positions_seen and set(positions_seen) == {(2, 8, 3)}, positions_seen  # cond + uncond, memory whole
    positions_seen.clear()
    after = adapter.install_memory(windowed(model))  # handler set before the memory patch
    torch.testing.assert_close(run(after, mem_p, mem_n), before)
    assert set(positions_seen) == {(2, 8, 3)}
    positions_seen.clear()
    without = run(windowed(adapter.install_memory(model)), pos_c, neg_c)
    assert not positions_seen and (before - without).abs().max() > 1e-3


def test_non_wan_model_is_a_clear_error(comfy):
    from framememory.models import families

    class Fake:
        model = type("M", (), {"diffusion_model": torch.nn.Linear(1, 1)})()

    with pytest.raises(TypeError, match=r"supports wan21, wan22, hunyuan_video so far; this MODEL is Linear"):
        families.install_memory(Fake())
    with pytest.raises(TypeError, match=r"supports wan21, wan22, hunyuan_video so far; this MODEL is Linear"):
        families.install_memory(torch.nn.Linear(1, 1))  # a bare DiT of no family


def test_attention_falls_back_to_sdpa_with_one_line_notice(wan, monkeypatch):
    """Without CUDA (this machine) or without sageattention, a request for sage gives SDPA and one line."""
    import importlib.util

    from framememory.models.attention import attention_override, resolve_attention

    backend, notice = resolve_attention("sage")
    if not torch.cuda.is_available() or importlib.util.find_spec("sageattention") is None:
        assert backend == "sdpa" and notice and "\n" not in notice and "using PyTorch SDPA" in notice
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sageattention" else object())
    backend, notice = resolve_attention("sage")
    assert backend == "sdpa" and "pip install sageattention" in notice
    assert resolve_attention("auto") == ("sdpa", None) and resolve_attention("sdpa") == ("sdpa", None)
    with pytest.raises(ValueError, match="not one of"):
        resolve_attention("flash3")
    dm, _ = wan
    x, t, context = _inputs(2, t=2)
    with torch.no_grad():
        default = dm(x, t, context)
        forced = dm(x, t, context, transformer_options={"optimized_attention_override": attention_override("sdpa")})
    torch.testing.assert_close(default, forced)
