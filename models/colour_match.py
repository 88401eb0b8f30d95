"""Colour-drift correction of the storyboard loop: before a new segment is appended to the history, its colour
statistics are matched to the history's (mean / standard deviation transfer per CIELAB channel, Reinhard et al.,
"Color Transfer between Images", 2001), with kornia's sRGB <-> Lab conversions (``kornia.color.rgb_to_lab`` /
``lab_to_rgb``, D65; kornia comes with ComfyUI).

Autoregressive generation drifts in colour: every segment is conditioned on the previous ones, so a small tint or
saturation shift accumulates over a long storyboard. The reference is the history as a whole: the running sums of
every frame appended so far (:attr:`memory.history.HistoryBuffer.colour_stats`: per Lab channel the pixel count, sum
and sum of squares, ``[3, 3]`` float64; the starting clip counts), not only the last segment, so a correction never
follows the drift it corrects.

Only the segment's frames are corrected (the output and the pixels the LR branch encodes); its latent stays the
sampled one, because the decode stream continues from it (models/vae_stream.py).
"""
from __future__ import annotations

import kornia.color
import torch

from ..memory.frames import to_uint8

STD_FLOOR = 1e-3  # Lab units: a flat channel (std below this) is shifted, not scaled


def lab_stats(frames: torch.Tensor) -> torch.Tensor:
    """Colour statistics of ``frames`` ``[F, H, W, 3]`` (uint8 or float 0..1 sRGB): ``[3, 3]`` float64, row c = (pixel
    count, sum, sum of squares) of Lab channel c (L 0..100, a and b about -128..127). Statistics of several clips
    add up (``lab_stats(a) + lab_stats(b)`` = statistics of both). Raises ValueError for another shape."""
    return _stats_of_lab(_to_lab(frames))


def mean_std(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean [3], std [3])`` float64 per Lab channel from :func:`lab_stats` sums (population std)."""
    n, s, ss = stats.unbind(dim=1)
    mean = s / n
    return mean, (ss / n - mean * mean).clamp_min(0).sqrt()


def match_colour(frames: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``frames`` with their Lab mean and standard deviation per channel moved towards ``reference``'s.

    Args:
        frames: ``[F, H, W, 3]`` uint8 or float 0..1 sRGB (one segment; statistics over all its frames together, so
            motion inside the segment is kept).
        reference: :func:`lab_stats` of the history ``[3, 3]`` float64.
        strength: 0 (unchanged) .. 1 (statistics matched); the Lab values are blended linearly.
    Returns:
        frames of the same shape and dtype (uint8 in, uint8 out; float in, float32 0..1 out).
    Raises:
        ValueError: strength outside 0..1, a reference of another shape or without pixels, frames of another shape.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour_strength must be in 0..1, got {strength}")
    if reference.shape != (3, 3) or not bool((reference[:, 0] > 0).all()):
        raise ValueError(f"the colour reference must be lab_stats() of at least one pixel, [3, 3]; got "
                         f"{tuple(reference.shape)}")
    if strength == 0.0:
        return frames
    lab = _to_lab(frames)  # [F, 3, H, W] float32
    src_mean, src_std = mean_std(_stats_of_lab(lab))
    ref_mean, ref_std = mean_std(reference)
    scale = torch.where(src_std > STD_FLOOR, ref_std / src_std.clamp_min(STD_FLOOR), torch.ones_like(src_std))
    view = (1, 3, 1, 1)
    matched = (lab - src_mean.float().view(view)) * scale.float().view(view) + ref_mean.float().view(view)
    out = kornia.color.lab_to_rgb(torch.lerp(lab, matched, strength), clip=True).permute(0, 2, 3, 1)  # [F, H, W, 3]
    return to_uint8(out) if frames.dtype == torch.uint8 else out.contiguous()


def correct_segment(history, frames: torch.Tensor, strength: float) -> torch.Tensor:
    """The colour correction of one new segment (before it is appended to ``history``, a
    :class:`~memory.history.HistoryBuffer`): :func:`match_colour` against ``history.colour_stats``; ``frames``
    unchanged when ``strength`` is 0 or the history has no statistics yet (the first segment of a storyboard without
    a starting clip). Raises like :func:`match_colour`."""
    if strength == 0.0 or history.colour_stats is None:
        return frames
    return match_colour(frames, history.colour_stats, strength)


def record_colour(history, frames: torch.Tensor) -> None:
    """Add the statistics of ``frames`` ``[F, H, W, 3]`` (just appended to ``history``) to ``history.colour_stats``
    (a new tensor: copies of the history keep theirs)."""
    stats = lab_stats(frames)
    history.colour_stats = stats if history.colour_stats is None else history.colour_stats + stats


def _stats_of_lab(lab: torch.Tensor) -> torch.Tensor:
    """:func:`lab_stats` of Lab frames ``[F, 3, H, W]``."""
    flat = lab.double().transpose(0, 1).reshape(3, -1)  # [3, F*H*W]
    count = torch.full((3,), float(flat.shape[1]), dtype=torch.float64)
    return torch.stack([count, flat.sum(dim=1), (flat * flat).sum(dim=1)], dim=1)


def _to_lab(frames: torch.Tensor) -> torch.Tensor:
    """``[F, H, W, 3]`` uint8 / float 0..1 sRGB -> ``[F, 3, H, W]`` float32 Lab (kornia)."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got {tuple(frames.shape)}")
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float().clamp(0, 1)
    return kornia.color.rgb_to_lab(x.permute(0, 3, 1, 2))


__all__ = ["lab_stats", "mean_std", "match_colour", "correct_segment", "record_colour"]
