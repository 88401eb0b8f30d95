"""Measurement at real size without a GPU (benchmarks/vram_estimate.py, docs/design.md section 6): ComfyUI's own model
classes built under ``torch._subclasses.fake_tensor.FakeTensorMode`` and run in inference mode under
``torch.distributed._tools.mem_tracker.MemTracker`` (:func:`peak_tracker_class`), one phase of the storyboard loop at
a time: text encoding, a DiT step with memory tokens through the product path, VAE decode and LR encode, the memory
encoder's append, and the bounded memory modes' DiT step and VideoSSM absorb. Every function returns bytes.
Needs ComfyUI importable (``framememory.headless.comfy_import.import_comfyui(cpu=True, sdpa=True)``)."""
from __future__ import annotations

import dataclasses
import math
from copy import deepcopy
from types import SimpleNamespace

from vram_specs import (CONSTANT_LIMIT, HUNYUAN_DIT, HUNYUAN_VAE, MIXED, MODE_RATE, SEGMENT_LATENTS, SSM_KEY_DIM,
                        SSM_VALUE_DIM, WAN_VAE)


def attention_name() -> str:
    import comfy.ldm.modules.attention as attn

    return attn.optimized_attention.__name__


# ------------------------------------------------------------------------------------------------ measuring


def peak_tracker_class():
    """:class:`torch.distributed._tools.mem_tracker.MemTracker` keeping only the global peak (the stock class walks
    every module's stats on every op, ~5x slower on a 40-block DiT) and installing no gradient hooks (inference;
    ComfyUI's fp8 ``scale_weight`` parameters do not require grad). Same storage accounting otherwise."""
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

    class PeakTracker(MemTracker):
        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = deepcopy(snap)

        def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    return PeakTracker


def measure(run, *external, tracker=None) -> dict:
    """Run ``run()`` in inference mode under a tracker and return the peak, in bytes.

    Args:
        external: modules (weights) and input tensors that exist before the call (tracked as parameters / other).
        tracker: a MemTracker class (default :func:`peak_tracker_class`).
    Returns:
        ``{"weights": parameters + buffers, "inputs": external tensors, "act": peak - weights - inputs, "peak"}``
        at the moment of the peak, all in bytes (activations include the casts of fp8 weights to the compute dtype).
    """
    import torch

    class Call(torch.nn.Module):  # one root module: MemTracker refuses a top-level module called twice
        def forward(self):
            return run()

    mt = (tracker or peak_tracker_class())()
    mt.track_external(*external)
    with mt, torch.inference_mode():
        Call()()
    snap = next(iter(mt.get_tracker_snapshot("peak").values()))
    get = {str(getattr(k, "name", k)): v for k, v in snap.items()}
    weights, inputs, total = get.get("PARAM", 0) + get.get("BUFFER", 0), get.get("OTH", 0), get["Total"]
    return {"weights": weights, "inputs": inputs, "act": total - weights - inputs, "peak": total}


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode()


def dtype_of(name: str):
    import torch

    return getattr(torch, name)


# ------------------------------------------------------------------------------------------------ the DiT


def build_dit(spec: dict):
    """ComfyUI's DiT for ``spec`` (``MODELS`` entry) as ComfyUI builds it for that weight file: bf16 weights with
    ``disable_weight_init`` (weight dtype == compute dtype), fp8 weights with ``manual_cast`` (bf16 compute, every
    layer casts its weight per call). Build under a fake mode for real size. Returns the module (on ``cpu``)."""
    import comfy.ops
    import torch

    weight = dtype_of(spec["weight"])
    ops = comfy.ops.disable_weight_init if weight == torch.bfloat16 else comfy.ops.manual_cast
    d = dict(spec["dit"])
    if spec["kind"] == "wan":
        from comfy.ldm.wan.model import WanModel

        return WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=spec["channels"],
                        out_dim=spec["channels"], freq_dim=256, text_dim=4096, qk_norm=True, cross_attn_norm=True,
                        eps=1e-6, operations=ops, device="cpu", dtype=weight, **d)
    from comfy.ldm.hunyuan_video.model import HunyuanVideo

    return HunyuanVideo(operations=ops, device="cpu", dtype=weight, **HUNYUAN_DIT, **d)


def dit_options(spec: dict, dm) -> dict:
    """``transformer_options`` of the product: the memory patches on the bare DiT (``families.install_memory``: the
    family's memory wrapper + a replace patch on every block), plus the SDPA override."""
    from framememory.models.attention import attention_override
    from framememory.models.families import install_memory

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():  # HunyuanVideo's install probes ComfyUI's apply_mod on real numbers
        options = install_memory(dm)
    return {**options, "optimized_attention_override": attention_override("sdpa")}


def encoder_config(spec: dict, rate: str):
    from framememory.memory.config import EncoderConfig

    family = {"wan": "wan21", "wan22": "wan22", "hunyuan": "hunyuan_video"}[spec["adapter"]]
    dim = spec["dit"].get("dim", spec["dit"].get("hidden_size"))
    return EncoderConfig(family=family, dim=dim, rate=rate, latent_channels=spec["channels"],
                         vae_stride=spec["stride"], patch_size=(1, 2, 2))


def history_tokens(spec: dict, seconds: int, rate: str) -> tuple[int, tuple, int]:
    """Memory tokens of ``seconds`` of history as the storyboard holds it (benchmarks/tokens.py, ``segments``):
    ``(M, memory grid (Tm, Hm, Wm), history latent frames)``. ``rate`` :data:`MIXED`: the last 20 s at 2x2x2, the
    older history at 4x4x2 (grid ``(0, 0, 0)``: no single grid)."""
    from framememory.memory.grid import memory_grid
    from framememory.memory.storyboard import Shot, plan_segments

    if seconds == 0:
        return 0, (0, 0, 0), 0
    if rate == MIXED:
        recent = min(seconds, 20)
        m = history_tokens(spec, recent, "2x2x2")[0] + history_tokens(spec, seconds, "4x4x2")[0] - history_tokens(
            spec, recent, "4x4x2")[0]
        return m, (0, 0, 0), history_tokens(spec, seconds, "4x4x2")[2]
    cfg = encoder_config(spec, rate)
    ft, fh, fw = spec["stride"]
    plans = plan_segments([Shot(0, "x", 0.0, float(seconds))], spec["fps"], SEGMENT_LATENTS, ft)
    lat = sum(p.latent_frames for p in plans)
    grid = memory_grid((lat, spec["height"] // fh, spec["width"] // fw), cfg)
    return math.prod(grid), grid, lat


def dit_inputs(spec: dict, batch: int, seconds: int, rate: str) -> dict:
    """Inputs of one DiT call: latent ``x`` ``[B, C, 4, h, w]``, timestep ``[B]``, text ``[B, L, 4096]`` (Wan: 512
    umt5 tokens; HunyuanVideo: ``text_len`` Llama tokens + pooled ``y`` ``[B, 768]`` + guidance ``[B]``), and the
    memory conds ``memory_tokens`` ``[B, M, D]`` / ``memory_positions2`` ``[B, M, 3]`` int64 (none for 0 s)."""
    import torch

    from framememory.memory.grid import memory_positions

    ft, fh, fw = spec["stride"]
    bf16 = torch.bfloat16
    kw = dict(x=torch.empty(batch, spec["channels"], SEGMENT_LATENTS, spec["height"] // fh, spec["width"] // fw, dtype=bf16),
              timestep=torch.empty(batch), context=torch.empty(batch, spec["text_len"], 4096, dtype=bf16))
    if spec["kind"] == "hunyuan":
        kw.update(y=torch.empty(batch, 768, dtype=bf16), guidance=torch.empty(batch))
    m, grid, lat = history_tokens(spec, seconds, rate)
    if m:
        cfg = encoder_config(spec, "4x4x2" if rate == MIXED else rate)
        pos2 = (memory_positions(grid, cfg, t_start=-lat) * 2).round().long()  # [M, 3], as conds.attach_memory
        pos2 = torch.zeros(m, 3, dtype=torch.long) if rate == MIXED else pos2  # positions do not change memory
        kw.update(memory_tokens=torch.empty(batch, m, cfg.dim, dtype=bf16), memory_positions2=pos2[None].expand(batch, -1, -1))
    return kw


def dit_step(spec: dict, dm, opts: dict, batch: int, seconds: int, rate: str) -> dict:
    """Peak of one DiT forward (one sampling step's model call) with ``batch`` (2 = cond + uncond as ComfyUI
    batches CFG), ``seconds`` of history at ``rate``. Call under the fake mode ``dm`` was built in; returns
    :func:`measure`'s dict plus ``M`` (memory tokens) and ``N`` (video tokens)."""
    kw = dit_inputs(spec, batch, seconds, rate)
    x, t, ctx = kw.pop("x"), kw.pop("timestep"), kw.pop("context")
    out = measure(lambda: dm(x, t, ctx, transformer_options=opts, **kw), dm, x, t, ctx, *kw.values())
    n = SEGMENT_LATENTS * (x.shape[3] // 2) * ((x.shape[4] + 1) // 2)
    return {**out, "M": int(kw["memory_tokens"].shape[1]) if "memory_tokens" in kw else 0, "N": n}


# ------------------------------------------------------------------------------------------------ VAE, encoder, text


class default_dtype:
    """Context: ``torch.set_default_dtype`` (modules without a dtype argument, e.g. the VAEs, are built in the
    dtype ComfyUI casts them to; ``.to()`` does not work under the fake mode)."""

    def __init__(self, dtype) -> None:
        self.dtype = dtype

    def __enter__(self):
        import torch

        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        import torch

        torch.set_default_dtype(self.old)


def build_vae(spec: dict):
    """The family's VAE as ``comfy.sd.VAE`` builds it, in bf16 (``vae_dtype`` on a bf16-capable NVIDIA card):
    Wan 2.1 ``WanVAE`` dim 96, Wan 2.2 ``vae2_2.WanVAE`` dim 160 / decoder 256, HunyuanVideo ``AutoencoderKL``."""
    import torch

    with default_dtype(torch.bfloat16):
        if spec["vae"] == "wan21":
            from comfy.ldm.wan.vae import WanVAE

            return WanVAE(dim=96, **WAN_VAE)
        if spec["vae"] == "wan22":
            from comfy.ldm.wan.vae2_2 import WanVAE

            return WanVAE(dim=160, dec_dim=256, **{**WAN_VAE, "z_dim": 48})
        from comfy.ldm.models.autoencoder import AutoencoderKL

        return AutoencoderKL(ddconfig=HUNYUAN_VAE, embed_dim=16)


def exact_stream(spec: dict) -> bool:
    """``models.vae_stream``: ComfyUI's Wan 2.1 VAE runs segments with its causal cache (exact mode); the others are
    decoded / encoded with 4 latent frames of context (context mode)."""
    return spec["vae"] == "wan21"


def vae_decode(spec: dict, vae, tiled: bool) -> dict:
    """Peak of decoding one segment the way ``models.vae_stream.VideoStream`` calls ``VAE.decode``: exact mode
    ``[1, C, 4, h, w]``; context mode ``[1, C, 8, h, w]`` (4 context + 4 new latent frames). ``tiled``: one tile of
    ComfyUI's OOM fallback ``decode_tiled_3d`` (spatial tile ``256 // spatial stride`` latent cells, all frames),
    whose output is made float32 on the device by its ``decode_fn``."""
    import torch

    ft, fh, fw = spec["stride"]
    t = SEGMENT_LATENTS * (1 if exact_stream(spec) else 2)
    h, w = spec["height"] // fh, spec["width"] // fw
    if tiled:
        h = w = 256 // fh
    z = torch.empty(1, spec["channels"], t, h, w, dtype=torch.bfloat16)
    run = (lambda: vae.decode(z).float()) if tiled else (lambda: vae.decode(z))
    return {**measure(run, vae, z), "latent": list(z.shape)}


def lr_size(spec: dict, rate: str) -> tuple[int, int, int]:
    """``(LR frames of one continuing 1 s segment, H_lr, W_lr)`` pixels (``memory.encoder.lr_clip``)."""
    from framememory.memory.encoder import lr_frames_per_span

    cfg = encoder_config(spec, rate)
    _, hm, wm = history_tokens(spec, 20, rate)[1]
    ft, fh, fw = spec["stride"]
    return lr_frames_per_span(SEGMENT_LATENTS, cfg, stream_start=False)[1], hm * 2 * fh, wm * 2 * fw


def vae_encode_lr(spec: dict, vae, rate: str) -> dict:
    """Peak of the LR branch's VAE encode of one segment's LR clip (``VAE.encode`` as ``VideoStream`` calls it):
    exact mode encodes the part with its first frame repeated (``1 + F`` frames, the 1-frame chunk skipped there,
    computed here); context mode encodes ``1 + 4 * 3`` context frames + the part. Input ``[1, 3, F', H_lr, W_lr]``."""
    import torch

    f, h, w = lr_size(spec, rate)
    f = 1 + f if exact_stream(spec) else 1 + spec["stride"][0] * 3 + f
    x = torch.empty(1, 3, f, h, w, dtype=torch.bfloat16)
    return {**measure(lambda: vae.encode(x), vae, x), "pixels": list(x.shape)}


def encoder_append(spec: dict, dm, rate: str) -> dict:
    """Peak of ``HistoryEncoder`` (Fig. 2, paper HR widths 64, 128, 256, 512) on one segment's latent
    ``[1, C, 4, h, w]`` fp32 and its LR latent ``[1, C, Tm, 2 Hm, 2 Wm]``, the LR branch through the DiT's own patch
    embedding (the family's ``patch_embed``), built with ``comfy.ops.manual_cast`` as ``models.encoding`` builds it.
    Returns :func:`measure`'s dict plus ``encoder_bytes`` (the encoder's own weights)."""
    import comfy.model_management
    import comfy.ops
    import torch

    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.families import family_for

    cfg = encoder_config(spec, rate)
    net = HistoryEncoder(cfg, ops=comfy.ops.manual_cast).eval()
    adapter = family_for(dm)
    ft, fh, fw = spec["stride"]
    lat = torch.empty(1, spec["channels"], SEGMENT_LATENTS, spec["height"] // fh, spec["width"] // fw)
    tm, hm, wm = net.grid(lat)
    lr = torch.empty(1, spec["channels"], tm, hm * 2, wm * 2)
    out = measure(lambda: net(lat, lr, embed=lambda z: adapter.patch_embed(dm, z, device=None)), net, lat, lr)
    return {**out, "encoder_bytes": comfy.model_management.module_size(net), "net": net}


def build_text_encoder(spec: dict):
    """The text encoder as ComfyUI builds it from the Comfy-Org fp8-scaled files: umt5-xxl (24 layers, d_model 4096,
    d_ff 10240, 64 heads; Linear weights fp8 e4m3fn + scale, embedding and norms bf16), or HunyuanVideo's CLIP-L +
    LLaVA-Llama-3-8B (Linear weights fp8 + scale)."""
    import torch

    bf16, fp8 = torch.bfloat16, torch.float8_e4m3fn
    if spec["te"] == "umt5":
        import comfy.text_encoders.wan

        return comfy.text_encoders.wan.te(dtype_t5=bf16, t5xxl_scaled_fp8=fp8)(device="cpu", dtype=bf16)
    import comfy.text_encoders.hunyuan_video

    return comfy.text_encoders.hunyuan_video.hunyuan_video_clip(dtype_llama=bf16, llama_scaled_fp8=fp8)(device="cpu", dtype=bf16)


def text_encode(spec: dict, te) -> dict:
    """Peak of ``encode_token_weights`` for one prompt (positive and negative are encoded one after the other):
    umt5 pads to its ``min_length`` 512 tokens; HunyuanVideo: ``text_len`` Llama tokens + 77 CLIP-L tokens."""
    if spec["te"] == "umt5":
        tokens = {"umt5xxl": [[(5, 1.0)] * 40 + [(1, 1.0)] + [(0, 1.0)] * 471]}
        return measure(lambda: te.encode_token_weights(tokens), te)
    llama = [[(128000, 1.0)] + [(5, 1.0)] * (spec["text_len"] - 1)]
    clip_l = [[(49406, 1.0)] + [(320, 1.0)] * 75 + [(49407, 1.0)]]
    # HunyuanVideoClipModel.encode_token_weights runs these two one after the other; its template cropping between
    # them reads the attention mask's values, which fake tensors do not have
    return measure(lambda: (te.llama.encode_token_weights(llama), te.clip_l.encode_token_weights(clip_l)), te)


def load_list(module) -> list[tuple[int, int, bool, str]]:
    """``[(offload bytes, bytes, castable, name)]`` of the leaf modules ComfyUI's ``ModelPatcher._load_list`` would
    move (its own code, run on the fake module); castable = the module can stream its weights (``comfy_cast_weights``)."""
    import comfy.model_patcher

    rows = comfy.model_patcher.ModelPatcher._load_list(SimpleNamespace(model=module, patches={}))
    return [(int(off), int(mem), hasattr(m, "comfy_cast_weights"), n) for off, mem, n, m, _ in rows]


def _real_inputs(kw: dict) -> dict:
    import torch

    return {k: (torch.randn(x.shape).to(x.dtype) if x.is_floating_point() else x.contiguous()) for k, x in kw.items()}



# ------------------------------------------------------------------------------------------------ bounded memory modes


def mode_config(spec: dict, mode: str):
    """The resolved ``EncoderConfig`` of ``mode`` for ``spec`` as ``models.memory_modes.mode_config`` makes it from an
    encoder file of that type: PackForcing with :data:`PACK_DEFAULTS` (S 2, R 2, top-K 16) at :data:`MODE_RATE`,
    VideoSSM with :data:`SSM_DEFAULTS` (S 1, R 3) and trained state modules on every DiT block
    (``ssm_heads = D / 128``, ``ssm_key_dim`` 64)."""
    from framememory.memory.designs.pack_forcing import DEFAULTS as PACK_DEFAULTS
    from framememory.memory.designs.video_ssm import DEFAULTS as SSM_DEFAULTS

    cfg = encoder_config(spec, MODE_RATE)
    if mode == "pack_forcing":
        return dataclasses.replace(cfg, memory_type=mode, **PACK_DEFAULTS)
    return dataclasses.replace(cfg, memory_type=mode, dit_blocks=spec["dit"]["num_layers"], use_hr=False,
                               ssm_heads=cfg.dim // SSM_VALUE_DIM, ssm_key_dim=SSM_KEY_DIM, **SSM_DEFAULTS)


def mode_layout(spec: dict, seconds: int, mode: str) -> dict:
    """The memory conds of ``mode`` after ``seconds`` of history, as plain lists (computed outside the fake mode with
    ``memory.designs.pack_forcing``'s own functions, ``memory_inputs``' order sink, mid, recent): ``positions2`` ``[M, 3]`` (twice
    the RoPE positions), ``blocks`` ``[M]`` (PackForcing's labels, else None), ``pack`` ``(top_k, rt, S, R)``,
    ``carried`` M (tokens in the conds) and ``attended`` M' (after PackForcing's top-K, ``repack_positions``)."""
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from framememory.memory.designs import pack_forcing as packing
    from framememory.memory.grid import memory_positions

    cfg, pf = mode_config(spec, mode), mode == "pack_forcing"
    _, grid, lat = history_tokens(spec, seconds, MODE_RATE)
    ht, wt = spec["height"] // spec["stride"][1] // 2, spec["width"] // spec["stride"][2] // 2
    rt = cfg.patch_size[0] * cfg.rate[2] if pf else 1
    with unset_fake_temporarily():
        s, r = packing.partition_frames(lat, cfg.sink_latent_frames, cfg.overlap_latent_frames)

        def frames(n: int, t0: int):  # packing.uncompressed: n latent frames at rate 1x1x1 from time t0
            pos = memory_positions((n, ht, wt), dataclasses.replace(cfg, rate=(1, 1, 1)), float(t0)).double()
            return (torch.empty(pos.shape[0], 0), pos) if n else None

        mid = None
        if pf:
            comp = memory_positions(grid, cfg, t_start=-lat)
            mid = packing.mid_partition(torch.empty(comp.shape[0], 0), comp, lat, s, r, rt)
        _, pos, blocks = packing.assemble(frames(s, -lat), mid, frames(r, -r))
        nb = int(blocks.max()) + 1 if pf else 0
        kept = min(nb, cfg.top_k) if cfg.top_k > 0 else nb
        index, _ = packing.repack_positions(pos, blocks, torch.arange(nb - kept, nb), rt, r, s)
        return {"positions2": (pos * 2).round().long().tolist(), "blocks": blocks.tolist() if pf else None,
                "pack": [cfg.top_k if pf else 0, rt, s, r], "carried": int(pos.shape[0]),
                "attended": int(index.numel()), "cfg": cfg}


class fake_constants:
    """Context, inside the fake mode: tensors made with ``torch.tensor`` keep their values (FakeTensor constants up to
    :data:`CONSTANT_LIMIT` elements instead of 1), and so does what is computed from them alone, so the product's
    ``pack_context`` / ``repack_positions`` / ``state_read`` read the labels, window sizes and positions of the conds
    as on real tensors. PackForcing's top-K choice itself depends on the affinity scores' values, which fake tensors
    do not have: ``packing.select_blocks`` runs (its allocations count) and then the most recent K blocks are kept
    (every block has the same token count, so which K does not change memory). ``active`` False: does nothing (real
    tensors)."""

    def __init__(self, active: bool = True) -> None:
        self.active = active

    def __enter__(self):
        import torch
        import torch._subclasses.fake_tensor as ft

        from framememory.memory.designs import pack_forcing as packing

        self.ft, self.packing, self.old = ft, packing, (ft.CONSTANT_NUMEL_LIMIT, packing.select_blocks)
        select = packing.select_blocks

        def select_recent(scores, top_k: int):
            n, nb = select(scores, top_k).shape[0], scores.shape[0]
            return torch.tensor(list(range(nb - n, nb)), dtype=torch.long)

        if self.active:
            ft.CONSTANT_NUMEL_LIMIT, packing.select_blocks = CONSTANT_LIMIT, select_recent

    def __exit__(self, *exc):
        self.ft.CONSTANT_NUMEL_LIMIT, self.packing.select_blocks = self.old


def build_state_memory(spec: dict):
    """VideoSSM's :class:`~memory.designs.video_ssm.StateMemory` for ``spec`` as ``MemoryEncoder.network`` builds it from a
    video_ssm file (``comfy.ops.manual_cast``; float32 parameters, whatever the file's dtype): ``absorb_proj``
    ``D x L*H*(dk + dv + 2)``, per block ``read_proj`` ``D x (H*dk + H)`` and ``out`` ``D x D``. Build it under a fake
    mode for real size."""
    import comfy.ops

    from framememory.memory.designs.video_ssm import StateMemory

    return StateMemory(mode_config(spec, "video_ssm"), ops=comfy.ops.manual_cast).eval()


def mode_case(spec: dict, dm, opts: dict, batch: int, seconds: int, mode: str, ssm=None, fake: bool = True):
    """One DiT forward in ``mode`` with the conds ``memory_inputs`` makes after ``seconds`` of history:
    ``memory_tokens`` ``[B, M, D]`` bf16 (every carried token: PackForcing's whole compressed history, selected per
    forward in the product's ``pack_context``), ``memory_positions2``, ``memory_blocks`` (PackForcing),
    ``memory_pack``, ``memory_state`` ``[B, L, H, dv, dk]`` bf16 (VideoSSM with ``ssm``: read out after every block,
    handed over as ``transformer_options[STATE_MODULE_KEY]``). ``fake``: built under the fake mode (else real CPU
    tensors, random values). Returns ``(run, external, layout)`` (:func:`measure`, :func:`mode_layout`)."""
    import torch

    from framememory.models.conds import BLOCKS_KEY, PACK_KEY, POSITIONS_KEY, STATE_KEY, TOKENS_KEY
    from framememory.models.state_readout import STATE_MODULE_KEY

    lay = mode_layout(spec, seconds, mode)
    cfg, bf16 = lay["cfg"], torch.bfloat16
    with fake_constants(fake):
        kw = dit_inputs(spec, batch, 0, MODE_RATE)
        kw[TOKENS_KEY] = torch.empty(batch, lay["carried"], cfg.dim, dtype=bf16)
        kw[POSITIONS_KEY] = torch.tensor([lay["positions2"]] * batch, dtype=torch.long)
        kw[PACK_KEY] = torch.tensor([lay["pack"]] * batch, dtype=torch.long)
        if lay["blocks"] is not None:
            kw[BLOCKS_KEY] = torch.tensor([lay["blocks"]] * batch, dtype=torch.long)
        if ssm is not None:
            kw[STATE_KEY] = torch.empty(batch, cfg.dit_blocks, cfg.ssm_heads, cfg.dim // cfg.ssm_heads,
                                        cfg.ssm_key_dim, dtype=bf16)
            opts = {**opts, STATE_MODULE_KEY: ssm}
    kw = kw if fake else _real_inputs(kw)
    x, t, ctx = kw.pop("x"), kw.pop("timestep"), kw.pop("context")

    def run():
        with fake_constants(fake):
            return dm(x, t, ctx, transformer_options=opts, **kw)

    return run, (dm, x, t, ctx, *kw.values(), *([] if ssm is None else [ssm])), lay


def mode_step(spec: dict, dm, opts: dict, batch: int, seconds: int, mode: str, ssm=None) -> dict:
    """Peak of one DiT forward in ``mode`` (:func:`mode_case`, :func:`dit_step`'s conventions), under the fake mode
    ``dm`` was built in. Returns :func:`measure`'s dict plus ``M`` (tokens attended, after PackForcing's top-K),
    ``M_carried`` (in the conds) and ``N`` (video tokens)."""
    run, ext, lay = mode_case(spec, dm, opts, batch, seconds, mode, ssm)
    x = ext[1]
    n = SEGMENT_LATENTS * (x.shape[3] // 2) * ((x.shape[4] + 1) // 2)
    return {**measure(run, *ext), "M": lay["attended"], "M_carried": lay["carried"], "N": n}


def absorb_case(spec: dict, ssm, frames: int = 1, fake: bool = True):
    """``(run, external)`` of one of VideoSSM's absorb calls (``memory_modes.absorbed_state``: ``ABSORB_FRAMES`` = 1
    latent frame that left the local window, ``Ht x Wt`` patch-embedded tokens ``[1, N, D]`` float32 on the device,
    continuing the cached state ``[1, L, H, dv, dk]`` float32): ``StateMemory.absorb``, i.e. ``absorb_proj`` for all L
    blocks at once and the gated delta rule batched over ``L`` (torch path, chunks of 64: what runs without the
    optional fla-core package). The patch embedding before it runs on the DiT and is moved to the CPU (smaller,
    earlier). ``frames``: latent frames absorbed in one call. ``fake``: fake tensors (else real CPU tensors, random
    values)."""
    import torch

    cfg = ssm.cfg
    ht, wt = spec["height"] // spec["stride"][1] // 2, spec["width"] // spec["stride"][2] // 2
    make = torch.empty if fake else torch.randn
    tokens = make(1, frames * ht * wt, cfg.dim)
    state = make(1, cfg.dit_blocks, cfg.ssm_heads, cfg.dim // cfg.ssm_heads, cfg.ssm_key_dim)
    return (lambda: ssm.absorb(tokens, state)), (ssm, tokens, state)


def absorb_step(spec: dict, ssm, frames: int = 1) -> dict:
    """Peak of :func:`absorb_case` under the fake mode ``ssm`` was built in; ``tokens``: N; ``declared``: what the pack
    declares to ComfyUI for it (``memory_plan.absorb_bytes``)."""
    from framememory.models.memory_plan import absorb_bytes

    run, ext = absorb_case(spec, ssm, frames)
    n = int(ext[1].shape[1])
    return {**measure(run, *ext), "tokens": n, "declared": absorb_bytes(ssm.cfg, n)}
