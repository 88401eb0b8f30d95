"""History buffer: the latents of everything generated so far and their cached memory tokens.

The buffer lives on the CPU. Each appended segment is encoded once (``encode_pending``) and its memory tokens
are cached; the memory for the next segment is the concatenation of all cached tokens, with RoPE positions
shifted so that the next segment starts at DiT time 0 (memory at negative, i.e. past, times).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch


@dataclass(frozen=True)
class HistorySegment:
    """One encoded unit of history.

    latent: ``[C, T, h, w]`` float32 on the CPU (VAE space, as ``VAE.encode`` / the sampler return it).
    frames: ``[F, H, W, 3]`` uint8 pixels, kept only until the segment is encoded (LR branch), then None.
    num_frames: ``F``, video frames the segment stands for. start_frame / start_latent: global offsets.
    tokens: ``[M_i, D]`` memory tokens (CPU, float32) or None until encoded.
    positions: ``[M_i, 3]`` float32 RoPE positions (t relative to the start of the history, h, w) or None.
    """

    latent: torch.Tensor
    frames: torch.Tensor | None
    num_frames: int
    start_frame: int
    start_latent: int
    tokens: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @property
    def latent_frames(self) -> int:
        return int(self.latent.shape[1])


EncodeFn = Callable[[HistorySegment], "tuple[torch.Tensor, torch.Tensor]"]


class HistoryBuffer:
    """Append-only list of :class:`HistorySegment`. Copies are cheap (segments are immutable and shared)."""

    def __init__(self, segments: list[HistorySegment] | None = None) -> None:
        self.segments: list[HistorySegment] = list(segments or [])
        # concatenation cache of encoded tokens/positions: capacity-doubling buffers filled up to _cached_len
        # tokens from the first _cached_segments segments, so memory() copies only new tokens (amortised O(new))
        self._tokens_buf: torch.Tensor | None = None
        self._pos_buf: torch.Tensor | None = None
        self._cached_len = 0
        self._cached_segments = 0

    def copy(self) -> "HistoryBuffer":
        return HistoryBuffer(self.segments)

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.segments)

    @property
    def latent_frames(self) -> int:
        return sum(s.latent_frames for s in self.segments)

    @property
    def num_tokens(self) -> int:
        return sum(int(s.tokens.shape[0]) for s in self.segments if s.tokens is not None)

    @property
    def encoded_frames(self) -> int:
        """Video frames whose segments are encoded into memory tokens."""
        return sum(s.num_frames for s in self.segments if s.tokens is not None)

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

    def encode_pending(self, encode: EncodeFn, unit: int = 1) -> int:
        """Encode the segments that have no tokens yet with ``encode(segment) -> (tokens [M,D], positions [M,3])``
        (positions relative to the segment's first latent frame). Returns the number of segments encoded.

        ``unit`` is the encoder's temporal rate ``rt``: consecutive pending segments are encoded together once their
        latent frames add up to a multiple of ``unit`` (e.g. two 4-frame segments at 2x2x8), so no latent frame
        falls between memory tokens; a trailing group that does not fill a unit waits for the next segment.
        The group's tokens are stored on its last segment (the others get zero tokens). Already-encoded segments
        are never re-encoded (arXiv 2512.23851, "almost fully convolutional")."""
        n = 0
        group: list[int] = []
        for i, seg in enumerate(self.segments):
            if seg.tokens is not None:
                continue
            group.append(i)
            if sum(self.segments[j].latent_frames for j in group) % unit:
                continue
            first = self.segments[group[0]]
            unit_seg = first if len(group) == 1 else HistorySegment(
                latent=torch.cat([self.segments[j].latent for j in group], dim=1),
                frames=torch.cat([self.segments[j].frames for j in group], dim=0),
                num_frames=sum(self.segments[j].num_frames for j in group),
                start_frame=first.start_frame, start_latent=first.start_latent)
            tokens, positions = encode(unit_seg)
            tokens = tokens.detach().to("cpu", torch.float32)
            positions = positions.to(torch.float32).clone()
            positions[:, 0] += first.start_latent
            for j in group[:-1]:
                self.segments[j] = replace(self.segments[j], tokens=tokens[:0], positions=positions[:0], frames=None)
            self.segments[group[-1]] = replace(self.segments[group[-1]], tokens=tokens, positions=positions, frames=None)
            n += len(group)
            group = []
        return n

    def memory(self, now_latent: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """All cached memory tokens ``[M, D]`` (float32, CPU) and their positions ``[M, 3]`` with time relative
        to ``now_latent`` (default: the end of the history, i.e. the next segment starts at time 0).
        Returns ``(None, None)`` when nothing is encoded yet."""
        done = 0
        while done < len(self.segments) and self.segments[done].tokens is not None:
            done += 1
        if any(s.tokens is not None for s in self.segments[done:]):
            raise ValueError("history segments must be encoded in order (call encode_pending first)")
        if done == 0:
            return None, None
        self._extend_cache(done)
        now = self.latent_frames if now_latent is None else now_latent
        positions = self._pos_buf[: self._cached_len].clone()
        positions[:, 0] -= now
        # a view: later appends only write past _cached_len or into a new, larger buffer
        return self._tokens_buf[: self._cached_len], positions

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

    def _extend_cache(self, done: int) -> None:
        new = self.segments[self._cached_segments:done]
        if not new:
            return
        need = self._cached_len + sum(int(s.tokens.shape[0]) for s in new)
        if self._tokens_buf is None or need > self._tokens_buf.shape[0]:
            cap = max(need, 2 * (0 if self._tokens_buf is None else self._tokens_buf.shape[0]))
            tokens = torch.empty(cap, new[0].tokens.shape[1])
            pos = torch.empty(cap, 3)
            if self._tokens_buf is not None:
                tokens[: self._cached_len] = self._tokens_buf[: self._cached_len]
                pos[: self._cached_len] = self._pos_buf[: self._cached_len]
            self._tokens_buf, self._pos_buf = tokens, pos
        for seg in new:
            m = int(seg.tokens.shape[0])
            self._tokens_buf[self._cached_len: self._cached_len + m] = seg.tokens
            self._pos_buf[self._cached_len: self._cached_len + m] = seg.positions
            self._cached_len += m
        self._cached_segments = done
