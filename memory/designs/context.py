"""What every memory design reads and returns: the history view it builds from, the context a DiT block sees, and
the uncompressed local window that PackForcing, VideoSSM and the sliding window share.

A design's ``context(history, cfg)`` (:mod:`memory.designs`) reads a :class:`HistoryView` and returns a
:class:`Context`. Stage II training (``training/stages.py``) and inference (``models/memory_modes.py``) each build the
view from what they hold (a batch of latents / a :class:`memory.history.HistoryBuffer` with its caches) and turn the
context into their own carriers (a namespace for the DiT forward / model conds); the context itself is built once.

Times: the segment being generated starts at time 0, the history's latent frames sit at ``-T_H .. -1``.
Partition labels ``blocks`` ``[M]`` int64 (PackForcing): :data:`SINK`, :data:`RECENT` or a mid block index ``0, 1, ...``
in time order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import EncoderConfig
from ..encoder import overlap_window

SINK, RECENT = -1, -2
LatentRange = Callable[[int, int], "torch.Tensor | None"]  # (start, end) -> model-space latent [B, C, n, h, w] or None
_UNIT_RATE = EncoderConfig(rate=(1, 1, 1))  # uncompressed tokens: the DiT's own grid (only the rate is read)


def _no_compressed() -> tuple[None, None]:
    return None, None


def _no_hidden() -> None:
    return None


def _no_state(start: int, end: int) -> None:
    return None


@dataclass(frozen=True)
class HistoryView:
    """The history as a design reads it (callables: a design asks only for what it uses, caches stay with the caller).

    frames: ``T_H`` latent frames of history.
    embed: the DiT's first projection, ``[B, C, n, h, w]`` model-space latent -> ``[B, D, n, Ht, Wt]``.
    latents: ``(start, end)`` -> model-space latent frames ``[B, C, end - start, h, w]`` of the history, or None.
    compressed: ``()`` -> the Fig. 2 encoder's tokens over the history ``(tokens [B, M, D], positions [M, 3])``, t
        relative to the segment being generated, or ``(None, None)`` before anything is encoded.
    hidden: ``()`` -> the cross-attention add-on's hidden states ``[M_h, Ch]`` / ``[B, M_h, Ch]``, or None.
    absorb: ``(start, end)`` -> VideoSSM's state ``[B, L, H, dv, dk]`` after absorbing latent frames
        ``start .. end - 1``, or None without state modules.
    """

    frames: int
    embed: Callable[[torch.Tensor], torch.Tensor]
    latents: LatentRange
    compressed: Callable[[], tuple] = _no_compressed
    hidden: Callable[[], "torch.Tensor | None"] = _no_hidden
    absorb: Callable[[int, int], "torch.Tensor | None"] = _no_state


@dataclass
class Context:
    """What a DiT block sees of the history besides the segment's own tokens (empty: no memory).

    tokens: ``[B, M, D]`` memory tokens (a design keeps the batch dimension of its inputs), or None.
    positions: ``[M, 3]`` float64 RoPE positions ``(t, h, w)`` in DiT-token units, or None.
    hidden: the cross-attention add-on's hidden states (frame_preservation), or None.
    blocks: ``[M]`` int64 partition labels (PackForcing), or None.
    pack: ``[4]`` int64 ``(top_k, rt, S, R)``: top-K, latent frames per mid block, sink and recent frames, or None.
    state: ``[B, L, H, dv, dk]`` VideoSSM's state of every DiT block, or None.
    """

    tokens: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    blocks: torch.Tensor | None = None
    pack: torch.Tensor | None = None
    state: torch.Tensor | None = None

    def extras(self) -> dict[str, torch.Tensor]:
        """The design's extra tensors by field name, in the order blocks, pack, state (absent ones left out)."""
        return {k: v for k, v in (("blocks", self.blocks), ("pack", self.pack), ("state", self.state)) if v is not None}


def uncompressed(embed, latent: torch.Tensor | None, t_start: float) -> tuple | None:
    """Latent frames as uncompressed context: the DiT's first projection ``embed`` at rate 1x1x1
    (:func:`memory.encoder.overlap_window`), ``(tokens [B, N*Ht*Wt, D], positions [N*Ht*Wt, 3] float64)`` with the
    first frame at time ``t_start``; None for an empty ``latent``."""
    if latent is None or latent.shape[2] == 0:
        return None
    tokens, pos = overlap_window(embed, latent, _UNIT_RATE)  # times -N .. -1
    return tokens, pos.double() + (t_start + latent.shape[2])


def partition_frames(history_frames: int, sink: int, recent: int) -> tuple[int, int]:
    """``(S, R)``: latent frames of the sink and of the recent window for a history of ``history_frames`` latent
    frames, clamped so that they never overlap (the sink first, the recent window gets what is left)."""
    s = min(sink, history_frames)
    return s, min(recent, history_frames - s)


def local_context(embed, latents: LatentRange, history_frames: int, sink: int,
                  recent: int) -> tuple[tuple | None, tuple | None, int, int]:
    """Sink and recent partitions of a history of ``history_frames`` latent frames (``sink`` / ``recent`` latent
    frames asked for, :func:`partition_frames`): ``(sink, recent, S, R)``, each partition as :func:`uncompressed` at
    its original time (the segment being generated starts at 0)."""
    s, r = partition_frames(history_frames, sink, recent)
    sink_part = uncompressed(embed, latents(0, s), -float(history_frames)) if s else None
    recent_part = uncompressed(embed, latents(history_frames - r, history_frames), -float(r)) if r else None
    return sink_part, recent_part, s, r


def mid_block_ids(positions: torch.Tensor) -> torch.Tensor:
    """Block index ``[M]`` int64 of mid tokens from their RoPE positions ``[M, 3]`` (t first): one block per distinct
    time centre (one memory time step), numbered in time order."""
    return torch.unique(positions[:, 0], sorted=True, return_inverse=True)[1].long()


def assemble(sink: tuple | None, mid: tuple | None, recent: tuple | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the three partitions (each ``(tokens [..., M_i, D], positions [M_i, 3])`` or None) into
    ``(tokens [..., M, D], positions [M, 3], blocks [M] int64)`` in the order sink, mid, recent.

    Raises:
        ValueError: every partition is empty.
    """
    parts = [(p, label) for p, label in ((sink, SINK), (mid, None), (recent, RECENT)) if p is not None and p[0].shape[-2]]
    if not parts:
        raise ValueError("PackForcing context is empty: the history has no latent frames")
    blocks = [mid_block_ids(p[1]) if label is None else torch.full((p[1].shape[0],), label, dtype=torch.long)
              for p, label in parts]
    tokens = torch.cat([p[0] for p, _ in parts], dim=-2)
    positions = torch.cat([p[1].to(torch.float64) for p, _ in parts], dim=0)
    return tokens, positions, torch.cat(blocks)


__all__ = ["SINK", "RECENT", "LatentRange", "HistoryView", "Context", "uncompressed", "partition_frames",
           "local_context", "mid_block_ids", "assemble"]
