"""No memory: the segment attends to nothing of the history (its latents still stream through the VAE)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import EncoderConfig
from .context import Context, HistoryView

NAME = "off"
TITLE = "off"  # the name people read
ENCODED = False  # reads no Fig. 2 tokens
SINGLE_ENCODER = False  # any encoder file (unused)
FOLLOWS_MEMORY_TIMESTEP = False
NETWORK = None  # no network: no memory (not an EncoderConfig.memory_type)
PER_BLOCK_STATE = False  # no state per DiT block
MEMORY_GROWS = False  # nothing is attended


@dataclass(frozen=True)
class OffConfig:
    """No settings."""


def config(cfgs: Sequence[EncoderConfig]) -> OffConfig:
    return OffConfig()


def encoder_config(cfg: EncoderConfig, name: str, weighted: bool) -> EncoderConfig:
    """The encoder file's config unchanged (nothing of it is used)."""
    return cfg


def context(history: HistoryView, cfg: OffConfig) -> Context:
    """The empty context."""
    return Context()


__all__ = ["NAME", "TITLE", "NETWORK", "OffConfig", "config", "encoder_config", "context"]
