"""Where a storyboard run stands, as one fraction of the whole run that moves through every phase of every segment
(sampling steps, the VAE decode, the memory encode), for the Storyboard node's progress (nodes/progress_ui.py).

Pure Python (no ComfyUI): :func:`models.storyboard.run_storyboard` reports a :class:`RunProgress` after every
sampling step and at the start and end of each segment's decode and encode; :class:`RunClock` turns those into the
run's fraction. A segment's phases are weighted by the time they took in the segments already finished (the first
segment by :data:`FIRST_SEGMENT_WEIGHTS`), so the fraction tracks wall time without going backwards: a finished
segment always counts ``1 / segments``, and within a segment the fraction only grows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PHASES = ("sample", "decode", "encode")
# Share of a segment's time per phase before one has been measured (the lab model on CPU spends about a third
# sampling; Wan at 480p on a GPU nearly all of it): a middle guess, replaced after the first segment.
FIRST_SEGMENT_WEIGHTS = {"sample": 0.6, "decode": 0.25, "encode": 0.15}


@dataclass
class RunProgress:
    """One progress report of a storyboard run.

    Attributes:
        segment: 0-based index of the segment being worked on (``segments`` when the run is over).
        segments: segments of the whole storyboard (resumed ones included).
        phase: "sample", "decode", "encode" or "segment done".
        step, steps: sampling steps done / per segment (the schedule's, over both experts of a Wan 2.2 A14B pair).
        fraction: of the whole run, 0..1 (:meth:`RunClock.fraction`).
        memory_tokens: memory tokens the segment attended to (None before it was sampled).
        history_seconds: seconds of history those tokens covered, at the run's fps (None before sampling).
        frames: with phase "segment done": the segment's decoded frames ``[F, H, W, 3]`` uint8 (CPU), else None.
    """

    segment: int
    segments: int
    phase: str
    step: int
    steps: int
    fraction: float
    memory_tokens: int | None = None
    history_seconds: float | None = None
    frames: torch.Tensor | None = None


class RunClock:
    """The run-wide fraction of a storyboard of ``segments`` segments, ``steps`` sampling steps each.

    Args:
        segments: segments of the storyboard (>= 1). steps: sampling steps per segment (>= 1).

    Raises:
        ValueError: ``segments`` or ``steps`` below 1.
    """

    def __init__(self, segments: int, steps: int) -> None:
        if segments < 1 or steps < 1:
            raise ValueError(f"a run needs at least one segment and one step, got segments={segments}, steps={steps}")
        self.segments, self.steps = segments, steps
        self.seconds = {phase: 0.0 for phase in PHASES}  # measured in the finished segments of this run

    def weights(self) -> dict[str, float]:
        """Each phase's share of a segment (sums to 1): measured so far, else :data:`FIRST_SEGMENT_WEIGHTS`."""
        total = sum(self.seconds.values())
        if total <= 0:
            return dict(FIRST_SEGMENT_WEIGHTS)
        return {phase: seconds / total for phase, seconds in self.seconds.items()}

    def measured(self, phase_seconds: dict[str, float]) -> None:
        """Add a finished segment's seconds per phase (keys of :data:`PHASES`; missing ones count 0)."""
        for phase in PHASES:
            self.seconds[phase] += max(float(phase_seconds.get(phase, 0.0)), 0.0)

    def fraction(self, segment: int, phase: str, done: float) -> float:
        """The run's fraction when segment ``segment`` (0-based) has done ``done`` (0..1) of phase ``phase``
        ("sample", "decode", "encode"; "segment done" = the whole segment).

        Raises:
            ValueError: an unknown phase.
        """
        if phase == "segment done":
            return min((segment + 1) / self.segments, 1.0)
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}: one of {PHASES + ('segment done',)}")
        weights = self.weights()
        before = sum(weights[p] for p in PHASES[:PHASES.index(phase)])
        within = before + weights[phase] * min(max(done, 0.0), 1.0)
        return min((segment + within) / self.segments, 1.0)


__all__ = ["PHASES", "FIRST_SEGMENT_WEIGHTS", "RunProgress", "RunClock"]
