"""Decoding a storyboard's segments: one continuous VAE stream over the whole video (:class:`~models.vae_stream.
VideoStream`), the causal cache kept from segment to segment, so each segment's frames equal a one-shot decode of
the whole latent video (context mode for VAEs without such a cache)."""
from __future__ import annotations

import torch

from ..memory.frames import to_uint8
from ..memory.history import HistoryBuffer
from .vae_stream import VideoStream, CONTEXT_LATENTS


def decode_stream(vae, history: HistoryBuffer, time_stride: int) -> VideoStream:
    """A decode stream for the segments that follow ``history``: a fresh one for an empty history; otherwise one
    warmed up by decoding the history's last :data:`~models.vae_stream.CONTEXT_LATENTS` latent frames (the frames are
    discarded), so the first generated segment continues the history's stream (from there on exactly)."""
    stream = VideoStream(vae, "decode", time_stride=time_stride)
    tail = history.last_latents(CONTEXT_LATENTS)
    if tail is not None:
        stream.decode(tail[None])
    return stream


def decode_segment(decoder: VideoStream, samples: torch.Tensor, plan) -> torch.Tensor:
    """The frames ``[F, H, W, 3]`` uint8 CPU (4x less RAM than float32) of the sampled segment ``samples``
    ``[1, C, T, h, w]``, continuing ``decoder``'s stream. ``plan``: its :class:`memory.storyboard.SegmentPlan`.
    Raises RuntimeError when it decodes to another frame count than ``plan.frames``."""
    images = to_uint8(decoder.decode(samples))
    if images.shape[0] != plan.frames:
        raise RuntimeError(f"segment {plan.index} decoded to {images.shape[0]} frames, the plan has {plan.frames}")
    return images


def decode_description(decoder: VideoStream) -> str:
    """How the run decodes, for the report: exact (a cache kept between segments) or with context frames."""
    return "exact (VAE cache kept between segments)" if decoder.exact else f"context ({CONTEXT_LATENTS} latent frames)"


__all__ = ["decode_stream", "decode_segment", "decode_description"]
