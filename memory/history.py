"""History buffer: the latents of everything generated so far and their cached memory tokens.

The buffer lives on the CPU. Each appended segment is encoded once (``encode_pending``) and its memory tokens
are cached; the memory for the next segment is the concatenation of all cached tokens, with RoPE positions
shifted so that the next segment starts at DiT time 0 (memory at negative, i.e. past, times). Several encoders
(a combination, arXiv 2512.23851 add-on) share the latents and keep their own token caches under their own keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch


@dataclass(frozen=True)
class HistorySegment:
    """One encoded unit of history.

    latent: ``[C, T, h, w]`` float32 on the CPU (VAE space, as ``VAE.encode`` / the sampler return it).
    frames: ``[F, H, W, 3]`` uint8 pixels, kept only until the segment is encoded (LR branch), then None.
    num_frames: ``F``, video frames the segment stands for. start_frame / start_latent: global offsets.
    encoded: one entry per encoder key (``""``: the encoder; ``"1"``, ... the further encoders of a combination):
        ``(tokens [M_i, D], positions [M_i, 3], *extra [M_i, ...])`` on the CPU, float32; positions are RoPE
        positions (t relative to the start of the history, h, w); extra: e.g. the cross-attention add-on's hidden
        states ``[M_i, Ch]``. Missing until encoded.
    """

    latent: torch.Tensor
    frames: torch.Tensor | None
    num_frames: int
    start_frame: int
    start_latent: int
    encoded: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def latent_frames(self) -> int:
        return int(self.latent.shape[1])

    @property
    def tokens(self) -> torch.Tensor | None:
        """Memory tokens ``[M_i, D]`` of the (first) encoder, or None until encoded."""
        return self.encoded[""][0] if "" in self.encoded else None

    @property
    def positions(self) -> torch.Tensor | None:
        """RoPE positions ``[M_i, 3]`` of :attr:`tokens`, or None until encoded."""
        return self.encoded[""][1] if "" in self.encoded else None


EncodeFn = Callable[[HistorySegment], "tuple[torch.Tensor, ...]"]


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
    """Append-only list of :class:`HistorySegment`. Copies are cheap (segments are immutable and shared).

    Several encoders can share one history (arXiv 2512.23851's add-on "a second encoder at 2x2x8 concatenated"):
    each caches its tokens under its own ``key`` and groups segments by its own time rate; the latents are shared.
    """

    def __init__(self, segments: list[HistorySegment] | None = None) -> None:
        self.segments: list[HistorySegment] = list(segments or [])
        self._concat: dict[str, _Concat] = {}  # per encoder key: concatenation cache of the encoded segments

    def copy(self) -> "HistoryBuffer":
        return HistoryBuffer(self.segments)

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.segments)

    @property
    def latent_frames(self) -> int:
        return sum(s.latent_frames for s in self.segments)

    @property
    def keys(self) -> list[str]:
        """Encoder keys with tokens in this history, in first-seen order."""
        return list(dict.fromkeys(k for s in self.segments for k in s.encoded))

    @property
    def num_tokens(self) -> int:
        """Memory tokens cached for all encoder keys together."""
        return sum(int(e[0].shape[0]) for s in self.segments for e in s.encoded.values())

    @property
    def encoded_frames(self) -> int:
        """Video frames whose segments are encoded into memory tokens (by every encoder key in the history)."""
        keys = self.keys
        return sum(s.num_frames for s in self.segments if keys and all(k in s.encoded for k in keys))

    def append(self, latent: torch.Tensor, frames: torch.Tensor) -> HistorySegment:
        """Append one segment.

        Args:
            latent: ``[C, T, h, w]`` or ``[1, C, T, h, w]`` latent of the segment.
            frames: ``[F, H, W, 3]`` float 0..1 (or uint8) decoded frames of the same segment.
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
        if frames.dtype != torch.uint8:
            frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
        seg = HistorySegment(
            latent=latent.detach().to("cpu", torch.float32).contiguous(),
            frames=frames.detach().cpu().contiguous(),
            num_frames=int(frames.shape[0]),
            start_frame=self.num_frames,
            start_latent=self.latent_frames,
        )
        self.segments.append(seg)
        return seg

    def encode_pending(self, encode: EncodeFn, unit: int = 1, key: str = "", keep_frames: bool = False) -> int:
        """Encode the segments that have no tokens under ``key`` yet with ``encode(segment) -> (tokens [M, D],
        positions [M, 3], *extra [M, ...])`` (positions relative to the segment's first latent frame; extra rows
        e.g. hidden states of the cross-attention add-on). Returns the number of segments encoded.

        ``unit`` is the encoder's temporal rate ``rt``: consecutive pending segments are encoded together once their
        latent frames add up to a multiple of ``unit`` (e.g. two 4-frame segments at 2x2x8), so no latent frame
        falls between memory tokens; a trailing group that does not fill a unit waits for the next segment.
        The group's tokens are stored on its last segment (the others get zero tokens). Already-encoded segments
        are never re-encoded (arXiv 2512.23851, "almost fully convolutional"). Pixels are dropped once encoded
        unless ``keep_frames`` (other encoders still need them: :meth:`drop_frames`).

        Raises:
            ValueError: a pending segment's pixels were already dropped (the history was encoded by another encoder
                set; re-encode it from its frames with this one).
        """
        n = 0
        group: list[int] = []
        for i, seg in enumerate(self.segments):
            if key in seg.encoded:
                continue
            if seg.frames is None:
                raise ValueError(
                    f"history segment {i} has no pixels left to encode for encoder key {key!r}: the history was "
                    "encoded with another encoder; encode it again from its frames with this encoder")
            group.append(i)
            if sum(self.segments[j].latent_frames for j in group) % unit:
                continue
            first = self.segments[group[0]]
            unit_seg = first if len(group) == 1 else HistorySegment(
                latent=torch.cat([self.segments[j].latent for j in group], dim=1),
                frames=torch.cat([self.segments[j].frames for j in group], dim=0),
                num_frames=sum(self.segments[j].num_frames for j in group),
                start_frame=first.start_frame, start_latent=first.start_latent)
            tokens, positions, *extra = encode(unit_seg)
            positions = positions.to(torch.float32).clone()
            positions[:, 0] += first.start_latent
            out = tuple(t.detach().to("cpu", torch.float32) for t in (tokens, positions, *extra))
            for j in group:
                seg_j = self.segments[j]
                entry = out if j == group[-1] else tuple(t[:0] for t in out)
                self.segments[j] = replace(seg_j, encoded={**seg_j.encoded, key: entry},
                                           frames=seg_j.frames if keep_frames else None)
            n += len(group)
            group = []
        return n

    def drop_frames(self, keys: list[str]) -> None:
        """Drop the pixels of segments encoded under every one of ``keys`` (they are no longer needed)."""
        for i, seg in enumerate(self.segments):
            if seg.frames is not None and all(k in seg.encoded for k in keys):
                self.segments[i] = replace(seg, frames=None)

    def gather(self, key: str = "") -> tuple[torch.Tensor, ...] | None:
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

    def memory(self, now_latent: int | None = None, key: str = "") -> tuple[torch.Tensor | None, torch.Tensor | None]:
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
