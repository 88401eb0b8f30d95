"""PackForcing: a three-partition context with top-K compressed mid blocks and RoPE re-packing (Mao et al., "Short
Video Training Suffices for Long Video Sampling and Long Context Inference", arXiv 2603.25730; no official code: the
choices below are ours; docs/design.md section 7).

The context of the segment being generated (time 0 on) is, oldest first:

- **sink**: the history's first ``sink_latent_frames`` latent frames, uncompressed (the DiT's own first projection at
  rate 1x1x1), never dropped;
- **mid**: the compressed history between sink and recent, our Fig. 2 encoder's tokens (the paper's dual-branch
  compressor is the same HR + LR design), grouped in *blocks* of one memory time step (``rt`` latent frames, e.g. 2 at
  4x4x2); per forward only the ``top_k`` blocks of highest query-key affinity with the current segment's queries are
  kept (:func:`select_blocks`), the others stay in the history's cache (non-destructive: they can come back);
- **recent**: the last ``recent_latent_frames`` latent frames, uncompressed, right before the segment.

**RoPE re-packing** (:func:`repack_positions`): after selection, the kept blocks are moved in time so that the
context has no gaps: recent keeps ``-R .. -1``, the selected mid blocks follow each other backwards from ``-R`` in
their original order (``rt`` time units each), the sink sits right before the oldest kept block. The context thus
spans at most ``S + K * rt + R`` latent frames whatever the history's length: the range training saw. Our DiTs take
RoPE positions as ids (ComfyUI's ``rope_embedder``), so re-packing recomputes the rotary embedding of the kept tokens
(``M' <= (S + R) * tokens per frame + K * tokens per block`` of them) instead of rotating cached keys.

:func:`context` builds the context before the forward (training and inference alike); :func:`block_affinity`,
:func:`select_blocks` and :func:`repack_positions` run inside the forward (the Wan adapter's ``pack_context``).
Tokens are ordered sink, mid (time order), recent; ``blocks`` ``[M]`` int64 labels them (:mod:`.context`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import EncoderConfig
from ..encoder import HistoryEncoder
from .context import (RECENT, SINK, Context, HistoryView, LatentRange, assemble, local_context, mid_block_ids,
                      partition_frames, uncompressed)

NAME = "pack_forcing"
TITLE = "PackForcing"  # the name people read (the Storyboard's summary)
ENCODED = True  # reads the Fig. 2 encoder's tokens: the history is encoded while it grows
SINGLE_ENCODER = True  # runs one encoder file, not a combination
FOLLOWS_MEMORY_TIMESTEP = False  # training: the memory tokens always get the zero-timestep modulation
NETWORK = HistoryEncoder  # what an encoder file of this memory_type holds: the Fig. 2 encoder (the compressor)
PER_BLOCK_STATE = False  # no state per DiT block
MEMORY_GROWS = False  # bounded: sink + top_k mid blocks + recent whatever the history (top_k 0 keeps every block)


@dataclass(frozen=True)
class PackForcingConfig:
    """PackForcing's settings (from an encoder file's ``EncoderConfig``: :func:`config`)."""

    sink_latent_frames: int = 2    # S: the history's first latent frames, uncompressed, never dropped (paper: 8 frames)
    recent_latent_frames: int = 2  # R: the last latent frames, uncompressed (EncoderConfig.overlap_latent_frames; paper 4 frames, we take 8)
    top_k: int = 16                # mid blocks kept per forward by query-key affinity (0: all of them)
    block_latent_frames: int = 2   # rt: latent frames per mid block, one memory time step (patch_size[0] x rate T)

    def encoder_fields(self) -> dict:
        """The ``EncoderConfig`` fields that hold these settings (block_latent_frames comes from the rate)."""
        return {"sink_latent_frames": self.sink_latent_frames, "overlap_latent_frames": self.recent_latent_frames,
                "top_k": self.top_k}


DEFAULTS = PackForcingConfig().encoder_fields()  # what a file made for another design runs PackForcing with


def config(cfgs: Sequence[EncoderConfig]) -> PackForcingConfig:
    """The settings of the (one) resolved encoder config ``cfgs[0]``."""
    cfg = cfgs[0]
    return PackForcingConfig(cfg.sink_latent_frames, cfg.overlap_latent_frames, cfg.top_k,
                             cfg.patch_size[0] * cfg.rate[2])


def encoder_config(cfg: EncoderConfig, name: str, weighted: bool) -> EncoderConfig:
    """The encoder file's config ``cfg`` as PackForcing runs it: its own settings for a pack_forcing file, else
    :data:`DEFAULTS` (the compressor is the file's Fig. 2 encoder).

    Raises:
        ValueError: the file is a VideoSSM state memory (no compressor); ``name`` names it.
    """
    if cfg.memory_type == "video_ssm":
        raise ValueError(f"memory encoder '{name}' is a VideoSSM state memory (no compressor): set memory_mode "
                         f"to video_ssm, or load a frame_preservation / pack_forcing encoder for {NAME}")
    if cfg.memory_type != NAME:
        return dataclasses.replace(cfg, memory_type=NAME, **DEFAULTS)
    return cfg


def mid_partition(tokens: torch.Tensor | None, positions: torch.Tensor | None, history_frames: int, sink: int,
                  recent: int, rt: int) -> tuple | None:
    """The compressed tokens ``[..., M, D]`` (positions ``[M, 3]``, t relative to the segment being generated) whose
    memory time step lies wholly between the sink and the recent window; None when there are none."""
    if tokens is None:
        return None
    t = positions[:, 0].double()
    lo, hi = t - (rt - 1) / 2, t + (rt - 1) / 2
    keep = (lo >= -history_frames + sink - 1e-6) & (hi < -recent + 1e-6 - 1)
    if not keep.any():
        return None
    index = torch.nonzero(keep).flatten()
    return tokens[..., index.to(tokens.device), :], positions[index].double()


def pack_inputs(embed, latents: LatentRange, history_frames: int, compressed: tuple,
                cfg: PackForcingConfig) -> tuple:
    """The whole PackForcing context of a history (module docstring).

    Args:
        embed: the DiT's first projection. latents: model-space latent frames of the history by range.
        history_frames: T_H latent frames. compressed: ``(tokens [..., M, D], positions [M, 3])`` of the Fig. 2
            encoder over the history, t relative to the segment being generated (``(None, None)`` if none yet).
    Returns:
        ``(tokens [..., M, D], positions [M, 3] float64, blocks [M] int64, pack [4] int64 = (top_k, rt, S, R))``.
    """
    rt = cfg.block_latent_frames
    sink, recent, s, r = local_context(embed, latents, history_frames, cfg.sink_latent_frames,
                                       cfg.recent_latent_frames)
    mid = mid_partition(*compressed, history_frames, s, r, rt)
    if mid is not None:
        ref = (sink or recent)[0]  # [B, N, D] uncompressed tokens: the mid tokens get their batch dim and device
        mid = (mid[0].expand(ref.shape[0], -1, -1) if mid[0].ndim == 2 else mid[0], mid[1])
        mid = (mid[0].to(ref), mid[1])
    tokens, positions, blocks = assemble(sink, mid, recent)
    return tokens, positions, blocks, torch.tensor([cfg.top_k, rt, s, r], dtype=torch.long)


def context(history: HistoryView, cfg: PackForcingConfig) -> Context:
    """Sink + the Fig. 2 tokens of the mid history (labelled by block) + recent frames; the forward selects the
    top-K mid blocks and re-packs RoPE (:func:`pack_inputs`). Raises ValueError for an empty history."""
    tokens, positions, blocks, pack = pack_inputs(history.embed, history.latents, history.frames,
                                                  history.compressed(), cfg)
    return Context(tokens, positions, blocks=blocks, pack=pack)


def block_affinity(queries: torch.Tensor, keys: torch.Tensor, blocks: torch.Tensor, heads: int) -> torch.Tensor:
    """Mean query-key affinity of every mid block: the average over batch, heads, query tokens and the block's key
    tokens of ``q . k / sqrt(d_head)`` (the mean of a bilinear form is the product of the means, so this costs one
    mean per side).

    Args:
        queries: ``[B, n, D]`` the current segment's queries. keys: ``[B, M, D]`` the context's keys (D = heads x d).
        blocks: ``[M]`` int64 labels (module docstring); only labels >= 0 are scored.
    Returns:
        ``[nb]`` float32, nb = number of mid blocks (``blocks.max() + 1``; empty when there are none).
    """
    nb = int(blocks.max().item()) + 1 if blocks.numel() else 0
    if nb <= 0:
        return queries.new_zeros(0, dtype=torch.float32)
    d = queries.shape[-1] // heads
    q = queries.float().mean(dim=(0, 1)).view(heads, d)  # [H, d]
    mid = blocks >= 0
    k = keys.float()[:, mid].mean(dim=0)  # [M_mid, D]
    k_sum = torch.zeros(nb, keys.shape[-1], dtype=torch.float32, device=keys.device).index_add_(0, blocks[mid].to(keys.device), k)
    counts = torch.bincount(blocks[mid].cpu(), minlength=nb).to(k_sum)[:, None]
    k_mean = (k_sum / counts).view(nb, heads, d)
    return (k_mean * q.to(k_mean.device)).sum(-1).mean(-1) / d ** 0.5  # [nb]


def select_blocks(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """Indices ``[K']`` int64 (ascending = time order) of the ``top_k`` highest-scoring mid blocks (all of them when
    ``top_k`` is 0 or at least their count; ties broken towards the more recent block)."""
    nb = scores.shape[0]
    if top_k <= 0 or top_k >= nb:
        return torch.arange(nb)
    order = torch.argsort(scores.cpu() + torch.arange(nb) * 1e-6, descending=True)  # tie -> later block
    return order[:top_k].sort().values


def repack_positions(positions: torch.Tensor, blocks: torch.Tensor, kept: torch.Tensor, rt: int,
                     recent_frames: int, sink_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the sink, the recent window and the mid blocks ``kept`` and close the time gaps (module docstring).

    Args:
        positions: ``[M, 3]`` RoPE positions, t relative to the segment being generated (negative = past).
        blocks: ``[M]`` labels. kept: ``[K']`` mid block indices to keep, ascending. rt: latent frames per mid block.
        recent_frames / sink_frames: R and S of this context (:func:`partition_frames`).
    Returns:
        ``(index [M'] int64 of the kept tokens in order, positions [M', 3] re-packed)``; h and w are unchanged.
    """
    keep = (blocks < 0) | torch.isin(blocks, kept.to(blocks.device))
    index = torch.nonzero(keep).flatten()
    pos = positions[index].clone()
    lab = blocks[index]
    start = -float(recent_frames)  # the time where the packed mid blocks end
    for j, b in enumerate(kept.tolist()[::-1]):  # newest kept block first, packed backwards from the recent window
        rows = lab == b
        centre = pos[rows, 0][0]
        new_centre = start - (j + 1) * rt + (rt - 1) / 2
        pos[rows, 0] += new_centre - centre
    sink = lab == SINK
    if sink.any():
        oldest = start - kept.numel() * rt  # where the sink must end
        first = pos[sink, 0].min()  # centre of the sink's first frame (rate 1: centre = frame time)
        pos[sink, 0] += oldest - sink_frames - first
    return index, pos


def attended_tokens(count: int, blocks: torch.Tensor | None, pack: torch.Tensor | None) -> int:
    """Memory tokens one forward attends to, of ``count`` carried: all of them, except in PackForcing (``blocks`` ``[M]``
    int64 labels, -1 outside the mid blocks; ``pack`` ``[4]`` with ``top_k`` first), where the sink, the recent window
    and the ``top_k`` largest mid blocks count (blocks of one rate have equal sizes, so the bound is exact)."""
    if blocks is None or pack is None:
        return count
    top_k = int(pack[0])
    mid = blocks[blocks >= 0]
    sizes = torch.bincount(mid).sort(descending=True).values if mid.numel() else mid
    kept = sizes if top_k <= 0 else sizes[:top_k]
    return int((blocks < 0).sum()) + int(kept.sum())


__all__ = ["NAME", "TITLE", "NETWORK", "PackForcingConfig", "DEFAULTS", "config", "encoder_config", "context", "SINK",
           "RECENT", "uncompressed", "partition_frames", "mid_block_ids", "assemble", "mid_partition", "pack_inputs",
           "block_affinity", "select_blocks", "repack_positions", "attended_tokens"]
