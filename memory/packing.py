"""PackForcing's three-partition context, top-K selection and RoPE re-packing (Mao et al., "Short Video Training
Suffices for Long Video Sampling and Long Context Inference"; no official code: the choices below are ours).

The context of the segment being generated (time 0 on) is, oldest first:

- **sink**: the history's first ``sink_latent_frames`` latent frames, uncompressed (the DiT's own first projection at
  rate 1x1x1), never dropped;
- **mid**: the compressed history between sink and recent, our Fig. 2 encoder's tokens (the paper's dual-branch
  compressor is the same HR + LR design), grouped in *blocks* of one memory time step (``rt`` latent frames, e.g. 2 at
  4x4x2); per forward only the ``top_k`` blocks of highest query-key affinity with the current segment's queries are
  kept (:func:`select_blocks`), the others stay in the history's cache (non-destructive: they can come back);
- **recent**: the last ``overlap_latent_frames`` latent frames, uncompressed, right before the segment.

**RoPE re-packing** (:func:`repack_positions`): after selection, the kept blocks are moved in time so that the
context has no gaps: recent keeps ``-R .. -1``, the selected mid blocks follow each other backwards from ``-R`` in
their original order (``rt`` time units each), the sink sits right before the oldest kept block. The context thus
spans at most ``S + K * rt + R`` latent frames whatever the history's length: the range training saw. Our DiTs take
RoPE positions as ids (ComfyUI's ``rope_embedder``), so re-packing recomputes the rotary embedding of the kept tokens
(``M' <= (S + R) * tokens per frame + K * tokens per block`` of them) instead of rotating cached keys.

Tokens are ordered sink, mid (time order), recent; ``blocks`` ``[M]`` int64 labels them: :data:`SINK`, :data:`RECENT`
or the mid block index ``0, 1, ...`` in time order.
"""
from __future__ import annotations

from typing import Callable

import torch

from .encoder import overlap_window

SINK, RECENT = -1, -2
LatentRange = Callable[[int, int], "torch.Tensor | None"]  # (start, end) -> model-space latent [B, C, n, h, w] or None


def partition_frames(history_frames: int, sink: int, recent: int) -> tuple[int, int]:
    """``(S, R)``: latent frames of the sink and of the recent window for a history of ``history_frames`` latent
    frames, clamped so that they never overlap (the sink first, the recent window gets what is left)."""
    s = min(sink, history_frames)
    return s, min(recent, history_frames - s)


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


def uncompressed(embed, latent: torch.Tensor | None, t_start: float, cfg) -> tuple | None:
    """Latent frames as uncompressed context: the DiT's first projection ``embed`` at rate 1x1x1
    (:func:`memory.encoder.overlap_window`), ``(tokens [B, N*Ht*Wt, D], positions [N*Ht*Wt, 3] float64)`` with the
    first frame at time ``t_start``; None for an empty ``latent``."""
    if latent is None or latent.shape[2] == 0:
        return None
    tokens, pos = overlap_window(embed, latent, cfg)  # times -N .. -1
    return tokens, pos.double() + (t_start + latent.shape[2])


def local_context(embed, latents: LatentRange, history_frames: int, cfg) -> tuple[tuple | None, tuple | None, int, int]:
    """Sink and recent partitions of a history of ``history_frames`` latent frames (``cfg.sink_latent_frames`` and
    ``cfg.overlap_latent_frames``, :func:`partition_frames`): ``(sink, recent, S, R)``, each partition as
    :func:`uncompressed` at its original time (the segment being generated starts at 0)."""
    s, r = partition_frames(history_frames, cfg.sink_latent_frames, cfg.overlap_latent_frames)
    sink = uncompressed(embed, latents(0, s), -float(history_frames), cfg) if s else None
    recent = uncompressed(embed, latents(history_frames - r, history_frames), -float(r), cfg) if r else None
    return sink, recent, s, r


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


def pack_inputs(embed, latents: LatentRange, history_frames: int, compressed: tuple, cfg) -> tuple:
    """The whole PackForcing context of a history (module docstring), for inference and training alike.

    Args:
        embed: the DiT's first projection. latents: model-space latent frames of the history by range.
        history_frames: T_H latent frames. compressed: ``(tokens [..., M, D], positions [M, 3])`` of the Fig. 2
            encoder over the history, t relative to the segment being generated (``(None, None)`` if none yet).
        cfg: the resolved config (``sink_latent_frames``, ``overlap_latent_frames``, ``top_k``, ``rate``).
    Returns:
        ``(tokens [..., M, D], positions [M, 3] float64, blocks [M] int64, pack [4] int64 = (top_k, rt, S, R))``.
    """
    rt = cfg.patch_size[0] * cfg.rate[2]
    sink, recent, s, r = local_context(embed, latents, history_frames, cfg)
    mid = mid_partition(*compressed, history_frames, s, r, rt)
    if mid is not None:
        ref = (sink or recent)[0]  # [B, N, D] uncompressed tokens: the mid tokens get their batch dim and device
        mid = (mid[0].expand(ref.shape[0], -1, -1) if mid[0].ndim == 2 else mid[0], mid[1])
        mid = (mid[0].to(ref), mid[1])
    tokens, positions, blocks = assemble(sink, mid, recent)
    return tokens, positions, blocks, torch.tensor([cfg.top_k, rt, s, r], dtype=torch.long)


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


__all__ = ["SINK", "RECENT", "uncompressed", "local_context", "mid_partition", "pack_inputs", "partition_frames", "mid_block_ids", "assemble", "block_affinity", "select_blocks",
           "repack_positions"]
