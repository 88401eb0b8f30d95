"""The report of a storyboard run (JSON-able): what each segment cost and attended to, and the run as a whole
(:func:`models.storyboard.run_storyboard` returns it; nodes/report_summary.py puts it in plain words)."""
from __future__ import annotations

import torch

from ..memory.storyboard import Shot, seam_ratios
from . import families
from .encoding import rate_str
from .experts import memory_token_count
from .telemetry import peak_rss_mb, segment_record


def generated_record(plan, images: torch.Tensor, samples: torch.Tensor, covered: int, total: int, memory_tokens: int,
                     drift: float | None, seconds: float, stats: dict) -> dict:
    """The report record of one generated segment: ``plan`` (a :class:`memory.storyboard.SegmentPlan`), its frames
    ``images`` ``[F, H, W, 3]`` and latents ``samples`` ``[1, C, T, h, w]``, the history frames its memory ``covered``
    of ``total`` before it, the ``memory_tokens`` it attended to, its colour ``drift``, wall ``seconds`` and the
    phase timings ``stats`` (:func:`models.telemetry.segment_record`)."""
    return {"index": plan.index, "shot": plan.shot, "frames": int(images.shape[0]),
            "latent_frames": int(samples.shape[2]), "start_frame": total, "memory_tokens": memory_tokens,
            "history_frames_covered": covered, "history_frames_total": total, "colour_drift": drift,
            "seconds": round(seconds, 3), **segment_record(stats)}


def replayed_records(plans, history_frames: int) -> list[dict]:
    """The report records of the segments of a resumed run decoded again (``plans``), after ``history_frames``."""
    return [{"index": p.index, "shot": p.shot, "frames": p.frames, "latent_frames": p.latent_frames,
             "start_frame": history_frames + p.start_frame, "replayed": True} for p in plans]


def storyboard_report(model, mem, shots: list[Shot], stages: list, colour: float, decode: str, segments: list[dict],
                      frames: torch.Tensor) -> dict:
    """The report of a run of ``model`` that left the Memory ``mem``: its ``shots``, sampling ``stages``
    (:class:`models.segment_sampler.StepRange`), colour-correction strength, ``decode`` (how it decoded,
    :func:`models.segment_decoder.decode_description`), the segments' records and its ``frames`` ``[F, H, W, 3]``
    (the generated part)."""
    report = {
        "model_family": families.family_for(model).FAMILY, "fps": mem.fps, "width": mem.width, "height": mem.height,
        "start_frames": segments[0]["start_frame"], "total_frames": int(frames.shape[0]),
        "rate": rate_str(model, mem.encoder), "encoder": mem.encoder.name, "memory_mode": mem.mode,
        "colour_correction": colour,
        "shots": [{"index": s.index, "prompt": s.prompt, "start_s": s.start_s, "duration_s": s.duration_s}
                  for s in shots],
        "segments": segments, "final_memory_tokens": memory_token_count(mem.history, mem.encoder),
        "seams": seam_ratios(frames, [s["start_frame"] - segments[0]["start_frame"] for s in segments[1:]]),
        "decode": decode,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if len(stages) > 1:
        report["experts"] = [{"expert": name, "steps": [st.start, st.end]}
                             for name, st in zip(("high_noise", "low_noise"), stages)]
    return report


__all__ = ["generated_record", "replayed_records", "storyboard_report"]
