"""Tiny, randomly initialised models of the real architectures (ComfyUI's own classes) for tests and the
embedded default. Not meaningful imagery.

- :func:`tiny_wan21_dit`: ``comfy.ldm.wan.model.WanModel`` t2v, dim 128 (= one 128-wide head, as ComfyUI's
  checkpoint detection assumes), 2 blocks, text width 4096; its state dict loads through the stock UNETLoader.
- :func:`tiny_wan21_vae`: ``comfy.ldm.wan.vae.WanVAE`` with base width 8 (real: 96); loads through VAELoader.
- :func:`tiny_encoder_config`: a history encoder for the tiny DiT (hidden widths 16..64 instead of 64..512).

Weights: ComfyUI's ``disable_weight_init`` layers skip init, so every tensor is set here from a seeded
generator: matrices uniform +-sqrt(3 / fan_in) (unit-variance-preserving), biases 0, norm scales 1,
Wan modulation tables N(0, 1/dim).
"""
from __future__ import annotations

import math

import torch

import comfy.ops
from comfy.ldm.wan.model import WanModel
from comfy.ldm.wan.vae import WanVAE

from ..memory.config import EncoderConfig

TINY_DIT = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=128, ffn_dim=256, freq_dim=256,
                text_dim=4096, out_dim=16, num_heads=1, num_layers=2, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6)
TINY_VAE = dict(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0)


def init_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Deterministic init of every parameter of ``module`` (see module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "modulation" in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif leaf == "bias":
                p.zero_()
            elif p.ndim == 1 or leaf in ("gamma", "scale") or name.endswith("norm.weight") or "norm" in name:
                p.fill_(1.0)
            else:
                fan_in = p[0].numel()
                bound = math.sqrt(3.0 / fan_in)
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
    return module


def tiny_wan21_dit(seed: int = 0, **overrides) -> WanModel:
    cfg = {**TINY_DIT, **overrides}
    return init_weights(WanModel(operations=comfy.ops.disable_weight_init, **cfg), seed).eval()


def tiny_wan21_vae(seed: int = 1) -> WanVAE:
    return init_weights(WanVAE(**TINY_VAE), seed).eval()


def tiny_encoder_config(rate: str = "4x4x2", dim: int = 128) -> EncoderConfig:
    return EncoderConfig(family="wan21", dim=dim, rate=rate, hr_channels=(16, 32, 64, 64), attn_heads=4)
