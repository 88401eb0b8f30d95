"""The Storyboard report in plain words: what the node shows on itself after a run. Each line says what happened and,
where a number calls for it, what to change; the technical figures (rates, per-segment token counts, seam ratios,
Delta E per segment) stay in the report output (``report.json`` of the scripts)."""
from __future__ import annotations

if __package__:
    from ..memory.designs import DESIGNS
else:  # loaded by path (scripts/example_report.py, tests): no parent package, the installed one
    from framememory.memory.designs import DESIGNS

MODE_NAMES = {name: module.TITLE for name, module in DESIGNS.items()}  # memory mode -> the name people read
JOIN_SMOOTH = 1.3  # seam ratio (change across a join / change between frames inside a segment) still read as smooth
JOIN_VISIBLE = 2.0  # above it a join is a visible jump
DRIFT_VISIBLE = 2.3  # Delta E*ab: a just noticeable colour difference
DRIFT_ACT = 5.0  # Delta E*ab of a segment against the video before it: suggest colour_correction above it


def _memory_line(report: dict, last: dict) -> str:
    fps, mode = float(report["fps"]), report["memory_mode"]
    if mode == "off":
        return "Memory: off (each segment saw only its prompt and the frames before it)"
    tokens, seen = last.get("memory_tokens", 0), last.get("history_frames_covered", 0) / fps
    return f"Memory ({MODE_NAMES.get(mode, mode)}): {tokens} tokens held the last {seen:.1f} s of video"


def _join_line(report: dict) -> str:
    ratios = [r for r in (report.get("seams") or {}).get("per_boundary", []) if r is not None]
    if not ratios:
        return "Joins: none (one segment)"
    worst = max(ratios)
    if worst <= JOIN_SMOOTH:
        return "Joins between segments: smooth"
    word = "a visible jump" if worst > JOIN_VISIBLE else "slightly visible"
    return f"Joins between segments: {word} (worst {worst:.1f}x the motion inside a segment)"


def _colour_line(report: dict, segments: list[dict]) -> str:
    drift = [s["colour_drift"] for s in segments if s.get("colour_drift") is not None]
    if not drift:
        return "Colour: not measured (no earlier video to compare with)"
    worst = max(drift)
    if worst <= DRIFT_VISIBLE:
        return "Colour: steady from segment to segment"
    if worst <= DRIFT_ACT:
        return f"Colour: drifts a little (worst {worst:.1f} Delta E; 2.3 is just visible)"
    if report.get("colour_correction"):
        return f"Colour: drifts (worst {worst:.1f} Delta E) even with colour_correction on"
    return f"Colour: drifts (worst {worst:.1f} Delta E): set colour_correction to on"


def _output_line(report: dict) -> str:
    dropped = report.get("start_frames_dropped") or 0
    line = f"Output: {report['output_frames']} frames"
    if dropped:
        line += f" ({dropped} start frame{'s' if dropped != 1 else ''} dropped to fit whole segments)"
    if report.get("history_frames_reason"):  # include_history asked for frames the history could not give
        line += f"\nHistory left out of the output: {report['history_frames_reason']}"
    return line


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
    """A plain-words summary of a :func:`models.storyboard.run_storyboard` report (as the Storyboard node returns
    it, with ``output_frames``): the video made, what the memory covered at the last segment, the run time, whether
    the joins between segments and the colours hold (with the setting to change when they do not: colour drift above
    :data:`DRIFT_ACT` Delta E suggests colour_correction), the output, and, when the report carries an
    ``evaluation`` against real frames (the main job's report.json), the memory row's margin over the best trivial
    row. One fact per line of at most ~72 characters (the Storyboard node's width), plain text (no HTML).

    Raises:
        KeyError: ``report`` lacks a field every report has (``fps``, ``segments``, ``total_frames``, ...).
    """
    fps, segments = float(report["fps"]), report["segments"]
    made = [s for s in segments if not s.get("replayed")]
    last = made[-1] if made else segments[-1]
    replayed = len(segments) - len(made)
    lines = [
        f"Made {report['total_frames'] / fps:.1f} s of video: {len(made)} segment{'s' if len(made) != 1 else ''}"
        + (f" (+{replayed} resumed)" if replayed else "")
        + f", {report['width']}x{report['height']}, {fps:g} fps",
        _memory_line(report, last),
    ]
    seconds = [s["seconds"] for s in made if "seconds" in s]
    if seconds:
        lines.append(f"Took {sum(seconds):.1f} s ({sum(seconds) / len(seconds):.1f} s per segment), "
                     f"peak RAM {report.get('peak_rss_mb', 0) / 1024:.1f} GiB")
    lines += [_join_line(report), _colour_line(report, made)]
    if "output_frames" in report:
        lines.append(_output_line(report))
    return "\n".join(lines + _evaluation_lines(report))


__all__ = ["report_summary", "DRIFT_ACT", "JOIN_SMOOTH", "JOIN_VISIBLE"]
