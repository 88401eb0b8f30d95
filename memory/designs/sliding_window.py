"""The sliding-window baseline of arXiv 2512.23851: the history's last latent frames uncompressed (the DiT's own first
projection at rate 1x1x1, at times ``-N .. -1``), nothing else. Its Stage II "encoder" (no weights, a LoRA only) is
``training.baselines.SlidingWindow``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from ..config import EncoderConfig
from .context import Context, HistoryView, uncompressed

NAME = "sliding_window"
TITLE = "sliding window"  # the name people read (the Storyboard's summary)
ENCODED = False  # reads no Fig. 2 tokens
SINGLE_ENCODER = False  # any encoder file: only its family and width are used
FOLLOWS_MEMORY_TIMESTEP = False  # training: the memory tokens always get the zero-timestep modulation
NETWORK = None  # no network of its own (the DiT's patch embedding; not an EncoderConfig.memory_type)
PER_BLOCK_STATE = False  # no state per DiT block
MEMORY_GROWS = False  # bounded: the last latent frames only


@dataclass(frozen=True)
class SlidingWindowConfig:
    """The window (from an encoder config: :func:`config`)."""

    latent_frames: int = 3  # N: the history's last latent frames (arXiv 2512.23851's baseline: 3)


def config(cfgs: Sequence[EncoderConfig]) -> SlidingWindowConfig:
    """The window of the resolved encoder config ``cfgs[0]`` (its ``overlap_latent_frames``)."""
    return SlidingWindowConfig(cfgs[0].overlap_latent_frames)


def encoder_config(cfg: EncoderConfig, name: str, weighted: bool) -> EncoderConfig:
    """Any encoder file's config with the baseline's window (``overlap_latent_frames`` = 3 latent frames)."""
    return dataclasses.replace(cfg, overlap_latent_frames=SlidingWindowConfig().latent_frames)


def context(history: HistoryView, cfg: SlidingWindowConfig) -> Context:
    """The last ``min(N, T_H)`` latent frames, uncompressed, at times ``-N .. -1`` (empty for an empty history)."""
    r = min(history.frames, cfg.latent_frames)
    window = uncompressed(history.embed, history.latents(history.frames - r, history.frames), -float(r))
    return Context() if window is None else Context(*window)


__all__ = ["NAME", "TITLE", "NETWORK", "SlidingWindowConfig", "config", "encoder_config", "context"]
