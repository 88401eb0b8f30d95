"""Baselines of arXiv 2512.23851's frame-retrieval table (v1): "Large Patchifier" (FramePack-style history packing).

:class:`LargePatchifier` replaces the whole history encoder by one trainable 3D patch embedding on the
full-resolution latent, at the *same token budget* as the proposed encoder at the same rate: kernel = stride =
``(pt * rt, ph * rh, pw * rw)`` (the DiT's ``1 x 2 x 2`` patch times the rate ``rh x rw x rt``), straight to the DiT
width D. Initialisation as FramePack (Zhang & Agrawala 2025) does for its ``2x4x4`` / ``4x8x8`` history kernels:
the DiT's ``patch_embedding`` kernel repeated over the bigger window and divided by the repetition count
``rt * rh * rw``, bias copied. At initialisation it therefore equals the *average* of the DiT's patch embeddings over
each window (the average-pooled patch embedding of the full-resolution latent).

The other ablations of the table come from :class:`memory.config.EncoderConfig`: "Only LR" is ``use_hr=False``
(no weights of its own: the encoder is the frozen LR branch), "Without LR" is ``use_lr=False`` (HR branch only).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..memory.config import EncoderConfig
from ..memory.encoder import combine_branches
from ..memory.grid import memory_grid


class LargePatchifier(nn.Module):
    """FramePack-style history encoder: one Conv3d, kernel = stride = DiT patch x rate (module docstring).

    A drop-in for :class:`memory.encoder.HistoryEncoder` in :func:`training.stages.encode_history`: ``.cfg`` is an
    EncoderConfig with ``use_hr=True, use_lr=False`` and the same rate, :meth:`grid` and :meth:`forward` have its
    call (``(tokens [B, M, D] in (t, h, w) order, None)``); :meth:`map` gives the ``[B, D, Tm, Hm, Wm]`` map.

    Args:
        cfg: rate, patch size, latent channels and width ``dim`` (> 0) are used; ``use_hr`` / ``use_lr`` are
            overridden to True / False (and ``cross_attention`` / ``dit_blocks`` to False / 0).
        patch_embedding: the DiT's ``Conv3d`` patch embedding (``[D, C, pt, ph, pw]`` weight) to initialise from,
            or None for a LeCun-uniform init (:meth:`reset_parameters`).
        generator: seeds that init (used only without ``patch_embedding``).
    The weights are created in torch's default dtype and device (move with ``.to``).
    Raises:
        ValueError: ``cfg.dim`` is 0, or the patch embedding's shape does not match ``cfg``.
    """

    def __init__(self, cfg: EncoderConfig, patch_embedding: nn.Conv3d | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if cfg.dim <= 0:
            raise ValueError("LargePatchifier needs a fixed width: cfg.dim is 0 (use cfg.with_dim(D))")
        self.cfg = dataclasses.replace(cfg, use_hr=True, use_lr=False, cross_attention=False, dit_blocks=0)
        self.cross = None  # no cross-attention add-on (HistoryEncoder attribute)
        rh, rw, rt = self.cfg.rate
        pt, ph, pw = self.cfg.patch_size
        self.kernel = (pt * rt, ph * rh, pw * rw)
        self.proj = nn.Conv3d(self.cfg.latent_channels, self.cfg.dim, self.kernel, stride=self.kernel)
        if patch_embedding is not None:
            self.init_from_patch_embedding(patch_embedding)
        else:
            self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """LeCun-uniform weight (bound ``sqrt(3 / fan_in)``, ``fan_in = C * kt * kh * kw``; seeded by
        ``generator``), zero bias."""
        w = self.proj.weight
        bound = (3.0 / w[0].numel()) ** 0.5
        with torch.no_grad():
            w.uniform_(-bound, bound, generator=generator)
            self.proj.bias.zero_()

    def init_from_patch_embedding(self, patch_embedding: nn.Conv3d) -> None:
        """FramePack init: weight = DiT kernel tiled ``(rt, rh, rw)`` times / ``(rt * rh * rw)``, bias copied.

        Raises:
            ValueError: the DiT kernel is not ``[D, C, pt, ph, pw]`` for this config.
        """
        w = patch_embedding.weight
        cfg = self.cfg
        want = (cfg.dim, cfg.latent_channels, *cfg.patch_size)
        if tuple(w.shape) != want:
            raise ValueError(f"patch embedding weight {tuple(w.shape)} does not match {want} (D, C, pt, ph, pw)")
        rh, rw, rt = cfg.rate
        with torch.no_grad():
            self.proj.weight.copy_(w.detach().float().repeat(1, 1, rt, rh, rw) / (rt * rh * rw))
            b = getattr(patch_embedding, "bias", None)
            if b is not None:
                self.proj.bias.copy_(b.detach().float())
            else:
                self.proj.bias.zero_()

    def grid(self, latent: torch.Tensor) -> tuple[int, int, int]:
        """Memory grid ``(Tm, Hm, Wm)`` of a ``[B, C, T, h, w]`` latent.

        Raises:
            ValueError: wrong channel count, or the latent is below one memory token.
        """
        cfg = self.cfg
        if latent.ndim != 5 or latent.shape[1] != cfg.latent_channels:
            raise ValueError(f"expected a [B, {cfg.latent_channels}, T, h, w] latent, got {tuple(latent.shape)}")
        grid = memory_grid(tuple(latent.shape[2:]), cfg)
        if min(grid) < 1:
            raise ValueError(f"latent of {tuple(latent.shape[2:])} (T, h, w) is below one memory token at rate "
                             f"{cfg.rate_str}")
        return grid

    def map(self, latent: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, h, w]`` model-space latent -> ``[B, D, Tm, Hm, Wm]`` on the memory grid (floored sizes: the
        remainder is not covered, as the HR branch and :func:`memory.grid.memory_grid`). Raises like :meth:`grid`."""
        grid = self.grid(latent)
        y = self.proj(latent.to(self.proj.weight.dtype))
        return y[:, :, : grid[0], : grid[1], : grid[2]]

    def forward(self, latent: torch.Tensor, lr_latent=None, embed=None) -> tuple[torch.Tensor, None]:
        """``(tokens [B, M, D], None)``, ``M = Tm * Hm * Wm`` in ``(t, h, w)`` order; ``lr_latent`` / ``embed`` are
        ignored (no LR branch)."""
        return combine_branches(self.map(latent), None), None


__all__ = ["LargePatchifier"]


class SlidingWindow(nn.Module):
    """The sliding-window baseline of arXiv 2512.23851 as a Stage II "encoder": no compressed memory, only the
    history's last ``frames`` latent frames as uncompressed tokens (the DiT's own first projection at rate 1x1x1, at
    times ``-frames .. -1``: :func:`memory.encoder.overlap_window`), exactly what memory mode ``sliding_window`` gives
    a segment at inference (:mod:`memory.designs.sliding_window`, 3 latent frames). No weights: Stage II trains only a
    LoRA for it (the lab set's ``framememory_lab_wan21_sliding_lora.safetensors``); :func:`training.export.export_encoder`
    writes no encoder file for it. :func:`training.stages.encode_history` runs the design named by ``memory_design``."""

    memory_design = "sliding_window"

    def __init__(self, dim: int, frames: int = 3, family: str = "wan21") -> None:
        super().__init__()
        if frames < 1:
            raise ValueError(f"a sliding window needs frames >= 1, got {frames}")
        self.cfg = EncoderConfig(family=family, dim=dim, rate=(1, 1, 1), use_hr=False, use_lr=True, hr_channels=(),
                                 overlap_latent_frames=frames)
