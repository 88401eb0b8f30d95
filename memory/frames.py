"""Frame preparation shared by the nodes and the training data (one resize/crop, one float->uint8), so a clip given
to a Storyboard and the same clip made into training shards become the same pixels."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F


def fit_frames(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Center-crop to the aspect ratio of ``width x height`` and area-resize.

    Args:
        images: ``[F, H, W, 3]`` float 0..1 (ComfyUI IMAGE) or uint8.
    Returns:
        ``[F, height, width, 3]`` float32 0..1 (the input itself when it already has that size and is float).
    """
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    f, h, w, _ = images.shape
    if (h, w) == (height, width):
        return images
    scale = max(height / h, width / w)
    ch, cw = round(height / scale), round(width / scale)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = images[:, y0:y0 + ch, x0:x0 + cw].movedim(-1, 1).float()
    return F.interpolate(crop, size=(height, width), mode="area").movedim(1, -1).clamp(0, 1)


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE frames (float 0..1, any shape) as uint8 0..255 (rounded, clamped); uint8 input is returned as is.
    The one float->uint8 conversion of the pack (4x less RAM for kept frames)."""
    if frames.dtype == torch.uint8:
        return frames
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)


__all__ = ["fit_frames", "to_uint8"]


def resample_indexed(items: Iterable[tuple[float, object]], fps: float, start: int = 0) -> Iterator[tuple[int, object]]:
    """``(k, item)`` for ``k = start, start + 1, ...``: of ``(time s, item)`` pairs (times increasing), the item nearest
    in time to ``k / fps`` (ties: the earlier), up to the last item's time. Items before ``start / fps`` only serve as
    the earlier neighbour. The one resampling rule of the training reader (``training.data.resample``) and the
    streaming history reader (``models.video_history``)."""
    prev, k = None, start
    for t, item in items:
        while k / fps <= t:
            tk = k / fps
            yield k, prev[1] if prev is not None and tk - prev[0] <= t - tk else item
            k += 1
        prev = (t, item)
