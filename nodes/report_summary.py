"""The Storyboard report as a few lines of text for people: what the node shows on itself after a run (the report
output stays the full JSON)."""
from __future__ import annotations


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _seam_line(report: dict) -> str:
    ratios = [r for r in (report.get("seams") or {}).get("per_boundary", []) if r is not None]
    if not ratios:
        return "Seams: none (one segment)"
    return f"Seams: mean {_mean(ratios):.2f}x, worst {max(ratios):.2f}x (1.00x: no visible join)"


def _drift_line(segments: list[dict]) -> str:
    drift = [s["colour_drift"] for s in segments if s.get("colour_drift") is not None]
    if not drift:
        return "Colour drift: not measured (no history colour yet)"
    return f"Colour drift: mean {_mean(drift):.1f}, worst {max(drift):.1f} Delta E (2.3: just visible)"


def _evaluation_lines(report: dict) -> list[str]:
    """The margin of a run that was scored against real frames (the main job's ``evaluation``, scripts/scores.py):
    memory on minus the best of memory off, mean colour and last frame, and plain words when it loses. [] without."""
    ev = report.get("evaluation") or {}
    entry = ev.get(ev.get("kind")) if isinstance(ev.get("kind"), str) else None
    if not isinstance(entry, dict) or entry.get("margin_db") is None:
        return []
    rows = {"memory off": entry.get("memory_off"), **{k.replace("_", " "): v for k, v in
                                                      (entry.get("references") or {}).items()
                                                      if k in ("mean_colour", "last_frame")}}
    rows = {k: v["psnr_db"] for k, v in rows.items() if isinstance(v, dict)}
    best = max(rows, key=rows.get)
    on, margin = entry["memory_on"]["psnr_db"], entry["margin_db"]
    what = (f"Return after {entry['gap_seconds']:g} s away" if entry.get("gap_seconds") else "Continuation")
    return [f"{what}: memory on {on:.2f} dB PSNR",
            f"Margin {margin:+.2f} dB over the best trivial row ({best} {rows[best]:.2f})"
            + ("" if margin > 0 else ": memory LOSES")]


def report_summary(report: dict) -> str:
    """A short human-readable summary of a :func:`models.storyboard.run_storyboard` report (as the Storyboard node
    returns it, with ``output_frames``): segments, video length, memory tokens and the history seconds they covered at
    the last segment, run time, seam ratios and colour drift and, when the report carries an ``evaluation`` against
    real frames (the main job's report.json), the memory row's margin over the best trivial row; one fact per line
    of at most ~70 characters (the Storyboard node's width), plain text (no HTML).

    Raises:
        KeyError: ``report`` lacks a field every report has (``fps``, ``segments``, ``total_frames``, ...).
    """
    fps, segments = float(report["fps"]), report["segments"]
    made = [s for s in segments if not s.get("replayed")]
    last = made[-1] if made else segments[-1]
    replayed = len(segments) - len(made)
    lines = [
        f"{len(made)} segment{'s' if len(made) != 1 else ''} generated"
        + (f" ({replayed} resumed from the memory file)" if replayed else ""),
        f"{report['total_frames']} frames = {report['total_frames'] / fps:.1f} s at {fps:g} fps, "
        f"{report['width']}x{report['height']}, {report['model_family']}",
        f"Memory: {report['memory_mode']}, rate {report['rate']}, final {report['final_memory_tokens']} tokens",
        f"Last segment: {last.get('memory_tokens', 0)} tokens for {last.get('history_frames_covered', 0) / fps:.1f} s "
        f"of {last.get('history_frames_total', 0) / fps:.1f} s history",
    ]
    seconds = [s["seconds"] for s in made if "seconds" in s]
    if seconds:
        lines.append(f"Time: {sum(seconds):.1f} s, {sum(seconds) / len(seconds):.1f} s per segment, "
                     f"peak RAM {report.get('peak_rss_mb', 0) / 1024:.1f} GiB")
    lines += [_seam_line(report), _drift_line(made)]
    if "output_frames" in report:
        dropped = report.get("start_frames_dropped") or 0
        lines.append(f"Output: {report['output_frames']} frames"
                     + (f" ({dropped} start frame{'s' if dropped != 1 else ''} dropped to fit whole segments)"
                        if dropped else ""))
    return "\n".join(lines + _evaluation_lines(report))


__all__ = ["report_summary"]
