"""History buffer: the latents of everything generated so far and their cached memory tokens.

The buffer lives on the CPU and holds *one continuous latent stream* (arXiv 2512.23851 Sec. 4): the first segment
starts the causal VAE stream (``1 + ft * (T - 1)`` frames), every later one continues it (``ft * T`` frames). Each
appended segment is encoded once and its memory tokens are cached: first its LR latent (``encode_lr_pending``: the
VAE of :func:`memory.encoder.lr_clip` of its frames, continuing the LR stream of the history), after which its pixels
are dropped, then its tokens per encoder and DiT (``encode_pending``, from the latent and the LR latent only, so a
second DiT of a schedule never needs the pixels again); the memory for the next segment is the concatenation of all cached tokens, with RoPE positions
shifted so that the next segment starts at DiT time 0 (memory at negative, i.e. past, times). Several encoders
(a combination, arXiv 2512.23851 add-on) share the latents and keep their own token caches under their own keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import torch

from .frames import to_uint8


@dataclass(frozen=True)
class PartKey:
    """Which token cache of a history: the ``part``-th encoder of a combination (0: the only or first encoder) for
    the ``expert``-th DiT of a sampling schedule (0: the only or first model; 1: the Wan 2.2 A14B low-noise expert,
    whose LR branch goes through its own patch embedding)."""

    part: int = 0
    expert: int = 0


@dataclass(frozen=True)
class HistorySegment:
    """One appended unit of history.

    latent: ``[C, T, h, w]`` float32 on the CPU (VAE space), this segment's slice of the history's latent stream.
    frames: ``[F, H, W, 3]`` uint8 pixels, kept only until every encoder's LR latent covers the segment, then None.
    num_frames: ``F``, video frames the segment stands for. start_frame / start_latent: global offsets.
    stream_start: the segment starts a causal VAE stream (its first latent frame is one video frame): the first
        segment of a history, or the first of a clip appended to one (Encode History onto an existing memory).
    encoded: per :class:`PartKey`, ``(tokens [M_i, D], positions [M_i, 3], *extra [M_i, ...])`` on the CPU, float32;
        positions are RoPE positions (t relative to the start of the history, h, w); extra: e.g. the cross-attention
        add-on's hidden states ``[M_i, Ch]``. Missing until encoded. A group of segments encoded together (see
        ``unit``) stores its tokens on its last segment, empty entries on the others.
    lr_latents: per encoder index, the VAE-space LR latent ``[C, Tm, h', w']`` of the group that ends with this
        segment (LR branch input, shared by every expert); missing until encoded.
    """

    latent: torch.Tensor
    frames: torch.Tensor | None
    num_frames: int
    start_frame: int
    start_latent: int
    stream_start: bool = False
    encoded: dict = field(default_factory=dict, compare=False, hash=False)
    lr_latents: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def latent_frames(self) -> int:
        return int(self.latent.shape[1])

    @property
    def tokens(self) -> torch.Tensor | None:
        """Memory tokens ``[M_i, D]`` of the (first) encoder, or None until encoded."""
        entry = self.encoded.get(PartKey())
        return None if entry is None else entry[0]

    @property
    def positions(self) -> torch.Tensor | None:
        """RoPE positions ``[M_i, 3]`` of :attr:`tokens`, or None until encoded."""
        entry = self.encoded.get(PartKey())
        return None if entry is None else entry[1]


EncodeFn = Callable[[torch.Tensor, "torch.Tensor | None"], "tuple[torch.Tensor, ...]"]
LREncodeFn = Callable[[torch.Tensor, bool], torch.Tensor]


class _Concat:
    """Capacity-doubling concatenation buffers of one encoder key's per-segment tensors, filled up to ``length``
    rows from the first ``segments`` segments, so gathering copies only new rows (amortised O(new))."""

    def __init__(self) -> None:
        self.bufs: list[torch.Tensor] = []
        self.length = 0
        self.segments = 0

    def extend(self, parts: list[tuple[torch.Tensor, ...]], done: int) -> None:
        if not parts:
            return
        need = self.length + sum(int(p[0].shape[0]) for p in parts)
        if not self.bufs or need > self.bufs[0].shape[0]:
            cap = max(need, 2 * (self.bufs[0].shape[0] if self.bufs else 0))
            new = [torch.empty(cap, *t.shape[1:]) for t in parts[0]]
            for old, fresh in zip(self.bufs, new):
                fresh[: self.length] = old[: self.length]
            self.bufs = new
        for part in parts:
            m = int(part[0].shape[0])
            for buf, t in zip(self.bufs, part):
                buf[self.length: self.length + m] = t
            self.length += m
        self.segments = done

    def view(self) -> tuple[torch.Tensor, ...]:
        return tuple(b[: self.length] for b in self.bufs)


class HistoryBuffer:
    """Append-only list of :class:`HistorySegment`. Copies are cheap (segments are immutable and shared; the LR
    streams are copied).

    Several encoders can share one history (arXiv 2512.23851's add-on "a second encoder at 2x2x8 concatenated"):
    each caches its tokens under its own :class:`PartKey` and groups segments by its own time rate; the latents are
    shared. ``lr_streams`` holds, per encoder index, the state of its LR branch's VAE stream (an object with
    ``copy()``, e.g. ``models.vae_stream.VideoStream``), so the next span continues it.
    """

    def __init__(self, segments: list[HistorySegment] | None = None, lr_streams: dict | None = None) -> None:
        self.segments: list[HistorySegment] = list(segments or [])
        self.lr_streams: dict = {k: v.copy() for k, v in (lr_streams or {}).items()}
        self._concat: dict[PartKey, _Concat] = {}  # per key: concatenation cache of the encoded segments
        # VideoSSM (memory/designs/video_ssm.py, models/memory_modes.py): per expert, (latent frames absorbed, state [1, L, H, dv, dk]); immutable
        # tensors, shared by copies (absorbing more makes a new tensor)
        self.states: dict = {}
        # colour statistics of every frame appended so far (models/colour_match.py: per Lab channel pixel count, sum,
        # sum of squares, [3, 3] float64), the reference of the colour-drift correction; None until recorded
        self.colour_stats: torch.Tensor | None = None

    def copy(self) -> "HistoryBuffer":
        out = HistoryBuffer(self.segments, self.lr_streams)
        out.states = dict(self.states)
        out.colour_stats = self.colour_stats  # replaced, never changed in place
        return out

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.segments)

    @property
    def latent_frames(self) -> int:
        return sum(s.latent_frames for s in self.segments)

    @property
    def keys(self) -> list[PartKey]:
        """Keys with tokens in this history, in first-seen order."""
        return list(dict.fromkeys(k for s in self.segments for k in s.encoded))

    @property
    def num_tokens(self) -> int:
        """Memory tokens cached for all keys together."""
        return sum(int(e[0].shape[0]) for s in self.segments for e in s.encoded.values())

    @property
    def encoded_frames(self) -> int:
        """Video frames whose segments are encoded into memory tokens (by every key in the history)."""
        keys = self.keys
        return sum(s.num_frames for s in self.segments if keys and all(k in s.encoded for k in keys))

    def append(self, latent: torch.Tensor, frames: torch.Tensor, stream_start: bool | None = None) -> HistorySegment:
        """Append the next segment of the latent stream.

        Args:
            latent: ``[C, T, h, w]`` or ``[1, C, T, h, w]`` latent of the segment.
            frames: ``[F, H, W, 3]`` float 0..1 (or uint8) decoded frames of the same segment.
            stream_start: the segment starts a VAE stream (default: only the history's first segment).
        Raises:
            ValueError: shapes disagree with earlier segments.
        """
        if latent.ndim == 5:
            if latent.shape[0] != 1:
                raise ValueError(f"history holds one video; got a latent batch of {latent.shape[0]}")
            latent = latent[0]
        if latent.ndim != 4 or frames.ndim != 4:
            raise ValueError(f"expected latent [C,T,h,w] and frames [F,H,W,3], got {tuple(latent.shape)}, {tuple(frames.shape)}")
        if self.segments:
            last = self.segments[-1]
            if latent.shape[0] != last.latent.shape[0] or latent.shape[2:] != last.latent.shape[2:]:
                raise ValueError(
                    f"segment latent {tuple(latent.shape)} does not match the history's {tuple(last.latent.shape)} "
                    "(channels and spatial size must stay the same across a storyboard)")
        seg = HistorySegment(
            latent=latent.detach().to("cpu", torch.float32).contiguous(),
            frames=to_uint8(frames).detach().cpu().contiguous(),
            num_frames=int(frames.shape[0]),
            start_frame=self.num_frames,
            start_latent=self.latent_frames,
            stream_start=not self.segments if stream_start is None else bool(stream_start),
        )
        self.segments.append(seg)
        return seg

    def groups(self, unit: int) -> Iterator[list[int]]:
        """Indices of consecutive segments whose latent frames add up to a multiple of ``unit`` (an encoder's
        temporal rate, e.g. two 4-frame segments at 2x2x8), from the start; a trailing group that does not fill a
        unit is not yielded (it waits for the next segment)."""
        group: list[int] = []
        for i, seg in enumerate(self.segments):
            group.append(i)
            if sum(self.segments[j].latent_frames for j in group) % unit == 0:
                yield group
                group = []

    def encode_lr_pending(self, part: int, unit: int, lr_encode: LREncodeFn) -> int:
        """Compute the LR latents of encoder ``part`` for the groups (:meth:`groups`) that have none yet with
        ``lr_encode(frames [F, H, W, 3] float 0..1, stream_start) -> [C, Tm, h', w']`` (continuing the encoder's LR
        stream, in order). Returns the number of groups encoded.

        Raises:
            ValueError: a pending group's pixels were already dropped.
        """
        n = 0
        for group in self.groups(unit):
            last = self.segments[group[-1]]
            if part in last.lr_latents:
                continue
            if any(self.segments[j].frames is None for j in group):
                raise ValueError(f"history segments {group} have no pixels left for encoder {part}'s LR branch: the "
                                 "history was encoded with another encoder; encode it again from its frames")
            frames = torch.cat([self.segments[j].frames for j in group]).float() / 255.0
            lr = lr_encode(frames, self.segments[group[0]].stream_start).detach().to("cpu", torch.float32)
            self.segments[group[-1]] = replace(last, lr_latents={**last.lr_latents, part: lr})
            n += 1
        return n

    def encode_pending(self, encode: EncodeFn, unit: int = 1, key: PartKey = PartKey()) -> int:
        """Encode the groups (:meth:`groups` of ``unit``) that have no tokens under ``key`` yet with
        ``encode(latent [C, T, h, w], lr_latent [C, Tm, h', w'] or None) -> (tokens [M, D], positions [M, 3],
        *extra [M, ...])`` (positions relative to the group's first latent frame; ``lr_latent`` of encoder
        ``key.part``, None when it has none). The group's tokens are stored on its last segment. Already-encoded
        segments are never re-encoded (arXiv 2512.23851, "almost fully convolutional"). Returns the number of
        segments encoded."""
        n = 0
        for group in self.groups(unit):
            if key in self.segments[group[-1]].encoded:
                continue
            first, last = self.segments[group[0]], self.segments[group[-1]]
            latent = torch.cat([self.segments[j].latent for j in group], dim=1)
            tokens, positions, *extra = encode(latent, last.lr_latents.get(key.part))
            positions = positions.to(torch.float32).clone()
            positions[:, 0] += first.start_latent
            out = tuple(t.detach().to("cpu", torch.float32) for t in (tokens, positions, *extra))
            for j in group:
                seg_j = self.segments[j]
                entry = out if j == group[-1] else tuple(t[:0] for t in out)
                self.segments[j] = replace(seg_j, encoded={**seg_j.encoded, key: entry})
            n += len(group)
        return n

    def drop_frames(self, parts: list[int]) -> None:
        """Drop the pixels of segments whose group has the LR latent of every encoder index in ``parts`` (they are no
        longer needed: tokens come from latents and LR latents)."""
        covered = set(range(len(self.segments)))
        for p in parts:
            mine: set[int] = set()
            pending: list[int] = []
            for i, seg in enumerate(self.segments):
                pending.append(i)
                if p in seg.lr_latents:
                    mine.update(pending)
                    pending = []
            covered &= mine
        for i in sorted(covered):
            if self.segments[i].frames is not None:
                self.segments[i] = replace(self.segments[i], frames=None)

    def gather(self, key: PartKey = PartKey()) -> tuple[torch.Tensor, ...] | None:
        """Concatenation over the encoded segments of ``key``'s ``(tokens [M, D], positions [M, 3], *extra)``,
        positions relative to the start of the history; views of a cache that later appends never overwrite.
        None when nothing is encoded under ``key`` yet.

        Raises:
            ValueError: segments encoded out of order.
        """
        done = 0
        while done < len(self.segments) and key in self.segments[done].encoded:
            done += 1
        if any(key in s.encoded for s in self.segments[done:]):
            raise ValueError("history segments must be encoded in order (call encode_pending first)")
        if done == 0:
            return None
        cache = self._concat.setdefault(key, _Concat())
        cache.extend([s.encoded[key] for s in self.segments[cache.segments:done]], done)
        return cache.view()

    def memory(self, now_latent: int | None = None,
               key: PartKey = PartKey()) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """All cached memory tokens ``[M, D]`` of ``key`` (float32, CPU) and their positions ``[M, 3]`` with time
        relative to ``now_latent`` (default: the end of the history, i.e. the next segment starts at time 0).
        Returns ``(None, None)`` when nothing is encoded yet."""
        parts = self.gather(key)
        if parts is None:
            return None, None
        now = self.latent_frames if now_latent is None else now_latent
        positions = parts[1].clone()
        positions[:, 0] -= now
        return parts[0], positions

    def latents(self, start: int, end: int) -> torch.Tensor | None:
        """Latent frames ``start .. end - 1`` of the history's stream ``[C, end - start, h, w]`` (clamped to the
        history), taken across segment boundaries; None when the range is empty."""
        parts, offset = [], 0
        for seg in self.segments:
            lo, hi = max(start - offset, 0), min(end - offset, seg.latent_frames)
            if lo < hi:
                parts.append(seg.latent[:, lo:hi])
            offset += seg.latent_frames
        return torch.cat(parts, dim=1) if parts else None

    def last_latents(self, count: int) -> torch.Tensor | None:
        """The last ``count`` latent frames of the history ``[C, count', h, w]`` (fewer if the history is shorter),
        taken across segment boundaries; None for an empty history."""
        parts, need = [], count
        for seg in reversed(self.segments):
            if need <= 0:
                break
            parts.append(seg.latent[:, -need:])
            need -= parts[-1].shape[1]
        return torch.cat(parts[::-1], dim=1) if parts else None
