"""The tests every model family passes, in the spirit of diffusers' model tests: a family's test module subclasses
:class:`FamilyContract` with a tiny seeded DiT and its seeded dummy inputs, and the same test methods run for each
family (``tests/test_wan_adapter.py``, ``test_wan22_adapter.py``, ``test_hunyuan_adapter.py``):

* the registry finds the family's module for the bare DiT and for the stock loader's MODEL; its declared geometry
  (latent channels, width, token grid) is the DiT's;
* memory installed without memory in the forward == stock output, bit for bit; memory changes the output; moving
  the memory's positions changes it again;
* memory tokens reach every block (each original block sees ``M`` more tokens) and leave before the head;
* through the stock sampler with CFG: patched without memory == unpatched; memory changes the result; cond and uncond
  arrive in one batched call carrying the memory;
* the timestep rules and memory modes the family declares (``MEMORY_TIMESTEPS``, ``MEMORY_MODES``): the others are
  clear errors naming the family.
"""
from __future__ import annotations

import pytest
import torch
from memory_checks import check_identity_and_position_effect

ALL_MODES = ("frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off")


class FamilyContract:
    """Mixin of the shared family tests. Subclasses (``class TestX(FamilyContract)``) set :attr:`family` and
    :attr:`display_name` and implement :meth:`make_dit`; families whose forward takes more than ``x, t, context`` (or
    whose conditioning carries more than the text) override :meth:`forward_kwargs` / :meth:`cond_extras` (all three
    static methods)."""

    family: str = ""  # models.families name (EncoderConfig.family)
    display_name: str = ""  # how the family's error messages name it

    @staticmethod
    def make_dit():
        """The tiny DiT of the family, seeded (CPU, float32)."""
        raise NotImplementedError

    @staticmethod
    def forward_kwargs(g: torch.Generator) -> dict:
        """Extra forward inputs besides ``x, t, context`` (HunyuanVideo: pooled text, guidance, text mask)."""
        return {}

    @staticmethod
    def cond_extras(g: torch.Generator) -> dict:
        """Extra entries of a CONDITIONING entry's dict (HunyuanVideo: ``pooled_output``)."""
        return {}

    # ---- fixtures and inputs ---------------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def dit(cls, comfy):
        return cls.make_dit()

    @pytest.fixture(scope="class")
    @classmethod
    def stock_model(cls, dit, tmp_path_factory):
        """The tiny DiT saved and loaded back through the stock loader (``comfy.sd.load_diffusion_model``)."""
        import comfy.sd
        from safetensors.torch import save_file

        path = tmp_path_factory.mktemp(cls.family) / f"tiny_{cls.family}.safetensors"
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(path))
        return comfy.sd.load_diffusion_model(str(path))

    def inputs(self, dm, seed: int = 0, frames: int = 3):
        """Seeded ``x [1, C, frames, 8, 12]`` (``frames x 4 x 6`` DiT tokens), ``t [1]``, text ``[1, 5, 4096]`` and
        the family's extra forward inputs."""
        from framememory.models import families

        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, families.family(self.family).LATENT_CHANNELS, frames, 8, 12, generator=g)
        context = torch.randn(1, 5, 4096, generator=g) * 0.1
        return x, torch.tensor([500.0]), context, self.forward_kwargs(g)

    @staticmethod
    def past_memory(dm, count: int = 6, seed: int = 1):
        """Seeded memory tokens ``[1, M, D]`` and twice their past RoPE positions ``[1, M, 3]`` int64."""
        from framememory.models import families

        g = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, count, families.family_for(dm).width(dm), generator=g) * 0.5
        pos = torch.tensor([[[-3 + 2 * (i // 3), 2 * (i % 3), 2 * (i % 3)] for i in range(count)]]) * 2
        return tokens, pos

    # ---- shared tests ----------------------------------------------------------------------------------------------

    def test_registry_finds_the_family_and_its_geometry(self, dit, stock_model):
        from framememory.models import families

        fam = families.family(self.family)
        assert fam.FAMILY == self.family and families.FAMILIES[self.family] is fam
        assert families.family_for(dit) is fam and families.family_for(stock_model) is fam
        assert stock_model.model.latent_format.latent_channels == fam.LATENT_CHANNELS
        assert type(stock_model.model.latent_format) is type(fam.latent_format())
        assert families.model_width(stock_model) == fam.width(dit) == 128
        assert len(fam.VAE_STRIDE) == len(fam.PATCH_SIZE) == 3 and fam.FPS > 0
        x = self.inputs(dit)[0]
        emb = fam.patch_embed(dit, x)
        assert emb.shape == (1, 128, x.shape[2], *fam.token_grid(dit, x)) and emb.dtype == torch.float32
        assert families.patch_embed(stock_model, x).shape == emb.shape
        with pytest.raises(ValueError, match="unknown model family 'wan99'"):
            families.family("wan99")

    def test_no_memory_is_identity_and_memory_and_positions_matter(self, dit):
        from framememory.models.families import install_memory

        x, t, context, kw = self.inputs(dit, seed=2)
        mem, pos = self.past_memory(dit)
        forward = (lambda *a, **k: dit(*a, **k, **kw)) if kw else dit
        check_identity_and_position_effect(forward, x, t, context, install_memory(dit), mem, pos)

    def test_memory_tokens_reach_every_block_and_leave_before_the_head(self, dit):
        """Every block the family patches (``cross_blocks``: the blocks that run) hands its original block ``M`` more
        tokens with memory than without; the output has the stock shape."""
        from framememory.models.families import family_for, install_memory

        x, t, context, kw = self.inputs(dit, seed=3)
        mem, pos = self.past_memory(dit)
        opts, seen = install_memory(dit), {}
        replace = opts["patches_replace"]["dit"]
        for key, patch in list(replace.items()):
            def spy(args, extra, patch=patch, key=key):
                def original(a):
                    seen.setdefault(key, []).append(a["img"].shape[1])
                    return extra["original_block"](a)
                return patch(args, {**extra, "original_block": original})
            replace[key] = spy
        with torch.no_grad():
            plain = dit(x, t, context, transformer_options=opts, **kw)
            out = dit(x, t, context, transformer_options=opts, memory_tokens=mem, memory_positions2=pos, **kw)
        assert len(replace) == family_for(dit).cross_blocks(dit) == len(seen)
        assert all(len(v) == 2 and v[1] - v[0] == mem.shape[1] for v in seen.values()), seen
        assert out.shape == plain.shape == (1, x.shape[1], *x.shape[2:])

    def test_stock_sampler_with_cfg_batches_cond_and_uncond(self, stock_model):
        """Through comfy.sample.sample (stock KSampler path, CFG > 1): patched without memory == unpatched; with memory
        in both conds the result differs, and cond and uncond arrive in one batched call with memory present."""
        import comfy.patcher_extension
        import comfy.sample

        from framememory.models import conds
        from framememory.models.families import family, install_memory

        patched = install_memory(stock_model)
        seen = []

        def spy(executor, *args, **kwargs):
            # x batch, and whether memory is present (a kwarg before our wrapper, in transformer_options after it)
            seen.append((args[0].shape[0], kwargs.get(conds.TOKENS_KEY) is not None or conds.PATCH_KEY in args[-1]))
            return executor(*args, **kwargs)

        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "spy", spy)
        g = torch.Generator().manual_seed(3)
        pos_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, self.cond_extras(g)]]
        neg_c = [[torch.randn(1, 5, 4096, generator=g) * 0.1, self.cond_extras(g)]]
        latent = torch.zeros(1, family(self.family).LATENT_CHANNELS, 2, 8, 8)
        noise = comfy.sample.prepare_noise(latent, 7)

        def run(m, p, n):
            return comfy.sample.sample(m, noise, 3, 4.0, "euler", "simple", p, n, latent, seed=7, disable_pbar=True)

        base = run(stock_model, pos_c, neg_c)
        same = run(patched, pos_c, neg_c)
        tokens = torch.randn(8, 128, generator=g) * 0.5
        positions = torch.tensor([[-1.5 - 2 * (i // 4), 1.5, 1.5 + (i % 4)] for i in range(8)])
        seen.clear()
        mem_p, mem_n = (conds.attach_memory(c, tokens, positions) for c in (pos_c, neg_c))
        withmem = run(patched, mem_p, mem_n)
        torch.testing.assert_close(base, same)
        assert torch.isfinite(withmem).all() and (withmem - base).abs().max() > 1e-3
        assert seen and all(batch == 2 and has for batch, has in seen)  # cond+uncond in one call, memory present

    def test_memory_timestep_rules(self, dit, stock_model):
        """Timestep 0 ("zero") everywhere; the "shared" ablation where the family declares it (it then changes the
        output), else a ValueError naming the family, for the MODEL and the bare DiT alike."""
        from framememory.models.families import family, install_memory

        fam = family(self.family)
        assert fam.MEMORY_TIMESTEPS[0] == "zero" and set(fam.MEMORY_TIMESTEPS) <= {"zero", "shared"}
        assert install_memory(stock_model) is not stock_model
        if "shared" in fam.MEMORY_TIMESTEPS:
            x, t, context, kw = self.inputs(dit, seed=4)
            mem, pos = self.past_memory(dit)
            with torch.no_grad():
                zero, shared = (dit(x, t, context, transformer_options=install_memory(dit, t0), memory_tokens=mem,
                                    memory_positions2=pos, **kw) for t0 in (True, False))
            assert (zero - shared).abs().max() > 1e-3
            return
        for target in (stock_model, dit):
            with pytest.raises(ValueError, match=f"{self.display_name} memory tokens always get timestep 0"):
                install_memory(target, memory_t0=False)

    def test_memory_modes_declared_and_the_others_refused(self):
        """The family's MEMORY_MODES are known modes including the unbounded ones; every other mode is a ValueError
        naming the family, the mode and the modes that work."""
        from framememory.models.families import check_memory_mode, family

        modes = family(self.family).MEMORY_MODES
        assert {"frame_preservation", "sliding_window", "off"} <= set(modes) <= set(ALL_MODES)
        for mode in modes:
            check_memory_mode(self.family, mode)
        for mode in set(ALL_MODES) - set(modes):
            with pytest.raises(ValueError, match=rf"memory_mode {mode} is not implemented for {self.family} models "
                                                 rf"\(only for .*\): use {', '.join(modes[:-1])} or {modes[-1]}"):
                check_memory_mode(self.family, mode)
