"""Issue 25 point 1: ComfyUI's loader plans for the memory tokens (models/memory_plan.py).

Tiny DiTs of every family (Wan 2.1, Wan 2.2 TI2V 5B, HunyuanVideo) loaded through ComfyUI's own loader, patched by
``families.install_memory`` (what the Storyboard and Apply Memory do) and sampled through ``comfy.sample.sample`` (the
stock KSampler path): the ``memory_required`` / ``minimum_memory_required`` that ComfyUI's ``_prepare_sampling`` hands
``load_models_gpu`` grow, with memory in the conds, by exactly ComfyUI's own estimate of the memory tokens counted as
the latent volume they stand for (``BaseModel.memory_required`` of ``prod(PATCH_SIZE)`` latent cells per token, for
cond + uncond and for one); ``_calc_cond_batch`` counts them too (it splits cond and uncond where the free memory fits
the batch without memory but not with it); PackForcing declares the tokens it attends to, not every token it carries;
the object patches leave the unpatched model as it was. Runs on ComfyUI 0.3.75 and 0.33.0 (COMFYUI_DIR).
"""
from __future__ import annotations

import math

import pytest
import torch

FAMILIES = ("wan21", "wan22", "hunyuan_video")
LATENT = {"wan21": (1, 16, 2, 8, 8), "wan22": (1, 48, 2, 8, 8), "hunyuan_video": (1, 16, 2, 8, 8)}


class FirstForward(Exception):
    """Raised by the spy at the first forward: the plan is made by then."""


def _tiny(family: str):
    if family == "wan21":
        from framememory.demo.tiny_models import tiny_wan21_dit

        return tiny_wan21_dit(seed=0)
    if family == "wan22":
        from framememory.demo.tiny_wan22 import tiny_wan22_dit

        return tiny_wan22_dit(seed=0)
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit

    return tiny_hunyuan_dit(seed=0)


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, comfy):
    """(family, MODEL): the tiny DiT's state dict through ComfyUI's ``load_diffusion_model_state_dict``."""
    import comfy.sd

    sd = {k: v.clone() for k, v in _tiny(request.param).state_dict().items()}
    return request.param, comfy.sd.load_diffusion_model_state_dict(sd)


def _conds(family: str, seed: int = 3) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    extra = (lambda: {"pooled_output": torch.randn(1, 768, generator=g)}) if family == "hunyuan_video" else dict
    return ([[torch.randn(1, 5, 4096, generator=g) * 0.1, extra()]],
            [[torch.randn(1, 5, 4096, generator=g) * 0.1, extra()]])


def _memory(model, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` memory tokens in the DiT's width, at past times on a 4 x 4 grid: ``(tokens [M, D], positions [M, 3])``."""
    from framememory.models import families

    dim = families.model_width(model)
    positions = torch.tensor([[-1.5 - 2 * (i // 16), 0.5 + (i // 4) % 4, 0.5 + i % 4] for i in range(count)])
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(5)) * 0.5, positions


def _sample(model, family: str, pos: list, neg: list, spy_batches: list | None = None, stop: bool = True):
    """``comfy.sample.sample`` (cfg 4, 1 Euler step) of a tiny latent; every ``load_models_gpu`` call of the patched
    model is recorded as ``(memory_required, minimum_memory_required)``; with ``stop`` the first forward raises
    :class:`FirstForward` after recording its batch in ``spy_batches``."""
    import comfy.model_management
    import comfy.patcher_extension
    import comfy.sample

    plans, load = [], comfy.model_management.load_models_gpu

    def record(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, **kw):
        if models and models[0] is m:
            plans.append((memory_required, minimum_memory_required))
        return load(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                    minimum_memory_required=minimum_memory_required, **kw)

    def spy(executor, *args, **kwargs):
        if spy_batches is not None:
            spy_batches.append(int(args[0].shape[0]))
        if stop:
            raise FirstForward
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    latent = torch.zeros(LATENT[family])
    comfy.model_management.load_models_gpu = record
    try:
        comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 7), 1, 4.0, "euler", "simple", pos, neg, latent,
                            seed=7, disable_pbar=True)
    except FirstForward:
        pass
    finally:
        comfy.model_management.load_models_gpu = load
    return plans, m


def _cell_bytes(model) -> float:
    """ComfyUI's own estimate for one latent cell at batch 1 (``BaseModel.memory_required`` of ``[1, C, 1, 1, 1]``)."""
    return model.model.memory_required([1, 4, 1, 1, 1])


def test_prepare_sampling_plans_the_memory_tokens(loaded):
    """``load_models_gpu`` gets ``memory_required`` (cond + uncond) and ``minimum_memory_required`` (one) grown by
    exactly 2 x and 1 x ComfyUI's estimate of M tokens x ``prod(PATCH_SIZE)`` latent cells; without memory in the
    conds the patched model's plan is the unpatched model's."""
    from framememory.models import conds, families

    family, model = loaded
    patched = families.install_memory(model)
    volume = math.prod(families.family_for(model).PATCH_SIZE)
    pos, neg = _conds(family)
    stock, _ = _sample(model, family, pos, neg)
    plain, _ = _sample(patched, family, pos, neg)
    count = 40
    tokens, positions = _memory(model, count)
    mem, _ = _sample(patched, family, conds.attach_memory(pos, tokens, positions),
                     conds.attach_memory(neg, tokens, positions))
    assert len(stock) == len(plain) == len(mem) == 1, (stock, plain, mem)
    assert plain == stock
    cell = _cell_bytes(patched)
    assert cell > 0
    grown = (mem[0][0] - plain[0][0], mem[0][1] - plain[0][1])
    assert grown == (pytest.approx(2 * count * volume * cell, rel=1e-9), pytest.approx(count * volume * cell, rel=1e-9))
    # the same figure the pack's pre-flight and benchmarks use
    shape = LATENT[family]
    from framememory.models.memory_plan import declared_bytes

    assert declared_bytes(patched, shape, count, volume, batch=2) == pytest.approx(grown[0], rel=1e-9)


def test_cond_batching_counts_the_memory_tokens(loaded, monkeypatch):
    """``samplers._calc_cond_batch`` batches cond + uncond while 1.5 x ``memory_required`` of the batch fits the free
    memory: with a free memory between the batch's need without and with the memory tokens, the patched model runs
    cond and uncond together without memory and one at a time with it; the patched model, once unloaded, leaves the
    unpatched model's counted conds as they were."""
    import comfy.model_management

    from framememory.models import conds, families

    family, model = loaded
    patched = families.install_memory(model)
    volume = math.prod(families.family_for(model).PATCH_SIZE)
    pos, neg = _conds(family)
    _sample(model, family, pos, neg)  # the unpatched model loaded (a patched clone loaded before is unloaded)
    original = tuple(model.model.memory_usage_factor_conds)
    assert conds.PLAN_KEY not in original
    count, shape = 40, list(LATENT[family])
    cell = _cell_bytes(patched)
    need = patched.model.memory_required([2, *shape[1:]])  # cond + uncond without memory
    free = 1.5 * (need + count * volume * cell)  # between: fits without memory, not with 2 x M tokens
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *a, **k: free)
    tokens, positions = _memory(model, count)
    without, with_memory = [], []
    _sample(patched, family, pos, neg, without)
    _sample(patched, family, conds.attach_memory(pos, tokens, positions), conds.attach_memory(neg, tokens, positions),
            with_memory)
    assert without == [2] and with_memory == [1], (without, with_memory)
    _sample(model, family, pos, neg)  # loading the unpatched model unloads the patched clone
    assert tuple(model.model.memory_usage_factor_conds) == original
    assert conds.PLAN_KEY not in model.model.memory_usage_shape_process


def test_pack_forcing_declares_the_attended_tokens(comfy):
    """PackForcing carries every compressed mid block in its conds but attends to the sink, the recent window and the
    top-K blocks: ``attach_memory`` declares those (``[1, M', 0]``, no storage), Apply Memory's conds hold them."""
    from framememory.models import conds

    blocks = torch.tensor([-1] * 6 + [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [-1] * 6)  # sink, 4 mid blocks, recent
    pack = torch.tensor([2, 2, 1, 1])  # top-K 2
    tokens, positions = torch.randn(len(blocks), 8), torch.zeros(len(blocks), 3)
    out = conds.attach_memory([[torch.zeros(1, 5, 8), {}]], tokens, positions, None,
                              {conds.BLOCKS_KEY: blocks, conds.PACK_KEY: pack})
    plan = out[0][1]["model_conds"][conds.PLAN_KEY].cond
    assert tuple(plan.shape) == (1, 6 + 2 * 4 + 6, 0) and plan.numel() == 0
    assert conds.attended_tokens(len(blocks), blocks, torch.tensor([0, 2, 1, 1])) == len(blocks)  # top-K off: all
    assert conds.PLAN_KEY not in conds.attach_memory(out, None, None)[0][1]["model_conds"]


W, H = 128, 64  # the tiny Wan 2.1 models' storyboard size (tests/test_memory_off.py)


@pytest.fixture(scope="module")
def start(tiny_wan):
    """A 13-frame history of bikes.mp4 at 128x64 with the tiny encoder (frame_preservation tokens)."""
    from framememory.models.history_writer import history_from_frames

    model, vae, encoder, _, video = tiny_wan
    return history_from_frames(model, vae, encoder, video[:13], 4, 16.0, W, H)[0]


@pytest.mark.parametrize("mode", ["frame_preservation", "pack_forcing", "video_ssm", "sliding_window"])
def test_storyboard_plans_its_memory_in_every_mode(tiny_wan, start, mode):
    """One Storyboard segment after the history, per memory mode: every ``load_models_gpu`` of the patched DiT for
    sampling asks for the unpatched plan of the segment's latent plus 2 x / 1 x the memory tokens the segment attends
    to (the report's ``memory_tokens``) at ComfyUI's per-cell estimate."""
    import dataclasses

    import comfy.model_management

    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, _ = tiny_wan
    encoder = MemoryEncoder.untrained() if mode == "video_ssm" else encoder  # the tiny file has no state modules
    history = dataclasses.replace(start, mode=mode, encoder=encoder)
    plans, load = [], comfy.model_management.load_models_gpu

    def record(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, **kw):
        if minimum_memory_required is not None:  # only _prepare_sampling passes a minimum
            plans.append((models[0], memory_required, minimum_memory_required))
        return load(models, memory_required=memory_required, force_patch_weights=force_patch_weights,
                    minimum_memory_required=minimum_memory_required, **kw)

    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    comfy.model_management.load_models_gpu = record
    try:
        _, _, report = run_storyboard(model, vae, clip, encoder, neg, parse_storyboard("0.8 | a cyclist"),
                                      SamplerSettings(2, 3.0, "euler", "simple", 1), W, H, 16.0, 4, history, mode=mode)
    finally:
        comfy.model_management.load_models_gpu = load
    tokens = report["segments"][0]["memory_tokens"]
    assert tokens > 0 and len(plans) == 1, (tokens, plans)
    patched, required, minimum = plans[0]
    assert patched is not model and patched.is_clone(model)
    shape = [1, 16, 4, H // 8, W // 8]
    cell = _cell_bytes(model)
    base2, base1 = model.model.memory_required([2, *shape[1:]]), model.model.memory_required(shape)
    assert required == pytest.approx(base2 + 2 * tokens * 4 * cell, rel=1e-9)
    assert minimum == pytest.approx(base1 + tokens * 4 * cell, rel=1e-9)


def test_apply_memory_declares_and_checks_the_memory(tiny_wan, start):
    """Apply Memory (stock KSampler path): the patched model's plan counts the memory's tokens; a memory of another
    DiT width or latent format (e.g. from Load Memory) is refused before anything is patched, naming the fix."""
    import dataclasses

    from framememory.memory.history import HistoryBuffer
    from framememory.nodes.memory_nodes import ApplyMemory

    model, _, _, clip, _ = tiny_wan
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a cat"))
    patched, pos, neg = ApplyMemory.execute(model, start, cond, cond).args
    tokens = start.conds(model).attended
    plain, _ = _sample(patched, "wan21", cond, cond)
    mem, _ = _sample(patched, "wan21", pos, neg)
    assert tokens > 0 and mem[0][0] - plain[0][0] == pytest.approx(2 * tokens * 4 * _cell_bytes(model), rel=1e-9)

    def with_segments(change):
        return dataclasses.replace(start, history=HistoryBuffer([change(s) for s in start.history.segments]))

    wide = with_segments(lambda s: dataclasses.replace(s, encoded={
        k: (torch.zeros(v[0].shape[0], 3072), *v[1:]) for k, v in s.encoded.items()}))
    with pytest.raises(ValueError, match="tokens are 3072 wide but this wan21 model's width is 128.*another DiT"):
        ApplyMemory.execute(model, wide, cond, cond)
    other = with_segments(lambda s: dataclasses.replace(s, latent=torch.zeros(48, *s.latent.shape[1:])))
    with pytest.raises(ValueError, match="latents are 48 channels.*another model family or VAE"):
        ApplyMemory.execute(model, other, cond, cond)


# ------------------------------------------------------------------------------------------------ VRAM pre-flight

CARD_FREE = 11.5 * 2 ** 30  # what ComfyUI can free on a 12 GiB card beside the 0.5 GiB CUDA context
REAL = {  # benchmarks/vram_estimate.py's models, as ComfyUI's classes build them (shapes only, meta device)
    "wan21_1.3b_bf16": ("wan", dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30), "bfloat16", 16),
    "wan21_14b_fp8": ("wan", dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), "float8_e4m3fn", 16),
    "wan22_5b_bf16": ("wan", dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30), "bfloat16", 48),
    "wan22_5b_fp8": ("wan", dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30), "float8_e4m3fn", 48),
    "hunyuan_video_fp8": ("hunyuan", dict(hidden_size=3072, num_heads=24, depth=20, depth_single_blocks=40),
                          "float8_e4m3fn", 16),
}


def _real_size(name: str):
    """A real-size MODEL on the meta device (no weights): the DiT's state dict shapes through ComfyUI's own detection
    (``model_config_from_unet``) and ``get_model``, as the stock loader builds it."""
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.ops

    kind, dims, dtype, channels = REAL[name]
    weight = getattr(torch, dtype)
    ops = comfy.ops.disable_weight_init if weight == torch.bfloat16 else comfy.ops.manual_cast
    if kind == "wan":
        from comfy.ldm.wan.model import WanModel

        dm = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=channels, out_dim=channels,
                      freq_dim=256, text_dim=4096, qk_norm=True, cross_attn_norm=True, eps=1e-6, device="meta",
                      dtype=weight, operations=ops, **dims)
    else:
        from comfy.ldm.hunyuan_video.model import HunyuanVideo
        from framememory.demo.tiny_hunyuan import TINY_DIT, _new_params

        dm = HunyuanVideo(**{**TINY_DIT, **_new_params(), **dims}, device="meta", dtype=weight, operations=ops)
    sd = dm.state_dict()
    cfg = comfy.model_detection.model_config_from_unet(sd, "")
    cfg.set_inference_dtype(weight, None if weight == torch.bfloat16 else torch.bfloat16)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(cfg.get_model(sd, "", device="meta"), load_device=cpu, offload_device=cpu)


def _encoder(model, mode: str, rate: str):
    from framememory.memory.config import EncoderConfig
    from framememory.models import families
    from framememory.models.encoding import MemoryEncoder
    from framememory.memory.designs.video_ssm import DEFAULTS as SSM_DEFAULTS

    adapter, dim = families.family_for(model), families.model_width(model)
    common = dict(family=adapter.FAMILY, dim=dim, rate=rate, latent_channels=adapter.LATENT_CHANNELS,
                  vae_stride=adapter.VAE_STRIDE, patch_size=adapter.PATCH_SIZE)
    if mode != "video_ssm":
        return MemoryEncoder(EncoderConfig(**common), {}, "fp.safetensors")
    blocks = len(families.diffusion_model(model).blocks)
    return MemoryEncoder(EncoderConfig(**common, memory_type="video_ssm", use_hr=False, dit_blocks=blocks,
                                       ssm_heads=dim // 128, ssm_key_dim=64, **SSM_DEFAULTS), {}, "ssm.safetensors")


def test_vram_preflight_tells_what_the_table_says(comfy, repo_root, monkeypatch):
    """The Storyboard's VRAM pre-flight (``check_run_inputs`` -> ``models.vram_check.check_vram``) on the real-size
    models of benchmarks/vram_estimate.py (ComfyUI's classes on the meta device, ComfyUI's NVIDIA attention branch, a
    12 GiB card): every 120 s row of benchmarks/results/vram_estimate.json that says why it cannot fit is refused
    before anything runs, naming the step and the same kind of setting; every row that fits (with a reserve or not)
    passes."""
    import json

    import comfy.model_management

    from framememory.models.vram_check import check_vram

    monkeypatch.setattr(comfy.model_management, "pytorch_attention_flash_attention", lambda: True)
    data = json.loads((repo_root / "benchmarks" / "results" / "vram_estimate.json").read_text())
    rows = [{**r, "mode": r.get("mode", "frame_preservation")} for r in data["rows"] + data["mode_rows"]
            if r["history_s"] == 120 and r["rate"] != "2x2x2 last 20 s + 4x4x2"]
    models, checked = {}, 0
    for r in rows:
        model = models.setdefault(r["model"], _real_size(r["model"]))
        mode, rate = r["mode"], "4x4x2" if r["rate"] == "-" else r["rate"]
        spec = data["models"][r["model"]]  # vram_estimate's MODELS: size and fps
        args = (model, _encoder(model, mode, rate), mode, spec["width"], spec["height"], float(spec["fps"]), 4, 120.0,
                int(CARD_FREE))
        if "why_not" in r:
            with pytest.raises(ValueError, match="Set instead: ") as err:
                check_vram(*args)
            step = "absorb" if "absorb" in r["why_not"] else "DiT step"
            assert step in str(err.value), (r["model"], mode, rate, str(err.value))
        else:
            need = check_vram(*args)
            assert need["sample"] > 0, (r["model"], mode, rate)
        checked += 1
    assert checked >= 13 and any("why_not" in r for r in rows)
