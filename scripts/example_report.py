"""The main job's outputs (scripts/run_example.py): storyboard.mp4 checked against the report, contact_sheet.png,
report.json's content and the summary printed at the end."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from framememory.models.video_reader import read_frames

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the job's modules, next to this file
import revisit_eval  # noqa: E402
from example_common import REPO_ROOT, ExampleError, banner, log  # noqa: E402


def contact_sheet(frames, out: Path, history_frames: int = 0, count: int = 12, cols: int = 4,
                  min_tile_w: int = 240) -> list[int]:
    """Grid of ~`count` evenly spaced frames labelled with their index (and "history" for the first
    `history_frames`, the starting clip); returns the indices used."""
    from PIL import Image, ImageDraw

    n = len(frames)
    if n == 0:
        raise ExampleError("the output video has no frames")
    count = min(count, n)
    idx = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})
    h, w = frames[0].shape[:2]
    scale = max(1, -(-min_tile_w // w))  # integer upscale so tiny videos stay visible
    tw, th = w * scale, h * scale
    label_h = 18
    rows = -(-len(idx) // cols)
    sheet = Image.new("RGB", (cols * tw, rows * (th + label_h)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        x, y = c * tw, r * (th + label_h)
        tile = Image.fromarray(frames[i]).resize((tw, th), Image.NEAREST)
        sheet.paste(tile, (x, y + label_h))
        label = f"frame {i}" + (" (history)" if i < history_frames else " (generated)" if history_frames else "")
        draw.text((x + 4, y + 3), label, fill=(255, 255, 255) if i >= history_frames else (150, 200, 255))
    sheet.save(out)
    return idx


def summary_table(report: dict) -> str:
    cols = ["seg", "shot", "frames", "start", "mem tokens", "history covered", "seconds", "peak RSS MB"]
    rows = []
    for s in report.get("segments", []):
        rows.append([s.get("index"), s.get("shot"), s.get("frames"), s.get("start_frame"), s.get("memory_tokens"),
                     f"{s.get('history_frames_covered')}/{s.get('history_frames_total')}",
                     f"{s.get('seconds', 0):.1f}" if isinstance(s.get("seconds"), (int, float)) else s.get("seconds"),
                     f"{s.get('peak_rss_mb', 0):.0f}" if isinstance(s.get("peak_rss_mb"), (int, float)) else s.get("peak_rss_mb")])
    widths = [max(len(str(x)) for x in [c, *[r[i] for r in rows]]) for i, c in enumerate(cols)]
    fmt = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths]), *map(fmt, rows)])


# ---- outputs of the main run --------------------------------------------------------------------
def save_main_outputs(run: dict, out: Path, clip) -> dict:
    """Copy the memory-on video to out/storyboard.mp4, check its frame count against the report and draw
    contact_sheet.png; returns report.json's "decoded" entry."""
    report = run["report"]
    shutil.copy2(run["video"], out / "storyboard.mp4")
    frames, fps = read_frames(out / "storyboard.mp4")
    # "output_frames": frames in the node's IMAGE output (starting clip + generated when include_history is on);
    # "total_frames": generated frames. Older reports lack output_frames.
    expected = report.get("output_frames", report.get("total_frames"))
    if expected is not None and len(frames) != expected:
        raise ExampleError(f"the saved video has {len(frames)} frames, the report says {expected}")
    start = report.get("start_frames", 0)
    shown = start if report.get("output_frames") == start + report.get("total_frames", -1) and start < len(frames) else 0
    if clip is not None and start != clip.seq.history:
        raise ExampleError(f"the Storyboard kept {start} history frames, {clip.seq.history} were given")
    sheet_idx = contact_sheet(frames, out / "contact_sheet.png", history_frames=shown)
    return {"frames": len(frames), "fps": fps, "height": int(frames[0].shape[0]), "width": int(frames[0].shape[1]),
            "contact_sheet_frames": sheet_idx}


def print_summary(report: dict, decoded: dict, wall: float, rss_mb: float, out: Path, ev: dict) -> None:
    """The per-segment table and a few lines: geometry, seams, the memory on / off numbers, wall time, files."""
    print()
    print(summary_table(report))
    print()
    log(f"model family {report.get('model_family')}, {report.get('width')}x{report.get('height')} @ {report.get('fps')} fps, "
        f"{report.get('start_frames')} history frames, {report.get('total_frames')} generated, "
        f"{decoded['frames']} in the video, {len(report.get('shots', []))} shots, {len(report.get('segments', []))} segments")
    seams = report.get("seams") or {}
    if seams.get("per_boundary"):
        log(f"seams at segment joins (pixel change across a join / inside segments, 1.0 = none): mean "
            f"{seams.get('mean')}, per join {seams.get('per_boundary')}; decode: {report.get('decode')}")
    if "kind" in ev:
        for line in revisit_eval.summary_lines(ev[ev["kind"]]):
            log(line)
        log("the Storyboard's summary with this evaluation:\n  " + node_summary(report).replace("\n", "\n  "))
        if ev[ev["kind"]]["losses"]:
            banner("MEMORY DOES NOT WIN HERE: " + "; ".join(ev[ev["kind"]]["losses"]) + ".")
    else:
        log(f"evaluation skipped: {ev.get('skipped')}")
    log(f"wall {wall:.1f} s, server peak RSS {rss_mb:.0f} MB, load average at the end {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores")
    names = ["storyboard.mp4", "contact_sheet.png", "report.json", "comfyui_server.log"]
    if "kind" in ev:
        names += ["storyboard_memory_off.mp4", "contact_sheet_eval.png"]
    for name in names:
        log(f"wrote {out / name}")


def node_summary(report: dict) -> str:
    """nodes/report_summary.py's text (what the Storyboard node shows) of the full report, evaluation included; loaded
    by path: the nodes package imports ComfyUI, the summary module does not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("framememory_report_summary", REPO_ROOT / "nodes" / "report_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.report_summary(report)


def full_report(on: dict, models, weights: dict, clip, video: Path, ev: dict, decoded: dict, peak_rss_mb: float,
                out: Path) -> dict:
    """report.json without the command, wall time and the paths main adds: the memory-on run ``on``'s Storyboard
    report, the server's peak RSS (MB), the ``models`` (example_models.Models) and their ``weights`` entry, the
    history ``clip`` (a revisit_job plan, None when the workflow took the file as it is) read from ``video``, the
    evaluation ``ev``, the ``decoded`` video's entry and the output files in ``out``."""
    report = on["report"]
    return {
        **report,
        "server_peak_rss_mb": round(peak_rss_mb, 1),
        "embedded_default": False if models.kind == "user" else models.kind,
        "model": {"kind": models.kind, "description": models.warning or "user weights (see weights)",
                  **({"recipe": models.recipe} if models.recipe else {})},
        "warning": models.warning,
        "history": None if clip is None else {
            "clip": str(video), "frames": clip.seq.history, "file": clip.file, "sequence": clip.seq.name,
            "seconds": round(clip.seq.history / float(report["fps"]), 3), "storyboard": clip.seq.storyboard(
                float(report["fps"])), "reader": "FrameMemoryLoadVideoHistory (models/video_history.py, streamed)"},
        "evaluation": ev,
        "decoded": decoded,
        "prompt_id": on["prompt_id"], "report_node": on["report_node"], "progress_events": on["progress_events"],
        "prompt_seconds": on["seconds"],
        "weights": weights,
        "paths": {"video": str(out / "storyboard.mp4"), "contact_sheet": str(out / "contact_sheet.png")},
    }
