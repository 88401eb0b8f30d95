"""Storyboards: timestamped shots and the segment arithmetic of the generation loop.

Text format (one shot per line; blank lines and lines starting with ``#`` are ignored)::

    2.0 | a cyclist rides down a sunny street
    1.5 | the cyclist stops at a red light

``seconds | prompt``: the shot lasts ``seconds`` and its prompt conditions every segment whose middle falls
inside it (the prompt nearest the current time, arXiv 2512.23851 Sec. 4).

Segment arithmetic for a causal video VAE with temporal stride ``ft`` (4 for Wan): a segment of ``T`` latent
frames is generated and decoded on its own and stands for ``ft * (T - 1) + 1`` video frames.
"""
from __future__ import annotations

from dataclasses import dataclass


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
        ValueError: naming the line number, when a line has no ``|``, a non-numeric or non-positive duration,
            or an empty prompt, or when there is no shot at all.
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
        if not dur > 0:
            raise ValueError(f"storyboard line {n}: duration must be > 0 seconds, got {dur}")
        if not prompt:
            raise ValueError(f"storyboard line {n}: the prompt is empty")
        shots.append(Shot(len(shots), prompt, t, dur))
        t += dur
    if not shots:
        raise ValueError("the storyboard has no shots; write one 'seconds | prompt' line per shot")
    return shots


def segment_frames(latent_frames: int, vae_time_stride: int = 4) -> int:
    """Video frames of a segment of ``latent_frames`` latent frames decoded on its own (causal VAE)."""
    if latent_frames < 1:
        raise ValueError(f"a segment needs at least 1 latent frame, got {latent_frames}")
    return vae_time_stride * (latent_frames - 1) + 1


def plan_segments(shots: list[Shot], fps: float, latent_frames: int, vae_time_stride: int = 4) -> list[SegmentPlan]:
    """Split the storyboard into segments of ``latent_frames`` latent frames.

    The number of segments is ``max(1, round(total_seconds * fps / frames_per_segment))``; each segment's shot is
    the one containing the segment's middle time (the last shot past the end).
    """
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frames = segment_frames(latent_frames, vae_time_stride)
    total = sum(s.duration_s for s in shots)
    count = max(1, round(total * fps / frames))
    plans = []
    for k in range(count):
        mid = (k * frames + frames / 2) / fps
        shot = next((s.index for s in shots if s.start_s <= mid < s.start_s + s.duration_s), shots[-1].index)
        plans.append(SegmentPlan(k, shot, k * frames, frames, latent_frames))
    return plans


def split_clip(num_frames: int, frames_per_segment: int) -> tuple[int, int]:
    """How a starting clip of ``num_frames`` frames becomes history segments: returns ``(skip, count)``:
    the first ``skip`` frames are dropped so that the most recent ``count`` whole segments are kept.

    Raises:
        ValueError: the clip is shorter than one segment.
    """
    count = num_frames // frames_per_segment
    if count < 1:
        raise ValueError(
            f"the starting clip has {num_frames} frames but one history segment needs {frames_per_segment}; "
            "give a longer clip or fewer latent frames per segment")
    return num_frames - count * frames_per_segment, count
