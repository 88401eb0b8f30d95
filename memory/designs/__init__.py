"""The memory designs, one module each, looked up by memory mode name (the Storyboard's ``memory_mode``):

=====================  ===============================================================================================
``frame_preservation``  arXiv 2512.23851: every compressed history token (Fig. 2 encoder), plus its add-ons.
``pack_forcing``        PackForcing (Mao et al.): sink + top-K compressed mid blocks + recent frames, RoPE re-packed
                        per forward; the compressor is our Fig. 2 encoder.
``video_ssm``           VideoSSM (arXiv 2512.04519): sink + recent frames uncompressed (local memory) and a gated
                        delta-rule state per DiT block that absorbs the frames leaving the window (global memory).
``sliding_window``      the last 3 latent frames uncompressed, nothing else (arXiv 2512.23851's baseline).
``off``                 no memory.
=====================  ===============================================================================================

Every design module has the same interface:

- ``NAME``; ``TITLE`` (the name people read, e.g. in the Storyboard's summary); ``ENCODED`` (reads the Fig. 2
  encoder's tokens), ``SINGLE_ENCODER`` (refuses a combination of encoder files), ``FOLLOWS_MEMORY_TIMESTEP``
  (training: the memory tokens' modulation follows ``EncoderConfig.memory_timestep``);
- ``NETWORK``: the ``nn.Module`` class an encoder file of this ``EncoderConfig.memory_type`` holds
  (:func:`network_class`), None for a design with no network of its own (sliding_window, off);
  ``PER_BLOCK_STATE`` (a state per DiT block absorbs the frames leaving the window: ``EncoderConfig.dit_blocks`` is
  the DiT's block count, and each absorb step needs memory of its own); ``MEMORY_GROWS`` (the attended memory grows
  with the history, so a long history can outgrow the GPU; the others are bounded);
- a frozen config dataclass and ``config(encoder_configs) -> config`` (the settings live in the encoder file's
  :class:`memory.config.EncoderConfig`, whose JSON format they leave unchanged);
- ``encoder_config(cfg, name, weighted) -> EncoderConfig``: an encoder file's config as the design runs it (or
  ValueError naming the file);
- ``context(history: HistoryView, cfg) -> Context``: the context a DiT block sees, built by Stage II training and by
  inference alike (:mod:`.context`).

Which DiT family runs which design is the family's knowledge (its adapter's hooks: ``models/families/``, each
family's ``MEMORY_MODES``). Pure torch + einops: no ComfyUI import.
"""
from __future__ import annotations

from types import ModuleType

from torch import nn

from ..config import MEMORY_TYPES
from . import frame_preservation, off, pack_forcing, sliding_window, video_ssm
from .context import Context, HistoryView

DESIGNS: dict[str, ModuleType] = {m.NAME: m for m in (frame_preservation, pack_forcing, video_ssm, sliding_window, off)}
MEMORY_MODES = tuple(DESIGNS)  # ("frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off")
ENCODED_MODES = tuple(name for name, m in DESIGNS.items() if m.ENCODED)  # modes that need the Fig. 2 encoder's tokens


def design(mode: str) -> ModuleType:
    """The design module of memory mode ``mode``.

    Raises:
        ValueError: ``mode`` is not one of :data:`MEMORY_MODES`.
    """
    if mode not in DESIGNS:
        raise ValueError(f"memory_mode must be one of {list(MEMORY_MODES)}, got {mode!r}")
    return DESIGNS[mode]


def network_class(memory_type: str) -> type[nn.Module]:
    """The ``nn.Module`` class an encoder file of ``memory_type`` (``EncoderConfig.memory_type``) holds: its design's
    ``NETWORK`` (``HistoryEncoder`` for frame_preservation and pack_forcing, ``StateMemory`` for video_ssm), built as
    ``network_class(cfg.memory_type)(cfg, ops=...)``.

    Raises:
        ValueError: ``memory_type`` is not a memory mode, or its design holds no network (sliding_window, off).
    """
    network = design(memory_type).NETWORK
    if network is None:
        raise ValueError(f"memory design {memory_type!r} holds no network of its own, so no encoder file is of that "
                         f"memory_type: it must be one of {list(MEMORY_TYPES)}")
    return network


__all__ = ["DESIGNS", "MEMORY_MODES", "ENCODED_MODES", "design", "network_class", "Context", "HistoryView"]
