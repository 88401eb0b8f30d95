"""Benchmark 6 (issue 13, point 1): VRAM at real size without a GPU, per phase of the storyboard loop.

Usage:
  python benchmarks/vram_estimate.py                 # all models (+ the 5B in fp8) and modes, 7-9 min on 2 shared cores
  python benchmarks/vram_estimate.py --models wan21_1.3b_bf16 --skip-validation   # one model, quick
  python benchmarks/vram_estimate.py --skip-modes    # without the PackForcing / VideoSSM rows

Method (DESIGN.md section 6). ComfyUI's own model classes are built at real size under
``torch._subclasses.fake_tensor.FakeTensorMode`` (no weights, no GPU) and run in inference mode under
``torch.distributed._tools.mem_tracker.MemTracker`` (:func:`peak_tracker_class`: same accounting, global peak only).
The DiT runs through the product path: the memory wrapper and per-block patches that the family adapter's
``install`` registers (``models/wan.py``, ``models/wan22.py``, ``models/hunyuan.py``), collected by
``training.dits._OptionsRecorder``, with memory tokens and positions as the Storyboard passes them, so every block
sees the extra tokens. Attention: PyTorch SDPA, chosen ComfyUI's documented way (the ``--use-pytorch-cross-attention``
flag, ``comfy.cli_args.args.use_pytorch_cross_attention = True`` before ``comfy.model_management`` is imported, so
``comfy.ldm.modules.attention.optimized_attention is attention_pytorch``), and per call through
``transformer_options["optimized_attention_override"]`` (``models.attention.attention_override("sdpa")``). SDPA
reaches the tracker as one op whose only allocation is its output, as with a GPU's flash / memory-efficient kernels
(their fp32 log-sum-exp, B x heads x L, is negligible): no L x L attention matrix.

Phases per 1 s segment (4 latent frames; Wan 832x480, HunyuanVideo 848x480): text encoding (umt5-xxl fp8-scaled
for Wan, LLaVA-Llama-3-8B fp8-scaled + CLIP-L for HunyuanVideo), one DiT step with 0 / 20 / 60 / 120 s of history as
memory tokens at 4x4x2 and 2x2x2 (counted like benchmarks/tokens.py: the storyboard's continuous segments),
the VAE decode of one segment (untiled, and ComfyUI's tiled fallback), the memory-encoder append (LR clip through
the VAE, the DiT's patch embedding, HR branch at widths 64..512). Each phase's measurement is fed to :class:`Card`,
a replay of ``comfy.model_management.load_models_gpu`` / ``free_memory`` and ``ModelPatcher.load`` /
``partially_unload`` on a 12 GiB NVIDIA card (module lists from ComfyUI's own ``ModelPatcher._load_list``), which
says what stays loaded per phase and gives the peak per phase as ComfyUI 0.3.75 runs the pack, the memory declared to
its ``memory_required`` as ``models/memory_plan.py`` declares it (issue 25), plus the smallest ``--reserve-vram`` that
fits. A margin (:data:`MARGIN`) covers what the tracker cannot see. Rows that fit at no reserve say why and what to
set instead (``why_not`` / ``set_instead``, benchmarks/vram_report.py, which also writes the README section).

Bounded memory modes (:data:`MODES`, ``models/memory_modes.py``; :data:`MODE_MODELS` at 20 / 60 / 120 s): PackForcing
(sink + top-K compressed mid blocks + recent frames, selected per forward by ``models/wan.py``'s ``pack_context``
from conds that carry the whole compressed history) and VideoSSM (sink + recent frames and a gated delta-rule state per
block, read out after every block by ``StateMemory.read``; its state modules loaded with the DiT, and the absorb of
the frames leaving the window as a phase of its own) through the same product path and replay (:func:`mode_rows`).
The conds' index metadata are FakeTensor constants (:class:`fake_constants`), so the product's selection code runs.

Validation (:func:`validate`): seven small configurations (Wan bf16 / fp8 and HunyuanVideo fp8 DiTs with memory
through the product path, a Wan VAE decode, the encoder append) run on fake and on real CPU tensors under the same
tracker (two also under the stock MemTracker), plus the Wan DiT in each bounded mode; the real runs' allocations are
also counted by the PyTorch profiler.
Prints tables, writes benchmarks/results/vram_estimate.json (``rows``, ``mode_rows``: benchmarks/gpu_check.py reads
them) and the README section benchmarks/results/vram_estimate.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from copy import deepcopy
from types import SimpleNamespace

from common import ROOT, print_table, write_result

GIB = 2 ** 30
MIB = 2 ** 20
TARGET_GIB = 11.5          # issue 13: peak at 120 s of history on a 12 GB card
CARD_GIB = 12.0            # RTX 4070: 12 GiB (cudaMemGetInfo total 12282 MiB ~ 11.99 GiB)
CUDA_CONTEXT_GIB = 0.5     # CUDA context + cuBLAS handles: visible to ComfyUI as used memory (see MARGIN)
DEFAULT_RESERVE_GIB = 0.4  # ComfyUI's EXTRA_RESERVED_VRAM on Linux (--reserve-vram unset)
HISTORIES = (0, 20, 60, 120)
RATES = ("4x4x2", "2x2x2")
SEGMENT_LATENTS = 4        # 1 s segment on Wan 2.1 (16 frames at 16 fps)
PATCH_VOLUME = 4           # latent cells per DiT token (patch 1x2x2, every family)
# comfy.model_management on an NVIDIA card (this machine has none, so they cannot be read from the module):
NUM_STREAMS = 2            # async weight offload streams, "Enable by default on Nvidia"
MIN_WEIGHT_MEMORY_RATIO = 0.0  # "if is_nvidia(): MIN_WEIGHT_MEMORY_RATIO = 0.0"
# What the fake-tensor estimate cannot see, added on top of the planned peak (see the README section):
MARGIN = dict(allocator_frac=0.10,  # caching-allocator rounding / fragmentation, fraction of the activation peak
              workspaces_gib=0.25,  # cuBLAS / cuDNN (Conv3d in the VAE) workspaces
              sage=True)            # sageattention: int8 q, k + fp16 v of the largest attention call
MODES = ("pack_forcing", "video_ssm")  # models/memory_modes.py, Wan families only
MODE_MODELS = ("wan21_1.3b_bf16", "wan21_14b_fp8", "wan22_5b_bf16")
MODE_HISTORIES = (20, 60, 120)
MODE_RATE = "4x4x2"  # PackForcing's compressed mid blocks: the Fig. 2 encoder at 4x4x2 (a block = one memory time step)
SSM_VALUE_DIM = 128  # VideoSSM state [H, dv, dk] per block, H = D / dv: 12 heads on the 1.3B, 40 on the 14B
SSM_KEY_DIM = 64
CONSTANT_LIMIT = 1 << 22  # FakeTensor constants up to this many elements (index metadata, see fake_constants)
FLAT_TOLERANCE = 0.05  # issue 13: a bounded memory mode's peak stays within 5 % from 20 s to 120 s of history
MODELS = {
    "wan21_1.3b_bf16": dict(kind="wan", adapter="wan", weight="bfloat16", width=832, height=480, fps=16, channels=16,
                            stride=(4, 8, 8), vae="wan21", te="umt5", text_len=512, cfg=5.0,
                            dit=dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)),
    "wan21_14b_fp8": dict(kind="wan", adapter="wan", weight="float8_e4m3fn", width=832, height=480, fps=16, channels=16,
                          stride=(4, 8, 8), vae="wan21", te="umt5", text_len=512, cfg=5.0,
                          dit=dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)),
    "wan22_5b_bf16": dict(kind="wan", adapter="wan22", weight="bfloat16", width=832, height=480, fps=24, channels=48,
                          stride=(4, 16, 16), vae="wan22", te="umt5", text_len=512, cfg=5.0,
                          dit=dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30)),
    # the 5B with fp8 weights (a remedy), only the rows that need it:
    "wan22_5b_fp8": dict(kind="wan", adapter="wan22", weight="float8_e4m3fn", width=832, height=480, fps=24, channels=48,
                         stride=(4, 16, 16), vae="wan22", te="umt5", text_len=512, cfg=5.0,
                         dit=dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30),
                         cases=((0, "4x4x2"), (120, "4x4x2"), (120, "2x2x2"))),
    "hunyuan_video_fp8": dict(kind="hunyuan", adapter="hunyuan", weight="float8_e4m3fn", width=848, height=480, fps=24,
                              channels=16, stride=(4, 8, 8), vae="hunyuan", te="llava_llama3", text_len=256, cfg=1.0,
                              dit=dict(hidden_size=3072, num_heads=24, depth=20, depth_single_blocks=40)),
}
HUNYUAN_DIT = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                   mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True,
                   guidance_embed=True, byt5=False, meanflow=False, use_cond_type_embedding=False, vision_in_dim=None)
HUNYUAN_VAE = dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                   num_res_blocks=2, attn_resolutions=[], dropout=0.0, conv3d=True, time_compress=4)  # comfy/sd.py
WAN_VAE = dict(z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True],
               dropout=0.0)  # comfy/sd.py, Wan 2.1 VAE (dim read from the state dict: 96)


def comfy_setup():
    """Put ComfyUI on ``sys.path`` with SDPA attention and CPU placement; returns the torch module.

    Sets ``args.use_pytorch_cross_attention`` (ComfyUI's ``--use-pytorch-cross-attention``) before
    ``comfy.model_management`` is imported; when another caller imported it first (a test session), the DiT still
    runs SDPA through ``optimized_attention_override``."""
    sys.path.insert(0, os.path.abspath(os.environ.get("COMFYUI_DIR", os.path.join(ROOT, ".cache", "ComfyUI"))))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.use_pytorch_cross_attention = True
    import torch
    import comfy.model_management  # noqa: F401
    import comfy.ops  # noqa: F401

    return torch


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
    """``transformer_options`` of the product: the family adapter's ``install`` (memory wrapper + a replace patch
    on every block) recorded by ``training.dits._OptionsRecorder``, plus the SDPA override."""
    import importlib

    from framememory.models.attention import attention_override
    from framememory.training.dits import _OptionsRecorder

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    rec = _OptionsRecorder()
    with unset_fake_temporarily():  # HunyuanVideo's install probes ComfyUI's apply_mod on real numbers
        importlib.import_module(f"framememory.models.{spec['adapter']}").install(rec, dm)
    return {**rec.options, "optimized_attention_override": attention_override("sdpa")}


def encoder_config(spec: dict, rate: str):
    from framememory.memory.config import EncoderConfig

    family = {"wan": "wan21", "wan22": "wan22", "hunyuan": "hunyuan_video"}[spec["adapter"]]
    dim = spec["dit"].get("dim", spec["dit"].get("hidden_size"))
    return EncoderConfig(family=family, dim=dim, rate=rate, latent_channels=spec["channels"],
                         vae_stride=spec["stride"], patch_size=(1, 2, 2))


MIXED = "2x2x2 last 20 s + 4x4x2"  # a coarser rate for old history (a combination the pack does not offer yet)


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
    embedding (``adapter.patch_embed``), built with ``comfy.ops.manual_cast`` as ``models.encoding`` builds it.
    Returns :func:`measure`'s dict plus ``encoder_bytes`` (the encoder's own weights)."""
    import importlib

    import comfy.model_management
    import comfy.ops
    import torch

    from framememory.memory.encoder import HistoryEncoder

    cfg = encoder_config(spec, rate)
    net = HistoryEncoder(cfg, ops=comfy.ops.manual_cast).eval()
    adapter = importlib.import_module(f"framememory.models.{spec['adapter']}")
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


# ------------------------------------------------------------------------------------------------ ComfyUI's plan


@dataclasses.dataclass(eq=False)
class Patcher:
    """A model patcher as ``comfy.model_management`` sees it: its leaf modules (:func:`load_list`), which of them are
    on the card, the offload buffer ComfyUI reserved for streaming the others (``model_offload_buffer_memory``), and
    whether parameters outside the leaf modules (VideoSSM's ``distance_weight``) are on the card: ``ModelPatcher.load``
    moves them only on a complete load with ``full_load`` (``self.model.to(device_to)``), a full unload (``detach``)
    moves them back, a partial unload leaves them."""

    name: str
    modules: list
    loaded: set = dataclasses.field(default_factory=set)
    buffer: int = 0
    lowvram: bool = False
    root: bool = False

    @property
    def size(self) -> int:
        return sum(m[1] for m in self.modules)

    @property
    def on_card(self) -> int:
        return sum(self.modules[i][1] for i in self.loaded)

    def _order(self, largest_first: bool) -> list[int]:
        return sorted(range(len(self.modules)), key=lambda i: self.modules[i][:2], reverse=largest_first)

    def load(self, lowvram_model_memory: float, full: bool) -> None:
        """``ModelPatcher.load``: largest modules first; a module goes on the card while the loaded bytes, its bytes and
        the offload buffer (``(NUM_STREAMS + 1) x`` the largest streamed module) stay below the budget; castable
        modules that do not fit stream their weights per call (low-VRAM)."""
        mem = buffer = 0
        loaded, lowvram = set(), False
        for i in self._order(largest_first=True):
            off, size, castable = self.modules[i][:3]
            potential = max(buffer, off * (NUM_STREAMS + 1))
            fits = mem + size + potential < lowvram_model_memory
            if not full and castable and not fits:
                buffer, lowvram = potential, True
            elif full or fits:
                mem += size
                loaded.add(i)
            else:
                buffer = potential
        self.loaded, self.buffer, self.lowvram = loaded, buffer, lowvram
        self.root = self.root or (full and not lowvram)

    def partially_unload(self, memory_to_free: float) -> int:
        """``ModelPatcher.partially_unload``: smallest loaded modules first until ``memory_to_free`` (plus any growth
        of the offload buffer) is freed. Returns the bytes freed."""
        old = buffer = self.buffer
        freed = 0
        for i in self._order(largest_first=False):
            if memory_to_free + buffer - old < freed:
                break
            if i in self.loaded:
                self.loaded.discard(i)
                freed += self.modules[i][1]
                buffer = max(buffer, (NUM_STREAMS + 1) * self.modules[i][0])
        self.buffer, self.lowvram = buffer, True
        return freed

    def partially_load(self, extra_memory: float) -> None:
        """``ModelPatcher.partially_load`` (called by ``LoadedModel.model_load`` with the low-VRAM budget)."""
        if extra_memory < 0:
            self.partially_unload(-extra_memory)
        elif self.lowvram or self.on_card == 0:
            self.load(self.on_card + extra_memory, full=self.on_card + extra_memory > self.size)

    def in_flight(self, runs: tuple[str, ...] | None = None) -> int:
        """Streamed weights in flight while this model computes (0 unless low-VRAM): ComfyUI's reserved buffer, or with
        ``runs`` (name prefixes of the modules that compute in this phase, for a model of which only some modules run)
        ``min(their streamed modules, NUM_STREAMS + 1) x`` the largest of them."""
        if not self.lowvram or runs is None:
            return self.buffer if self.lowvram else 0
        off = [m[0] for i, m in enumerate(self.modules) if i not in self.loaded and m[3].startswith(runs)]
        return min(len(off), NUM_STREAMS + 1) * max(off, default=0)

    def state(self) -> str:
        if not self.loaded and not self.lowvram:
            return f"{self.name} off"
        extra = f" low-VRAM, buffer {self.buffer / GIB:.2f}" if self.lowvram else ""
        return f"{self.name} {self.on_card / GIB:.2f}/{self.size / GIB:.2f}{extra}"


class Card:
    """``comfy.model_management``'s loaded-model list on one NVIDIA card of ``total`` bytes (0.3.75 rules; module
    constants of an NVIDIA machine: :data:`NUM_STREAMS`, :data:`MIN_WEIGHT_MEMORY_RATIO`; ``minimum_inference_memory``
    and ``extra_reserved_memory`` read from ComfyUI, Linux values). Free memory = total - CUDA context - weights on the
    card (the caching allocator's free blocks count as free, as ``get_free_memory`` counts them). ``reserve``: the
    ``EXTRA_RESERVED_VRAM`` bytes (``--reserve-vram``; None: ComfyUI's default read from the module). Not modelled:
    the ``sys.getrefcount`` tie-break of ``free_memory`` (equal offloaded bytes are ordered by size instead), pinned
    memory, LoRA patches."""

    def __init__(self, total: float, context: float, reserve: float | None = None) -> None:
        import comfy.model_management as mm

        self.total, self.context = total, context
        self.reserve = mm.extra_reserved_memory() if reserve is None else reserve
        # minimum_inference_memory() = 0.8 GiB + extra_reserved_memory()
        self.inference = mm.minimum_inference_memory() - mm.extra_reserved_memory() + self.reserve
        self.models: list[Patcher] = []   # current_loaded_models, most recently loaded first
        self.known: list[Patcher] = []    # everything with weights on the card

    def free(self) -> float:
        return self.total - self.context - sum(p.on_card for p in self.known)

    def _unload(self, p: Patcher, memory_to_free: float) -> bool:
        """``LoadedModel.model_unload``: a partial unload when that frees enough, else the whole model."""
        if memory_to_free < p.on_card and p.partially_unload(memory_to_free) >= memory_to_free:
            return False
        p.loaded, p.buffer, p.lowvram, p.root = set(), 0, False, False
        return True

    def free_memory(self, required: float) -> None:
        """``free_memory``: unload models (most offloaded first) until ``required`` bytes are free."""
        order = sorted(range(len(self.models)), key=lambda i: (-(self.models[i].size - self.models[i].on_card), self.models[i].size))
        gone = []
        for i in order:
            if self.free() > required:
                break
            if self._unload(self.models[i], required - self.free()):
                gone.append(self.models[i])
        self.models = [p for p in self.models if p not in gone]

    def load_models_gpu(self, patchers: list[Patcher], memory_required: float = 0,
                        minimum_memory_required: float | None = None, force_full_load: bool = False) -> None:
        """``load_models_gpu``: free ``1.1 x`` the weights to load + the inference memory, then give each model the
        low-VRAM budget ``free - minimum_memory_required`` (at least ``minimum_inference_memory``)."""
        inference, reserved = self.inference, self.reserve
        extra_mem = max(inference, memory_required + reserved)
        min_req = extra_mem if minimum_memory_required is None else max(inference, minimum_memory_required + reserved)
        for p in patchers:  # a model being loaded leaves the list (is_clone unload) and cannot be freed below
            self.known += [] if p in self.known else [p]
            self.models = [q for q in self.models if q is not p]
        self.free_memory(sum(p.size - p.on_card for p in patchers) * 1.1 + extra_mem)
        if self.free() < min_req:
            self.free_memory(min_req)
        for p in patchers:
            budget = 1e32  # model_load: lowvram_model_memory 0 -> use_more_vram 1e32
            if not force_full_load:
                cur = self.free() + p.on_card
                budget = max(0, cur - min_req, min(cur * MIN_WEIGHT_MEMORY_RATIO, cur - inference)) - p.on_card
                budget = 0.1 if budget == 0 else budget
            p.partially_load(budget)
            self.models.insert(0, p)

    def peak(self, act: float, running: list[Patcher], runs: dict | None = None) -> float:
        """Bytes in use while ``running`` compute with ``act`` bytes of activations: context + all weights on the card
        + activations + the streamed weights in flight of the running low-VRAM models (:meth:`Patcher.in_flight`,
        ``runs[patcher]``: the module name prefixes that compute, default all: ComfyUI's reserved buffer)."""
        flight = sum(p.in_flight((runs or {}).get(p)) for p in running)
        return self.context + sum(p.on_card for p in self.known) + act + flight

    def state(self) -> str:
        return ", ".join(p.state() for p in self.known if p.loaded or p.lowvram) or "nothing"


def dit_memory_required(spec: dict, batch: int, attended: int = 0) -> float:
    """ComfyUI's estimate of the DiT's inference memory (``BaseModel.memory_required``, the branch for PyTorch
    flash / xformers attention on NVIDIA): ``area * 2 (bf16) * 0.01 * memory_usage_factor`` MiB, the factor from
    ``comfy.supported_models`` (Wan: ``dim / 2222``; HunyuanVideo: 1.8), ``area`` the volume of the noise shape as
    the pack declares it (``models.memory_plan.planned_shape``: ``attended`` memory tokens added as latent cells)."""
    import comfy.supported_models as sm

    from framememory.models.memory_plan import planned_shape

    ft, fh, fw = spec["stride"]
    if spec["kind"] == "wan":
        factor = sm.WAN21_T2V({"image_model": "wan2.1", "model_type": "t2v", "dim": spec["dit"]["dim"]}).memory_usage_factor
    else:
        factor = sm.HunyuanVideo.memory_usage_factor
    shape = planned_shape([batch, spec["channels"], SEGMENT_LATENTS, spec["height"] // fh, spec["width"] // fw],
                          attended, PATCH_VOLUME)
    return shape[0] * math.prod(shape[2:]) * 2 * 0.01 * factor * MIB


def vae_memory_used(spec: dict, shape: list, decode: bool) -> float:
    """``comfy.sd.VAE.memory_used_decode`` / ``memory_used_encode`` of the family's VAE in bf16 (2 bytes), ``shape``
    the latent (decode) or pixel (encode) batch ``[B, C, T, H, W]``."""
    t, h, w = shape[2], shape[3], shape[4]
    if spec["vae"] == "wan21":
        return (7000 * h * w * 64 if decode else 6000 * h * w) * 2
    if spec["vae"] == "wan22":
        return (8000 * h * w * 256 if decode else 3300 * h * w) * 2
    return (1500 * t * h * w * 256 if decode else 900 * max(t, 2) * h * w) * 2  # HunyuanVideo's AutoencoderKL


def plan_segment(card: Card, pt: dict, meas: dict, spec: dict, dit_act, out: dict, attended: int = 0) -> None:
    """One segment of the storyboard loop (``models.storyboard.generate_segment``) on ``card``: text encoding (at a
    shot change), VideoSSM's state absorb (when ``meas`` has one), sampling, decode, encode-append (modes with an
    encoder); each phase's peak (max over calls) and what was loaded go to ``out[phase]``. ``pt``: the patchers
    (``pt["ssm"]``: VideoSSM's state modules, loaded with the DiT as its additional model; only their read-out
    modules run in the DiT step); ``meas``: measurements; ``dit_act(batch)``: DiT activation bytes; ``attended``: the
    memory tokens a forward attends to, which the pack declares to ComfyUI (``models.memory_plan``: counted in
    ``memory_required`` for the load and for ``_calc_cond_batch``'s batching)."""
    def note(phase: str, act: float, running: list, runs: dict | None = None, **extra) -> None:
        peak = card.peak(act, running, runs)
        if peak >= out.get(phase, {}).get("peak", -1):
            out[phase] = {"peak": peak, "act": act, "loaded": card.state(), **extra}

    card.load_models_gpu([pt["te"]])  # CLIP.encode_from_tokens -> load_model -> load_model_gpu
    note("text", meas["text"]["act"], [pt["te"]])
    if "absorb" in meas:
        _plan_absorb(card, pt, meas["absorb"], note)
    dit, runs = [pt["dit"]], None  # prepare_sampling: [model] + additional models
    if "ssm" in pt:
        dit, runs = dit + [pt["ssm"]], {pt["ssm"]: ("read_proj.", "out.")}
    mr2, mr1 = dit_memory_required(spec, 2, attended), dit_memory_required(spec, 1, attended)
    card.load_models_gpu(dit, mr2, mr1)  # sampler_helpers.prepare_sampling
    # samplers._calc_cond_batch: cond + uncond in one call while memory_required * 1.5 < free; cfg 1 drops uncond
    batch = 2 if spec["cfg"] != 1.0 and mr2 * 1.5 < card.free() else 1
    note("sample", dit_act(batch), dit, runs, batch=batch, **({"state_root": pt["ssm"].root} if runs else {}))
    dec = meas["decode"]
    card.load_models_gpu([pt["vae"]], vae_memory_used(spec, dec["latent"], True))  # VAE.decode
    untiled = card.peak(dec["act"], [pt["vae"]])
    tiled = untiled > card.total  # OOM -> VAE.decode retries with decode_tiled_3d
    note("decode", meas["decode_tiled" if tiled else "decode"]["act"], [pt["vae"]], tiled=tiled, untiled=untiled)
    if "append" not in meas:  # VideoSSM: no compressed memory to encode
        return
    enc = meas["lr_encode"]
    card.load_models_gpu([pt["vae"]], vae_memory_used(spec, enc["pixels"], False))  # LR clip: VAE.encode
    note("encode", enc["act"], [pt["vae"]])
    card.load_models_gpu([pt["enc"]])  # encoding.encode_segment
    card.load_models_gpu([pt["dit"]])  # families.patch_embed (LR branch's first projection)
    note("encode", meas["append"]["act"], [pt["enc"], pt["dit"]])


def _plan_absorb(card: Card, pt: dict, absorb: dict, note) -> None:
    """VideoSSM before sampling (``models.memory_modes.ssm_inputs``): the local window's patch embedding (loads the
    DiT), ``state_network`` (loads the state modules), then per latent frame that left the window (4 a segment)
    ``absorbed_state``: its patch embedding (loads the DiT), ``memory_plan.load_for_absorb`` (loads the state modules
    with the absorb declared as ``memory_required``) and ``StateMemory.absorb`` on the card, where only
    ``absorb_proj`` computes."""
    from framememory.models.memory_modes import ABSORB_FRAMES

    card.load_models_gpu([pt["dit"]])
    card.load_models_gpu([pt["ssm"]])
    for _ in range(SEGMENT_LATENTS // ABSORB_FRAMES):
        card.load_models_gpu([pt["dit"]])
        card.load_models_gpu([pt["ssm"]], absorb["declared"])
        note("absorb", absorb["act"] + absorb["inputs"], [pt["ssm"]], {pt["ssm"]: ("absorb_proj",)})


def plan(spec: dict, meas: dict, lists: dict, dit_act, attended: int = 0, reserve: float | None = None,
         total: float = CARD_GIB * GIB, context: float = CUDA_CONTEXT_GIB * GIB) -> dict:
    """ComfyUI's plan for two segments (the first from an empty card, the second in steady state) on a card of
    ``total`` bytes: ``{phase: {"peak" bytes, "act", "loaded", ...}}`` with the larger peak of the two segments
    (``attended``: see :func:`plan_segment`; ``reserve``: ``--reserve-vram`` in bytes, see :class:`Card`)."""
    card = Card(total, context, reserve)
    names = (("te", "TE"), ("dit", "DiT"), ("vae", "VAE"), ("enc", "encoder"), ("ssm", "state"))
    pt = {k: Patcher(name, lists[k]) for k, name in names if k in lists}
    out: dict = {}
    for _ in range(2):
        plan_segment(card, pt, meas, spec, dit_act, out, attended)
    return out


def margin_bytes(phase: str, act: float, batch: int, tokens: int, dim: int) -> float:
    """What the tracker cannot see (:data:`MARGIN`), for one phase: allocator rounding / fragmentation as a fraction
    of the activation peak, cuBLAS / cuDNN workspaces, and for sampling with sageattention its quantised copies of
    q, k (int8) and v (fp16) of one attention call over ``tokens`` (``batch x tokens x dim x 4`` bytes)."""
    sage = batch * tokens * dim * 4 if (phase == "sample" and MARGIN["sage"]) else 0
    return MARGIN["allocator_frac"] * act + MARGIN["workspaces_gib"] * GIB + sage


# ------------------------------------------------------------------------------------------------ validation

SMALL = dict(width=208, height=112, dit=dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2))  # validation size


def _init_real(module) -> None:
    """Random weights for a real (non-fake) module: N(0, 0.02), fp8 weights through a float32 copy."""
    import torch

    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape) * 0.02)


def _real_inputs(kw: dict) -> dict:
    import torch

    return {k: (torch.randn(x.shape).to(x.dtype) if x.is_floating_point() else x.contiguous()) for k, x in kw.items()}


def small_case(name: str, fake: bool):
    """One validation case built on fake or real CPU tensors: ``(run, external)`` for :func:`measure`.
    ``name``: ``wan_bf16`` / ``wan_fp8`` (Wan DiT, 2 blocks of width 256, 20 s of history at 2x2x2 through the product
    path, cond + uncond), ``hunyuan_fp8`` (1 double + 1 single block, width 256), ``vae`` (WanVAE dim 16 decode),
    ``encoder`` (HistoryEncoder append with the DiT's patch embedding), ``pack_forcing`` / ``video_ssm`` (the Wan
    bf16 DiT in that memory mode after 60 s of history, :func:`mode_case`; VideoSSM with its state modules),
    ``absorb`` (VideoSSM's absorb of one segment, :func:`absorb_case`). The VAE case runs in float32."""
    import torch

    base = "hunyuan_video_fp8" if name == "hunyuan_fp8" else "wan21_14b_fp8" if name == "wan_fp8" else "wan21_1.3b_bf16"
    spec = {**MODELS[base], **SMALL}
    if name == "hunyuan_fp8":
        spec["dit"], spec["width"], spec["text_len"] = dict(hidden_size=256, num_heads=2, depth=1, depth_single_blocks=1), 224, 64
    if name == "vae":
        from comfy.ldm.wan.vae import WanVAE

        with default_dtype(torch.float32):  # bf16 Conv3d on a CPU is ~100x slower (no oneDNN kernel)
            vae = WanVAE(dim=16, **WAN_VAE)
        z = torch.empty(1, 16, 2, 8, 12)
        z = z if fake else (_init_real(vae), torch.randn(z.shape).to(z.dtype))[1]
        return (lambda: vae.decode(z)), (vae, z)
    if name == "absorb":
        ssm = build_state_memory(spec)
        return absorb_case(spec, ssm, fake=fake) if fake else (_init_real(ssm), absorb_case(spec, ssm, fake=fake))[1]
    dm = build_dit(spec)
    if not fake:
        _init_real(dm)
    if name == "encoder":
        return _encoder_case(spec, dm, fake)
    opts = dit_options(spec, dm)
    if name in MODES:
        ssm = build_state_memory(spec) if name == "video_ssm" else None
        if ssm is not None and not fake:
            _init_real(ssm)
        return mode_case(spec, dm, opts, 2, 60, name, ssm, fake)[:2]
    kw = dit_inputs(spec, 2, 20, "2x2x2")
    kw = kw if fake else _real_inputs(kw)
    x, t, ctx = kw.pop("x"), kw.pop("timestep"), kw.pop("context")
    return (lambda: dm(x, t, ctx, transformer_options=opts, **kw)), (dm, x, t, ctx, *kw.values())


def _encoder_case(spec: dict, dm, fake: bool):
    """``(run, external)`` of the HistoryEncoder append (4x4x2, HR widths 64..512) on one small segment."""
    import importlib

    import comfy.ops
    import torch

    from framememory.memory.encoder import HistoryEncoder

    net = HistoryEncoder(encoder_config(spec, "4x4x2"), ops=comfy.ops.manual_cast).eval()
    adapter = importlib.import_module(f"framememory.models.{spec['adapter']}")
    lat = torch.empty(1, spec["channels"], SEGMENT_LATENTS, spec["height"] // 8, spec["width"] // 8)
    tm, hm, wm = net.grid(lat)
    lr = torch.empty(1, spec["channels"], tm, hm * 2, wm * 2)
    if not fake:
        lat, lr = torch.randn(lat.shape), torch.randn(lr.shape)
    return (lambda: net(lat, lr, embed=lambda z: adapter.patch_embed(dm, z, device=None))), (net, lat, lr)


def profiler_peak(run) -> int:
    """Peak bytes allocated while ``run()`` executes on real CPU tensors, from the PyTorch profiler's memory timeline
    (allocator events, independent of MemTracker's storage accounting; includes op-internal workspaces)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                                         with_stack=True) as prof:
        run()
    cur = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        kind = getattr(action, "name", str(action))
        cur += size if kind in ("CREATE", "PREEXISTING") else -size if kind == "DESTROY" else 0
        peak = max(peak, cur)
    return peak


def validate(names=("wan_bf16", "wan_fp8", "hunyuan_fp8", "vae", "encoder", *MODES, "absorb"),
             stock=("wan_bf16", "hunyuan_fp8"),
             profiler: bool = True) -> list[dict]:
    """Each small case (:func:`small_case`) on fake tensors and on real CPU tensors under :func:`peak_tracker_class`
    (for the cases in ``stock`` also under the unmodified ``MemTracker``; with ``profiler`` also
    :func:`profiler_peak`). Returns rows in MiB with the relative differences to the fake estimate."""
    from torch.distributed._tools.mem_tracker import MemTracker

    rows = []
    for name in names:
        with fake_mode():
            est = measure(*_flat(small_case(name, fake=True)))
        run, ext = small_case(name, fake=False)
        real = measure(run, *ext)
        row = {"case": name, "fake_peak_mib": round(est["peak"] / MIB, 2), "real_peak_mib": round(real["peak"] / MIB, 2),
               "fake_act_mib": round(est["act"] / MIB, 2), "real_act_mib": round(real["act"] / MIB, 2),
               "diff_pct": round(100 * (real["peak"] - est["peak"]) / est["peak"], 2)}
        if name in stock:
            row["stock_tracker_mib"] = round(measure(run, *ext, tracker=MemTracker)["peak"] / MIB, 2)
        if profiler:
            row["profiler_mib"] = round(profiler_peak(run) / MIB, 2)
            row["profiler_vs_fake_pct"] = round(100 * (row["profiler_mib"] - row["fake_peak_mib"]) / row["fake_peak_mib"], 2)
        rows.append(row)
    return rows


def _flat(case):
    run, ext = case
    return (run, *ext)


# ------------------------------------------------------------------------------------------------ per model


def measure_parts(spec: dict, log=print) -> tuple[dict, dict, object, tuple]:
    """Build the text encoder, VAE, DiT and encoders of ``spec`` under the active fake mode and measure the
    history-independent phases. Returns ``(meas, lists, dit_act, (dm, opts))``: ``meas[rate]`` per-phase dicts,
    ``lists`` the module lists per model (``lists["enc"][rate]``), ``dit_act(seconds, rate, batch)`` a cached DiT-step
    measurement, the DiT and its ``transformer_options``."""
    t0 = time.perf_counter()
    te = build_text_encoder(spec)
    text, lists = text_encode(spec, te), {"te": load_list(te)}
    del te
    vae = build_vae(spec)
    dec, tiled = vae_decode(spec, vae, tiled=False), vae_decode(spec, vae, tiled=True)
    lists["vae"] = load_list(vae)
    dm = build_dit(spec)
    opts, lists["dit"], lists["enc"] = dit_options(spec, dm), load_list(dm), {}
    meas = {}
    for rate in RATES:
        app = encoder_append(spec, dm, rate)
        lists["enc"][rate] = load_list(app.pop("net"))
        meas[rate] = {"text": text, "decode": dec, "decode_tiled": tiled, "lr_encode": vae_encode_lr(spec, vae, rate),
                      "append": app}
    meas[MIXED], lists["enc"][MIXED] = meas["2x2x2"], lists["enc"]["2x2x2"]  # new segments at the fine rate
    log(f"  parts measured in {time.perf_counter() - t0:.1f} s")
    cache: dict = {}

    def dit_act(seconds: int, rate: str, batch: int) -> dict:
        key = (seconds, rate if seconds else "-", batch)
        if key not in cache:
            t1 = time.perf_counter()
            cache[key] = dit_step(spec, dm, opts, batch, seconds, rate)
            log(f"  DiT step {seconds:>3} s {key[1]:>5} batch {batch}: M={cache[key]['M']:>6} "
                f"act {cache[key]['act'] / GIB:.2f} GiB ({time.perf_counter() - t1:.1f} s)")
        return cache[key]

    return meas, lists, dit_act, (dm, opts)


def case_row(name: str, spec: dict, seconds: int, rate: str, meas: dict, lists: dict, dit_act) -> dict:
    """One table row: ComfyUI's plan for ``seconds`` of history at ``rate`` as the pack runs it (memory declared,
    ``models.memory_plan``): per-phase peaks (GiB, CUDA context included), what is loaded, margins, the verdict
    against :data:`TARGET_GIB`, and the smallest ``--reserve-vram`` with which it fits. ``meas`` / ``lists``: this
    rate's (or memory mode's) measurements and module lists, as :func:`plan` takes them."""
    def step_bytes(batch: int) -> float:  # activations + the step's inputs (latent, text, memory tokens on the card)
        m = dit_act(seconds, rate, batch)
        return m["act"] + m["inputs"]

    b2, dim = dit_act(seconds, rate, 2), spec["dit"].get("dim", spec["dit"].get("hidden_size"))
    tokens = b2["M"] + b2["N"]
    phases = plan(spec, meas, lists, step_bytes, b2["M"])
    row = {"model": name, "history_s": seconds, "rate": rate if seconds else "-", "M": b2["M"], "N": b2["N"],
           "dit_weights_gib": round(b2["weights"] / GIB, 2), "dit_act_b2_gib": round(step_bytes(2) / GIB, 2),
           "dit_act_only_b2_gib": round(b2["act"] / GIB, 3), "dit_act_b1_gib": round(step_bytes(1) / GIB, 2),
           "comfy_memory_required_b2_gib": round(dit_memory_required(spec, 2, b2["M"]) / GIB, 2),
           "comfy_memory_declared_b2_gib": round((dit_memory_required(spec, 2, b2["M"]) - dit_memory_required(
               spec, 2)) / GIB, 2),
           "batch": phases["sample"]["batch"], "decode": "tiled (OOM fallback)" if phases["decode"]["tiled"] else "untiled"}
    for ph in phases:  # text, (absorb), sample, decode, (encode)
        row[f"{ph}_gib"] = round(phases[ph]["peak"] / GIB, 2)
        row[f"{ph}_margin_gib"] = round(margin_bytes(ph, phases[ph]["act"], phases[ph].get("batch", 1), tokens, dim) / GIB, 2)
        row[f"{ph}_loaded"] = phases[ph]["loaded"]
    row["peak_gib"] = max(row[f"{ph}_gib"] for ph in phases)
    row["peak_plus_margin_gib"] = round(_worst(phases, tokens, dim) / GIB, 2)
    row["fits"] = row["peak_plus_margin_gib"] <= TARGET_GIB  # the target: peak + margin <= 11.5 GiB
    reserve = reserve_needed(spec, meas, lists, step_bytes, b2["M"], tokens, dim)
    row["reserve_vram_needed_gib"] = reserve
    if reserve is not None and reserve > DEFAULT_RESERVE_GIB:
        at = plan(spec, meas, lists, step_bytes, b2["M"], reserve=reserve * GIB)
        row.update(reserve_peak_plus_margin_gib=round(_worst(at, tokens, dim) / GIB, 2),
                   reserve_batch=at["sample"]["batch"], reserve_sample_loaded=at["sample"]["loaded"])
    if "absorb" in phases:
        row.update(absorb_declared_gib=round(meas["absorb"]["declared"] / GIB, 2),
                   state_root_on_card=phases["sample"]["state_root"])
    return row


def reserve_needed(spec: dict, meas: dict, lists: dict, step_bytes, attended: int, tokens: int, dim: int):
    """Smallest ``--reserve-vram`` (GiB, 0.1 steps from ComfyUI's 0.4 to 4) with which the plan's peak + margin stays
    <= :data:`TARGET_GIB` in every phase, or None."""
    for tenth in range(round(DEFAULT_RESERVE_GIB * 10), 41):
        if _worst(plan(spec, meas, lists, step_bytes, attended, reserve=tenth / 10 * GIB), tokens, dim) <= TARGET_GIB * GIB:
            return tenth / 10
    return None


def _worst(phases: dict, tokens: int, dim: int) -> float:
    """Largest planned peak + margin over the phases, bytes."""
    return max(p["peak"] + margin_bytes(ph, p["act"], p.get("batch", 1), tokens, dim) for ph, p in phases.items())


def growth_rows(rows: list[dict]) -> list[dict]:
    """Per model and rate: the DiT step's activations (batch 2) and planned sampling peak at 20 s and 120 s."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for rate in RATES:
            at = {r["history_s"]: r for r in rows if r["model"] == model and r["rate"] == rate}
            if 20 not in at or 120 not in at:
                continue
            a, b = at[20], at[120]
            out.append({"model": model, "rate": rate, "M_20s": a["M"], "M_120s": b["M"],
                        "act_b2_20s": a["dit_act_b2_gib"], "act_b2_120s": b["dit_act_b2_gib"],
                        "act_growth_gib": round(b["dit_act_b2_gib"] - a["dit_act_b2_gib"], 2),
                        "act_ratio": round(b["dit_act_b2_gib"] / a["dit_act_b2_gib"], 2),
                        "sample_20s": a["sample_gib"], "sample_120s": b["sample_gib"],
                        "sample_growth_gib": round(b["sample_gib"] - a["sample_gib"], 2)})
    return out


# ------------------------------------------------------------------------------------------------ bounded memory modes


def mode_config(spec: dict, mode: str):
    """The resolved ``EncoderConfig`` of ``mode`` for ``spec`` as ``models.memory_modes.mode_config`` makes it from an
    encoder file of that type: PackForcing with :data:`PACK_DEFAULTS` (S 2, R 2, top-K 16) at :data:`MODE_RATE`,
    VideoSSM with :data:`SSM_DEFAULTS` (S 1, R 3) and trained state modules on every DiT block
    (``ssm_heads = D / 128``, ``ssm_key_dim`` 64)."""
    from framememory.models.memory_modes import PACK_DEFAULTS, SSM_DEFAULTS

    cfg = encoder_config(spec, MODE_RATE)
    if mode == "pack_forcing":
        return dataclasses.replace(cfg, memory_type=mode, **PACK_DEFAULTS)
    return dataclasses.replace(cfg, memory_type=mode, dit_blocks=spec["dit"]["num_layers"], use_hr=False,
                               ssm_heads=cfg.dim // SSM_VALUE_DIM, ssm_key_dim=SSM_KEY_DIM, **SSM_DEFAULTS)


def mode_layout(spec: dict, seconds: int, mode: str) -> dict:
    """The memory conds of ``mode`` after ``seconds`` of history, as plain lists (computed outside the fake mode with
    ``memory.packing``'s own functions, ``memory_inputs``' order sink, mid, recent): ``positions2`` ``[M, 3]`` (twice
    the RoPE positions), ``blocks`` ``[M]`` (PackForcing's labels, else None), ``pack`` ``(top_k, rt, S, R)``,
    ``carried`` M (tokens in the conds) and ``attended`` M' (after PackForcing's top-K, ``repack_positions``)."""
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from framememory.memory import packing
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

        from framememory.memory import packing

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
    """VideoSSM's :class:`~memory.state_memory.StateMemory` for ``spec`` as ``MemoryEncoder.network`` builds it from a
    video_ssm file (``comfy.ops.manual_cast``; float32 parameters, whatever the file's dtype): ``absorb_proj``
    ``D x L*H*(dk + dv + 2)``, per block ``read_proj`` ``D x (H*dk + H)`` and ``out`` ``D x D``. Build it under a fake
    mode for real size."""
    import comfy.ops

    from framememory.memory.state_memory import StateMemory

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


def mode_parts(spec: dict, mode: str, meas: dict, lists: dict, dit_act, dit, log=print) -> tuple[dict, dict, object]:
    """``(meas, lists, act)`` of ``mode`` for :func:`case_row`: PackForcing appends like Frame Preservation at
    :data:`MODE_RATE` (same encoder); VideoSSM has no encode phase but the absorb (:func:`absorb_step`, one call of
    ``ABSORB_FRAMES`` latent frames, as ``memory_modes.absorbed_state`` runs it) and its state
    modules (``lists["ssm"]``) loaded with the DiT. ``act(seconds, rate, batch)``: :func:`mode_step`, cached (0 s: the
    DiT without memory, ``dit_act``). ``dit``: ``(dm, opts)`` of :func:`measure_parts`. Call under its fake mode."""
    dm, opts = dit
    meas, lists, ssm = dict(meas[MODE_RATE]), {**lists, "enc": lists["enc"][MODE_RATE]}, None
    if mode == "video_ssm":
        ssm = build_state_memory(spec)
        meas = {k: meas[k] for k in ("text", "decode", "decode_tiled")}
        from framememory.models.memory_modes import ABSORB_FRAMES

        meas["absorb"], lists = absorb_step(spec, ssm, ABSORB_FRAMES), {**lists, "ssm": load_list(ssm)}
        del lists["enc"]
        log(f"  {mode} absorb of {meas['absorb']['tokens']} tokens: act {meas['absorb']['act'] / GIB:.2f} GiB "
            f"(declared {meas['absorb']['declared'] / GIB:.2f}), state modules "
            f"{sum(x[1] for x in lists['ssm']) / GIB:.2f} GiB")
    cache: dict = {}

    def act(seconds: int, rate: str, batch: int) -> dict:
        if not seconds:
            return dit_act(0, rate, batch)
        if (seconds, batch) not in cache:
            t1 = time.perf_counter()
            cache[seconds, batch] = m = mode_step(spec, dm, opts, batch, seconds, mode, ssm)
            log(f"  {mode} DiT step {seconds:>3} s batch {batch}: M={m['M']:>6} (carried {m['M_carried']:>6}) "
                f"act {m['act'] / GIB:.2f} GiB ({time.perf_counter() - t1:.1f} s)")
        return cache[seconds, batch]

    return meas, lists, act


def mode_rows(name: str, spec: dict, meas: dict, lists: dict, dit_act, dit, log=print) -> list[dict]:
    """Rows of the bounded memory modes (:data:`MODES`) for one model at :data:`MODE_HISTORIES`: :func:`case_row`
    (the same ComfyUI replay) plus the mode, the tokens carried in the conds and their host memory, the state
    modules, and for VideoSSM the absorb's activations and the bytes declared for it."""
    rows = []
    for mode in MODES:
        m_meas, m_lists, act = mode_parts(spec, mode, meas, lists, dit_act, dit, log)
        rate = MODE_RATE if mode == "pack_forcing" else "-"
        for s in MODE_HISTORIES:
            row, step = {"mode": mode, **case_row(name, spec, s, rate, m_meas, m_lists, act)}, act(s, rate, 2)
            row.update(rate=rate, M_carried=step["M_carried"],
                       cond_host_gib=round(cond_host_bytes(spec, mode, step) / GIB, 3),
                       dit_weights_gib=round(sum(x[1] for x in lists["dit"]) / GIB, 2),
                       state_weights_gib=round(sum(x[1] for x in m_lists.get("ssm", [])) / GIB, 2))
            if "absorb" in m_meas:
                row.update(absorb_act_gib=round(m_meas["absorb"]["act"] / GIB, 2),
                           absorb_proj_gib=round(max(x[1] for x in m_lists["ssm"]) / GIB, 2))
            rows.append(row)
    return rows


def cond_host_bytes(spec: dict, mode: str, step: dict) -> float:
    """Host (CPU) memory of one segment's memory conds (``conds.attach_memory`` on positive and negative): the carried
    tokens float32 ``[M, D]`` (shared by both), twice the int64 positions ``[M, 3]``, PackForcing's labels ``[M]``,
    VideoSSM's float32 state ``[L, H, dv, dk]``, plus ``samplers._calc_cond_batch``'s float32 concatenation of cond +
    uncond ``[2, M, D]`` (and ``[2, L, H, dv, dk]``) made on the host before ComfyUI casts it to the device in bf16
    (``convert_tensor``)."""
    cfg, m = mode_config(spec, mode), step["M_carried"]
    state = cfg.dit_blocks * cfg.dim * cfg.ssm_key_dim * 4 if mode == "video_ssm" else 0
    return 4 * m * cfg.dim * 3 + 2 * 8 * 3 * m + (8 * m if mode == "pack_forcing" else 0) + 3 * state


def mode_growth(mode_rows_: list[dict], rows: list[dict]) -> list[dict]:
    """Per model and mode (and Frame Preservation at the same rate for comparison): attended and carried tokens, the
    DiT step's activations alone and with its inputs (batch 2), the planned DiT step and the max planned peak +
    margin, at 20 s and 120 s; ``flat``: the last three stay within :data:`FLAT_TOLERANCE` (the issue's target)."""
    out = []
    fp = [{**r, "mode": "frame_preservation", "M_carried": r["M"]} for r in rows if r["rate"] == MODE_RATE]
    for model in dict.fromkeys(r["model"] for r in mode_rows_):
        for mode in ("frame_preservation", *MODES):
            at = {r["history_s"]: r for r in fp + mode_rows_ if r["model"] == model and r["mode"] == mode}
            if 20 not in at or 120 not in at:
                continue
            a, b = at[20], at[120]
            row = {"model": model, "mode": mode, "M_20s": a["M"], "M_120s": b["M"],
                   "carried_20s": a["M_carried"], "carried_120s": b["M_carried"]}
            for key, col in (("dit_act_only_b2_gib", "act_only"), ("dit_act_b2_gib", "act_b2"), ("sample_gib", "sample"),
                             ("peak_plus_margin_gib", "peak")):
                row.update({f"{col}_20s": a[key], f"{col}_120s": b[key], f"{col}_growth_pct": _pct(a[key], b[key])})
            row["flat"] = all(abs(row[f"{c}_growth_pct"]) <= 100 * FLAT_TOLERANCE for c in ("act_b2", "sample", "peak"))
            out.append(row)
    return out


def _pct(a: float, b: float) -> float:
    return round(100 * (b - a) / a, 1)


def cases() -> list[tuple[int, str]]:
    """``(history seconds, rate)`` of the table: no memory, then every history length at every rate, then 120 s
    with the last 20 s at 2x2x2 and the rest at 4x4x2."""
    return [(0, RATES[0])] + [(s, r) for r in RATES for s in HISTORIES if s] + [(120, MIXED)]


def run_models(names: list[str], log=print, modes: bool = True) -> tuple[list[dict], list[dict], list[dict]]:
    """``(rows, parts, mode_rows)``: :func:`case_row` for every model in ``names``, history length and rate,
    :func:`parts_row` per model, and (``modes``) :func:`mode_rows` for the models of :data:`MODE_MODELS`."""
    rows, parts, modes_ = [], [], []
    for name in names:
        spec = MODELS[name]
        log(f"{name}:")
        with fake_mode():
            meas, lists, dit_act, dit = measure_parts(spec, log)
            rows += [case_row(name, spec, s, r, meas[r], {**lists, "enc": lists["enc"][r]}, dit_act)
                     for s, r in spec.get("cases", cases())]
            parts.append(parts_row(name, spec, meas, lists, dit_act))
            if modes and name in MODE_MODELS:
                modes_ += mode_rows(name, spec, meas, lists, dit_act, dit, log)
    return rows, parts, modes_


def parts_row(name: str, spec: dict, meas: dict, lists: dict, dit_act) -> dict:
    """The history-independent measurements of one model (GiB): weights and activation peaks per part, and ComfyUI's
    own estimates for them (``memory_required``, ``memory_used_decode``)."""
    m = meas[RATES[0]]
    size = {k: sum(x[1] for x in v) / GIB for k, v in lists.items() if k != "enc"}
    return {"model": name, "te_weights": round(size["te"], 2), "text_act": round(m["text"]["act"] / GIB, 2),
            "dit_weights": round(size["dit"], 2), "dit_act_b2_0s": round(dit_act(0, RATES[0], 2)["act"] / GIB, 2),
            "comfy_dit_required_b2": round(dit_memory_required(spec, 2) / GIB, 2),
            "vae_weights": round(size["vae"], 2), "decode_latent": "x".join(map(str, m["decode"]["latent"][2:])),
            "decode_act": round(m["decode"]["act"] / GIB, 2), "decode_tiled_act": round(m["decode_tiled"]["act"] / GIB, 2),
            "comfy_decode_required": round(vae_memory_used(spec, m["decode"]["latent"], True) / GIB, 2),
            "lr_encode_act": round(m["lr_encode"]["act"] / GIB, 3),
            "encoder_weights": round(sum(x[1] for x in lists["enc"][RATES[0]]) / GIB, 3),
            "append_act": round(m["append"]["act"] / GIB, 3)}


TABLE = ["model", "history_s", "rate", "M", "batch", "dit_act_b2_gib", "text_gib", "sample_gib", "decode_gib",
         "encode_gib", "peak_plus_margin_gib", "fits", "reserve_vram_needed_gib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--skip-validation", action="store_true")
    ap.add_argument("--skip-modes", action="store_true", help="no PackForcing / VideoSSM rows")
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite results/vram_estimate.md from results/vram_estimate.json without measuring")
    args = ap.parse_args()
    import vram_report  # reads this module's constants: imported once it is complete

    if args.markdown_only:
        return vram_report.write_markdown_from_json()
    t0 = time.perf_counter()
    comfy_setup()
    print(f"attention: {attention_name()} (ComfyUI --use-pytorch-cross-attention) + optimized_attention_override sdpa")
    val = []
    if not args.skip_validation:
        val = validate()
        print("\nvalidation (small configurations, fake vs real CPU tensors, MiB):")
        print_table(val, list(val[0]))
    rows, parts, modes = run_models(args.models, modes=not args.skip_modes)
    print("\nmeasured parts (GiB; act = activation peak of the part alone):")
    print_table(parts, list(parts[0]))
    print(f"\nplanned peak per phase on a {CARD_GIB:g} GiB card (GiB, incl. {CUDA_CONTEXT_GIB} GiB CUDA context):")
    print_table(rows, TABLE, digits=2)
    growth = growth_rows(rows)
    print("\ngrowth of the DiT step from 20 s to 120 s of history:")
    print_table(growth, list(growth[0]) if growth else ["model"])
    mgrowth = mode_growth(modes, rows)
    vram_report.add_why_not(rows, modes)
    for r in (r for r in rows + modes if "why_not" in r):
        print(f"  {r['model']} {r.get('mode', '')} {r['history_s']} s {r['rate']}: {r['why_not']}; set {r['set_instead']}")
    if modes:
        print("\nbounded memory modes (GiB):")
        print_table(modes, ["mode", *TABLE[:3], "M_carried", *TABLE[3:8], "absorb_gib", *TABLE[8:]], digits=2)
        print("\ngrowth from 20 s to 120 s, bounded modes vs Frame Preservation:")
        print_table(mgrowth, list(mgrowth[0]))
    extra = {"attention": attention_name(), "card_gib": CARD_GIB, "cuda_context_gib": CUDA_CONTEXT_GIB,
             "target_gib": TARGET_GIB, "margin": MARGIN, "num_streams": NUM_STREAMS, "validation": val,
             "growth": growth, "parts": parts, "models": MODELS, "mode_rows": modes, "mode_growth": mgrowth,
             "seconds": round(time.perf_counter() - t0, 1)}
    print("written:", write_result("vram_estimate", rows, extra))
    print("written:", vram_report.write_markdown(rows, growth, val, parts, modes, mgrowth),
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
