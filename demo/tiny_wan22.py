"""Tiny, randomly initialised Wan 2.2 TI2V 5B-shaped models (ComfyUI's own classes) for tests and demos. Not
meaningful imagery.

- :func:`tiny_wan22_dit`: ``comfy.ldm.wan.model.WanModel`` t2v with 48 latent channels in and out (the 5B's
  ``in_dim`` / ``out_dim``; real: width 3072, 30 blocks), width 128 (= one 128-wide head, as ComfyUI's
  checkpoint detection assumes), 2 blocks, text width 4096. Its state dict loads through the stock UNETLoader as
  Wan 2.2 (``supported_models.WAN22_T2V``, detected by ``out_dim`` 48 -> ``model_base.WAN22``).
- :func:`tiny_wan22_vae_state_dict` + :func:`load_wan22_vae`: the Wan 2.2 VAE (``comfy.ldm.wan.vae2_2.WanVAE``,
  48 channels, 4x16x16) with base widths 8 / 16 (real: 160 / 256). ``comfy.sd.VAE`` detects a Wan 2.2 VAE by
  its keys but builds it with fixed widths, so the stock VAELoader cannot load a tiny one: :func:`load_wan22_vae`
  runs ``comfy.sd.VAE``'s own detection with the widths read from the state dict (in-process only).
- :func:`real_wan22_vae_state_dict`: the real-size Wan 2.2 VAE (705 M parameters, 1.41 GB in bf16) with random
  weights, for the stock VAELoader (the tiny workflow). Slow on a CPU (about 100 s to decode 13 frames of
  256x128 on 2 cores).
- :func:`tiny_wan22_encoder_config`: a history encoder for the tiny DiT.
- :func:`tiny_wan21_i2v_dit`: a tiny Wan 2.1 I2V ``WanModel`` (``in_dim`` 36, CLIP-vision projection).

Weights: :func:`demo.tiny_models.init_weights` (ComfyUI's ``disable_weight_init`` layers skip init).
"""
from __future__ import annotations

import contextlib
import math

import torch

import comfy.ops
from comfy.ldm.wan.model import WanModel

from ..memory.config import EncoderConfig
from .tiny_models import TINY_DIT, init_weights

TINY_DIT22 = {**TINY_DIT, "in_dim": 48, "out_dim": 48}
TINY_I2V = {**TINY_DIT, "model_type": "i2v", "in_dim": 36}
VAE22 = dict(z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True],
             dropout=0.0)  # comfy/sd.py builds WanVAE(dim=160, **VAE22) with the default dec_dim=256
TINY_VAE22_WIDTHS = dict(dim=8, dec_dim=16)
REAL_VAE22_WIDTHS = dict(dim=160, dec_dim=256)


def tiny_wan22_dit(seed: int = 0, **overrides) -> WanModel:
    cfg = {**TINY_DIT22, **overrides}
    return init_weights(WanModel(operations=comfy.ops.disable_weight_init, **cfg), seed).eval()


def tiny_wan21_i2v_dit(seed: int = 0, **overrides) -> WanModel:
    cfg = {**TINY_I2V, **overrides}
    return init_weights(WanModel(operations=comfy.ops.disable_weight_init, **cfg), seed).eval()


def _vae22(widths: dict, device=None):
    from comfy.ldm.wan.vae2_2 import WanVAE

    with torch.device(device) if device else contextlib.nullcontext():
        return WanVAE(**widths, **VAE22)


def tiny_wan22_vae_state_dict(seed: int = 1) -> dict[str, torch.Tensor]:
    """State dict (float32) of a Wan 2.2 VAE with base widths 8 / 16 and random weights; load it with
    :func:`load_wan22_vae`."""
    return {k: v.contiguous() for k, v in init_weights(_vae22(TINY_VAE22_WIDTHS), seed).state_dict().items()}


def real_wan22_vae_state_dict(seed: int = 1, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """State dict of the real-size Wan 2.2 VAE with random weights in ``dtype`` (as :func:`init_weights`: kernels
    uniform +-sqrt(3 / fan_in), RMS-norm scales 1, biases 0), drawn without building the 705 M-parameter module.
    Loads through ``comfy.sd.VAE(sd=...)`` / the stock VAELoader."""
    shapes = {k: v.shape for k, v in _vae22(REAL_VAE22_WIDTHS, device="meta").state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("bias"):
            sd[name] = torch.zeros(shape, dtype=dtype)
        elif name.endswith("gamma") or len(shape) <= 1:
            sd[name] = torch.ones(shape, dtype=dtype)
        else:
            bound = math.sqrt(3.0 / math.prod(shape[1:]))
            sd[name] = torch.empty(shape, dtype=dtype).uniform_(-bound, bound, generator=g)
    return sd


def load_wan22_vae(sd: dict[str, torch.Tensor]):
    """A ``comfy.sd.VAE`` from a Wan 2.2 VAE state dict of any base widths.

    ``comfy.sd.VAE`` recognises the Wan 2.2 VAE by its keys and builds ``vae2_2.WanVAE(dim=160, ...)``; for the
    duration of this call that constructor takes ``dim`` / ``dec_dim`` from the state dict instead
    (``encoder.conv1.weight`` has ``dim`` rows, ``decoder.conv1.weight`` ``4 * dec_dim``). Everything else (memory
    estimates, 4x16x16 strides, 48 channels, dtype, the model patcher) is ComfyUI's own. Not thread-safe; demo and
    tests only.
    """
    import comfy.ldm.wan.vae2_2 as vae2_2
    import comfy.sd

    widths = dict(dim=sd["encoder.conv1.weight"].shape[0], dec_dim=sd["decoder.conv1.weight"].shape[0] // 4)
    stock = vae2_2.WanVAE

    def sized(**cfg):
        return stock(**{**cfg, **widths})

    vae2_2.WanVAE = sized
    try:
        vae = comfy.sd.VAE(sd=sd)
    finally:
        vae2_2.WanVAE = stock
    if vae.latent_channels != 48:
        raise ValueError("not a Wan 2.2 VAE state dict (comfy.sd.VAE did not detect 48 latent channels)")
    return vae


def tiny_wan22_encoder_config(rate: str = "4x4x2", dim: int = 128) -> EncoderConfig:
    return EncoderConfig(family="wan22", dim=dim, rate=rate, latent_channels=48, vae_stride=(4, 16, 16),
                         hr_channels=(16, 32, 64, 64), attn_heads=4)
