"""Storyboards: timestamped shots and the segment arithmetic of the generation loop.

Text format (one shot per line; blank lines and lines starting with ``#`` are ignored)::

    2.0 | a cyclist rides down a sunny street
    1.5 | the cyclist stops at a red light

``seconds | prompt``: the shot lasts ``seconds`` and its prompt conditions every segment whose middle falls
inside it (the prompt nearest the current time, arXiv 2512.23851 Sec. 4).

Segment arithmetic for a causal video VAE with temporal stride ``ft`` (4 for Wan): the storyboard is *one*
continuous latent stream (arXiv 2512.23851 Sec. 4). The stream's first segment of ``T`` latent frames stands for
``ft * (T - 1) + 1`` video frames (the causal first latent is one frame); every later segment continues the stream
and stands for ``ft * T`` frames (Wan, T = 4: 13 frames, then 16 per segment, i.e. exactly 1 s at 16 fps).

Limit: a storyboard lasts at most :data:`MAX_STORYBOARD_SECONDS` (3600 s = one hour, 3600 segments of 1 s on Wan);
longer ones are refused before anything runs. The segment plan is lazy (:class:`SegmentSchedule` computes segment
``k`` on demand), so even a refused or huge storyboard allocates nothing per segment up front.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MAX_STORYBOARD_SECONDS = 3600.0  # one hour of video; see the module docstring


@dataclass(frozen=True)
class Shot:
    index: int
    prompt: str
    start_s: float      # seconds from the start of the generated part
    duration_s: float   # seconds


@dataclass(frozen=True)
class SegmentPlan:
    index: int
    shot: int           # index of the shot whose prompt conditions this segment
    start_frame: int    # first video frame, counted from the start of the generated part
    frames: int         # video frames this segment decodes to
    latent_frames: int  # latent frames T sampled for this segment


def parse_storyboard(text: str) -> list[Shot]:
    """Parse ``seconds | prompt`` lines into shots.

    Raises:
        ValueError: naming the line number, when a line has no ``|``, a non-numeric, non-finite or non-positive
            duration, or an empty prompt, or when there is no shot at all. (The total length is checked where the
            frame rate is known: :class:`SegmentSchedule`.)
    """
    shots: list[Shot] = []
    t = 0.0
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "|" not in line:
            raise ValueError(f"storyboard line {n}: {line!r} has no '|'; write 'seconds | prompt', e.g. '2.0 | a cat walks'")
        secs, prompt = (p.strip() for p in line.split("|", 1))
        try:
            dur = float(secs.rstrip("s"))
        except ValueError:
            raise ValueError(f"storyboard line {n}: duration {secs!r} is not a number of seconds") from None
        if not math.isfinite(dur) or not dur > 0:
            raise ValueError(f"storyboard line {n}: duration must be > 0 and finite (seconds), got {secs!r}; "
                             f"a storyboard lasts at most {MAX_STORYBOARD_SECONDS:g} s in all")
        if not prompt:
            raise ValueError(f"storyboard line {n}: the prompt is empty")
        shots.append(Shot(len(shots), prompt, t, dur))
        t += dur
    if not shots:
        raise ValueError("the storyboard has no shots; write one 'seconds | prompt' line per shot")
    return shots


def segment_frames(latent_frames: int, vae_time_stride: int = 4, stream_start: bool = True) -> int:
    """Video frames of a segment of ``latent_frames`` latent frames: ``ft * (T - 1) + 1`` when it starts the
    stream, ``ft * T`` when it continues it. Raises ValueError for T < 1."""
    if latent_frames < 1:
        raise ValueError(f"a segment needs at least 1 latent frame, got {latent_frames}")
    return vae_time_stride * latent_frames - (vae_time_stride - 1 if stream_start else 0)


def storyboard_seconds(shots: list[Shot]) -> float:
    """Total length of the storyboard in seconds (sum of the shots' durations)."""
    return math.fsum(s.duration_s for s in shots)


class SegmentSchedule(Sequence):
    """The storyboard split into segments of ``latent_frames`` latent frames of one continuous stream, computed on
    demand: ``len()``, ``schedule[k]`` (a :class:`SegmentPlan`), slices (another lazy schedule) and iteration cost
    O(log shots) per segment and nothing up front.

    ``continues``: the storyboard continues a history (its first segment continues that stream, else it starts a
    new one). The number of segments is the one whose frames come closest to ``total_seconds * fps`` (at least 1);
    each segment's shot is the one containing the segment's middle time (the last shot past the end).

    Raises:
        ValueError: ``fps`` is not a finite number > 0, ``latent_frames`` < 1, or the storyboard is longer than
            :data:`MAX_STORYBOARD_SECONDS` (the message gives its segments and minutes).
    """

    def __init__(self, shots: list[Shot], fps: float, latent_frames: int, vae_time_stride: int = 4,
                 continues: bool = False, indices: range | None = None) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {fps}")
        self.shots, self.fps, self.latent_frames, self.ft = shots, fps, latent_frames, vae_time_stride
        self.continues = continues
        self.per = segment_frames(latent_frames, vae_time_stride, stream_start=False)
        self.lead = 0 if continues else vae_time_stride - 1  # the stream's first segment is this many frames short
        total = storyboard_seconds(shots)
        count = max(1, round((total * fps + self.lead) / self.per)) if total <= MAX_STORYBOARD_SECONDS else 0
        if not count:
            raise ValueError(f"the storyboard lasts {total:g} s ({total / 60:.4g} min), over the limit of "
                             f"{MAX_STORYBOARD_SECONDS:g} s: shorten it, or chain storyboards through their memory")
        self.count = count  # segments of the whole storyboard (a slice may hold fewer)
        self.indices = range(count) if indices is None else indices
        self._starts = [s.start_s for s in shots]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return SegmentSchedule(self.shots, self.fps, self.latent_frames, self.ft, self.continues, self.indices[k])
        return self._plan(self.indices[k])

    def _plan(self, k: int) -> SegmentPlan:
        frames = self.per - (self.lead if k == 0 else 0)
        start = 0 if k == 0 else self.per * k - self.lead
        mid = (start + frames / 2) / self.fps
        i = bisect.bisect_right(self._starts, mid) - 1
        shot = self.shots[i] if i >= 0 and mid < self.shots[i].start_s + self.shots[i].duration_s else self.shots[-1]
        return SegmentPlan(k, shot.index, start, frames, self.latent_frames)

    @property
    def total_frames(self) -> int:
        """Video frames of every segment of the whole storyboard (not only this slice)."""
        return self.per * self.count - self.lead


def plan_segments(shots: list[Shot], fps: float, latent_frames: int, vae_time_stride: int = 4,
                  continues: bool = False) -> list[SegmentPlan]:
    """Every :class:`SegmentPlan` of :class:`SegmentSchedule` as a list (same arguments and errors); the storyboard
    loop iterates the lazy schedule instead."""
    return list(SegmentSchedule(shots, fps, latent_frames, vae_time_stride, continues))


def split_clip(num_frames: int, latent_frames: int, vae_time_stride: int = 4) -> tuple[int, int]:
    """How a starting clip of ``num_frames`` frames becomes history segments of one stream: returns
    ``(skip, count)``: the first ``skip`` frames are dropped so that the most recent ``count`` whole segments are
    kept (the first starts the stream: ``ft * (T - 1) + 1`` frames, the others ``ft * T``).

    Raises:
        ValueError: the clip is shorter than one segment.
    """
    first = segment_frames(latent_frames, vae_time_stride, stream_start=True)
    per = segment_frames(latent_frames, vae_time_stride, stream_start=False)
    if num_frames < first:
        raise ValueError(
            f"the starting clip has {num_frames} frames but one history segment needs {first}; "
            "give a longer clip or fewer latent frames per segment")
    count = 1 + (num_frames - first) // per
    return num_frames - (first + per * (count - 1)), count


def seam_ratios(frames: torch.Tensor, starts: list[int]) -> dict:
    """Visible seams at segment joins: for each boundary ``s`` in ``starts`` (the first frame of a segment, > 0), the
    mean absolute pixel difference between frames ``s - 1`` and ``s``, divided by the mean absolute difference between
    consecutive frames *inside* segments (1.0 = a join moves no more than the video does anyway).

    Args:
        frames: ``[F, H, W, 3]`` float 0..1 or uint8. starts: first frame of every segment after the first.
    Returns:
        ``{"per_boundary": [ratio, ...], "mean": mean ratio or None, "inside_mean_abs": denominator (0..1 units)}``.
    """
    x = frames.float() / (255.0 if frames.dtype == torch.uint8 else 1.0)
    diffs = (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3))  # [F - 1]: diffs[i] = |frame i+1 - frame i|
    joins = [s for s in starts if 0 < s < x.shape[0]]
    inside = [float(d) for i, d in enumerate(diffs) if i + 1 not in joins]
    base = sum(inside) / len(inside) if inside else 0.0
    ratios = [round(float(diffs[s - 1]) / base, 4) if base > 0 else None for s in joins]
    valid = [r for r in ratios if r is not None]
    return {"per_boundary": ratios, "mean": round(sum(valid) / len(valid), 4) if valid else None,
            "inside_mean_abs": round(base, 6)}
