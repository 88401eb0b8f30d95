"""Frame Preservation (arXiv 2512.23851): every compressed history token of the Fig. 2 encoder
(:class:`memory.encoder.HistoryEncoder`, at rate e.g. 4x4x2), plus its add-ons: the overlap window (the history's last
``overlap_latent_frames`` latent frames uncompressed, at times ``-N .. -1``) and cross-attention from the encoder's last
hidden states into every DiT block.

Several encoder files can run together (an ``EncoderSet`` / ``MultiEncoder``: their tokens concatenated in order, one
window, the longest asked for).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import EncoderConfig
from ..encoder import HistoryEncoder
from .context import Context, HistoryView, uncompressed

NAME = "frame_preservation"
TITLE = "Frame Preservation"  # the name people read (the Storyboard's summary)
ENCODED = True  # reads the Fig. 2 encoder's tokens: the history is encoded while it grows
SINGLE_ENCODER = False  # a combination of encoder files runs as one memory
FOLLOWS_MEMORY_TIMESTEP = True  # the memory tokens' modulation follows EncoderConfig.memory_timestep
NETWORK = HistoryEncoder  # what an encoder file of this memory_type holds: the Fig. 2 encoder
PER_BLOCK_STATE = False  # no state per DiT block
MEMORY_GROWS = True  # every compressed token is attended: the memory grows with the history


@dataclass(frozen=True)
class FramePreservationConfig:
    """Frame Preservation's settings (from the encoder configs: :func:`config`)."""

    overlap_latent_frames: int = 0  # add-on: the history's last N latent frames also as uncompressed tokens (paper: 3)


def config(cfgs: Sequence[EncoderConfig]) -> FramePreservationConfig:
    """The settings of a combination of encoder configs: the longest overlap window asked for."""
    return FramePreservationConfig(max(c.overlap_latent_frames for c in cfgs))


def encoder_config(cfg: EncoderConfig, name: str, weighted: bool) -> EncoderConfig:
    """The encoder file's config as it is.

    Raises:
        ValueError: the file is a VideoSSM state memory (no compressor); ``name`` names it.
    """
    if cfg.memory_type == "video_ssm":
        raise ValueError(f"memory encoder '{name}' is a VideoSSM state memory (no compressor): set memory_mode "
                         f"to video_ssm, or load a frame_preservation / pack_forcing encoder for {NAME}")
    return cfg


def context(history: HistoryView, cfg: FramePreservationConfig) -> Context:
    """The Fig. 2 tokens of the history (``history.compressed()``) followed by the overlap window's last
    ``min(N, T_H)`` latent frames (times ``-N .. -1``), with the cross-attention add-on's hidden states
    (``history.hidden()``). Tokens None when nothing is encoded yet and there is no window."""
    tokens, positions = history.compressed()
    n = min(cfg.overlap_latent_frames, history.frames)
    window = uncompressed(history.embed, history.latents(history.frames - n, history.frames), -float(n)) if n else None
    if window is not None and tokens is None:
        tokens, positions = window
    elif window is not None:
        tokens = torch.cat([tokens, window[0].to(tokens)], dim=-2)
        positions = torch.cat([positions.double(), window[1]], dim=0)
    return Context(tokens, positions, hidden=history.hidden())


__all__ = ["NAME", "TITLE", "NETWORK", "FramePreservationConfig", "config", "encoder_config", "context"]
