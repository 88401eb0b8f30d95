"""Tiny, randomly initialised HunyuanVideo (ComfyUI's own classes) for tests and the embedded default. Not
meaningful imagery.

- :func:`tiny_hunyuan_dit`: ``comfy.ldm.hunyuan_video.model.HunyuanVideo`` T2V, width 128 (= one 128-wide head:
  ComfyUI's checkpoint detection assumes ``num_heads = width // 128`` and RoPE axes 16/56/56), 2 double and 2
  single blocks, text width 4096, pooled width 768 (``vector_in``) and guidance embedding as in the real
  model (13B: width 3072, 20 + 40 blocks). Its state dict loads through the stock UNETLoader as HunyuanVideo.
- :func:`tiny_hunyuan_vae_state_dict`: HunyuanVideo's VAE (``AutoencoderKL`` with causal 3D convolutions, 4x8x8,
  16 channels). ``comfy.sd.VAE`` detects it by ``decoder.conv_in.conv.weight`` and builds it with fixed widths
  (128..512), so it cannot be made tiny: this is the real size (246 M parameters, 493 MB in bf16) with random
  weights.
- :func:`tiny_hunyuan_encoder_config`: a history encoder for the tiny DiT.

Weights: :func:`demo.tiny_models.init_weights` (ComfyUI's ``disable_weight_init`` layers skip init).
"""
from __future__ import annotations

import math

import torch

import comfy.ops
from comfy.ldm.hunyuan_video.model import HunyuanVideo

from ..memory.config import EncoderConfig
from .tiny_models import init_weights

TINY_DIT = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56],
                theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
                use_cond_type_embedding=False, vision_in_dim=None)
VAE_DDCONFIG = dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                    num_res_blocks=2, attn_resolutions=[], dropout=0.0, conv3d=True, time_compress=4)  # comfy/sd.py
POOLED_DIM = 768  # CLIP-L pooled output -> y -> vector_in
NEW_PARAMS = dict(meanflow_sum=False)  # HunyuanVideoParams fields of newer ComfyUI (meanflow_sum: v0.17), T2V values


def _new_params() -> dict:
    """The :data:`NEW_PARAMS` that the installed ComfyUI's ``HunyuanVideoParams`` declares (feature-detected)."""
    import dataclasses

    from comfy.ldm.hunyuan_video.model import HunyuanVideoParams

    names = {f.name for f in dataclasses.fields(HunyuanVideoParams)}
    return {k: v for k, v in NEW_PARAMS.items() if k in names}


def tiny_hunyuan_dit(seed: int = 0, **overrides) -> HunyuanVideo:
    """The tiny T2V DiT (module docstring), weights drawn with ``seed``. Fields that ``HunyuanVideoParams`` of the
    installed ComfyUI has and :data:`TINY_DIT` lacks get the real T2V model's value (:data:`NEW_PARAMS`)."""
    cfg = {**TINY_DIT, **_new_params(), **overrides}
    return init_weights(HunyuanVideo(operations=comfy.ops.disable_weight_init, **cfg), seed).eval()


def tiny_hunyuan_vae_state_dict(seed: int = 1, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """State dict of HunyuanVideo's VAE with random weights (see module docstring), in ``dtype``.

    Matrices and kernels uniform +-sqrt(3 / fan_in), norm scales 1, biases 0 (as ``init_weights``), drawn
    without building the 246 M-parameter module. Loads with ``comfy.sd.VAE(sd=...)`` / the stock VAELoader."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=16).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            sd[name] = torch.zeros(shape, dtype=dtype)
        elif len(shape) == 1:  # GroupNorm weights
            sd[name] = torch.ones(shape, dtype=dtype)
        else:
            fan_in = math.prod(shape[1:])
            bound = math.sqrt(3.0 / fan_in)
            sd[name] = torch.empty(shape, dtype=dtype).uniform_(-bound, bound, generator=g)
    return sd


def tiny_hunyuan_encoder_config(rate: str = "4x4x2", dim: int = 128) -> EncoderConfig:
    return EncoderConfig(family="hunyuan_video", dim=dim, rate=rate, hr_channels=(16, 32, 64, 64), attn_heads=4)
