"""Frame preparation shared by the nodes and the training data (one resize/crop, one float->uint8), so a clip given
to a Storyboard and the same clip made into training shards become the same pixels."""
from __future__ import annotations

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
