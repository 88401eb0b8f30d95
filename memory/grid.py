"""Token-grid arithmetic for memory tokens (arXiv 2512.23851, Sec. 3; docs/design.md section 1).

Units: ``T`` latent frames, ``h, w`` latent cells, ``Ht, Wt`` DiT tokens (after the 1x2x2 patchify).
A memory token at rate ``rh x rw x rt`` covers ``rt`` latent frames and ``rh x rw`` DiT tokens; sizes that
do not divide are floored (the remainder is not covered).
"""
from __future__ import annotations

import torch

from .config import EncoderConfig


def token_grid(latent_shape: tuple[int, int, int], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """DiT token grid ``(T, Ht, Wt)`` of a latent of ``(T, h, w)`` cells (floored, as a strided conv does)."""
    t, h, w = latent_shape
    pt, ph, pw = patch_size
    return t // pt, h // ph, w // pw


def memory_grid(latent_shape: tuple[int, int, int], cfg: EncoderConfig) -> tuple[int, int, int]:
    """Memory-token grid ``(Tm, Hm, Wm)`` of one history segment of ``(T, h, w)`` latent cells."""
    t, h, w = token_grid(latent_shape, cfg.patch_size)
    rh, rw, rt = cfg.rate
    return t // rt, h // rh, w // rw


def tokens_per_second(cfg: EncoderConfig, height: int, width: int, fps: float) -> float:
    """Memory tokens per second of history at ``height x width`` pixels and ``fps``.

    Example: Wan 2.1 480p (832x480, 16 fps) gives 6240 tokens/s uncompressed and 182 at 4x4x2 (the 7.5 x 13 grid
    floors to 7 x 13; 195 = 6240 / 32 unfloored).
    """
    ft, fh, fw = cfg.vae_stride
    pt, ph, pw = cfg.patch_size
    rh, rw, rt = cfg.rate
    per_latent_frame = (height // fh // ph // rh) * (width // fw // pw // rw)
    return per_latent_frame * fps / (ft * pt * rt)


def memory_positions(
    grid: tuple[int, int, int], cfg: EncoderConfig, t_start: float, dtype=torch.float32
) -> torch.Tensor:
    """RoPE positions ``[Tm*Hm*Wm, 3]`` (t, h, w in DiT-token units) of a segment's memory tokens.

    Each token sits at the centre of the full-resolution region it covers, FramePack-style: token ``i`` along
    an axis with rate ``r`` covers positions ``i*r ... i*r + r - 1`` and is placed at ``i*r + (r - 1) / 2``
    (the mean of the positions it covers). ``t_start`` is the DiT time index of the segment's first latent
    token (latent frame for Wan's pt=1; negative for the past). Order is ``(t, h, w)`` row-major, matching ``flatten`` of a
    ``[D, Tm, Hm, Wm]`` map.
    """
    tm, hm, wm = grid
    rh, rw, rt = cfg.rate
    t = t_start + torch.arange(tm, dtype=torch.float64) * rt + (rt - 1) / 2
    h = torch.arange(hm, dtype=torch.float64) * rh + (rh - 1) / 2
    w = torch.arange(wm, dtype=torch.float64) * rw + (rw - 1) / 2
    pos = torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1)  # [Tm, Hm, Wm, 3]
    return pos.reshape(-1, 3).to(dtype)
