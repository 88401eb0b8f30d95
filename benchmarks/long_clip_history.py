"""Peak RSS of reading a long video file as history (issue 14 point 7): Load Video as History streams the file
(``models/video_history.py``: PyAV, one VAE segment at a time), so peak RSS should not depend on clip length.

Long 1080p clips are made by looping a real clip (default ``.cache/media/bikes.mp4``, 640x272 25 fps, 10 s, scaled
to 1920x1080 and re-encoded once with libx264 ultrafast, then its packets copied loop after loop) into ``--clip-dir``
(default /tmp, never the repository); each clip is then read as
history at 256x128, 16 fps, with the lab model (``training/lab.py load_lab_model``) in a fresh subprocess, whose
``ru_maxrss`` is its peak RSS. Also reported: RSS after loading the models (before reading), the bytes the finished
history keeps (latents, LR latents, memory tokens: these grow with the history by design, they are the memory) and
what the stock LoadVideo + GetVideoComponents route would hold (every source frame as float32).

    nice -n 5 .venv/bin/python benchmarks/long_clip_history.py --seconds 60 600
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, print_table, write_result  # noqa: E402
from framememory.headless.comfy_import import import_comfyui  # noqa: E402

MEDIA = Path(ROOT) / ".cache" / "media"


def encode_scaled(src: Path, out: Path, width: int, height: int) -> Path:
    """Write ``out``: every frame of ``src`` scaled to ``width x height``, H.264 (libx264 ultrafast, yuv420p, so no
    B-frames), at ``src``'s frame rate. Kept when it already exists. Returns ``out``."""
    import av

    from framememory.models.video_reader import open_container

    if out.is_file():
        return out
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    with open_container(src) as source, av.open(str(tmp), "w") as container:
        rate = source.streams.video[0].average_rate or Fraction(25)
        stream = container.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for n, frame in enumerate(source.decode(video=0)):
            scaled = frame.reformat(width=width, height=height, format="yuv420p")
            scaled.pts, scaled.time_base = n, Fraction(1) / rate
            container.mux(stream.encode(scaled))
        container.mux(stream.encode())
    tmp.rename(out)
    return out


def make_long_clip(src: Path, seconds: float, out: Path, width: int = 1920, height: int = 1080) -> Path:
    """Write ``out``: ``src`` scaled to ``width x height`` and re-encoded once (:func:`encode_scaled`), then looped
    for ``seconds`` s by copying its packets with shifted timestamps (each loop starts on a key frame; no re-encode).
    Kept when it already exists. Returns ``out``."""
    import av

    from framememory.models.video_reader import open_container

    if out.is_file():
        return out
    loop = encode_scaled(src, out.with_name(f"{src.stem}_{width}x{height}_loop.mp4"), width, height)
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    with open_container(loop) as source, av.open(str(tmp), "w") as container:
        vin = source.streams.video[0]
        packets = [(p.pts, p.dts, p.duration, p.is_keyframe, bytes(p)) for p in source.demux(vin) if p.size]
        vout = container.add_stream_from_template(vin)
        span = max(pts + (dur or 0) for pts, _, dur, _, _ in packets) - min(p[0] for p in packets)
        total, n = int(round(seconds * float(vin.average_rate))), 0
        while n < total:
            offset = (n // len(packets)) * span
            pts, dts, dur, key, data = packets[n % len(packets)]
            packet = av.Packet(data)
            packet.pts, packet.dts, packet.duration, packet.time_base = pts + offset, dts + offset, dur, vin.time_base
            packet.is_keyframe, packet.stream = key, vout
            container.mux(packet)
            n += 1
    tmp.rename(out)
    return out


def history_bytes(history) -> int:
    """Bytes the history keeps: latents, LR latents, memory tokens (and their positions / extras), pixels left."""
    n = 0
    for seg in history.segments:
        n += seg.latent.nbytes + (seg.frames.nbytes if seg.frames is not None else 0)
        n += sum(t.nbytes for t in seg.lr_latents.values())
        n += sum(t.nbytes for entry in seg.encoded.values() for t in entry)
    return n


def read_one(clip: Path, args) -> dict:
    """In this process: load the lab model, read ``clip`` as history, return the measurements (MiB, s)."""
    import threading

    import torch

    import_comfyui(cpu=True)
    import comfy.model_management  # noqa: F401

    from framememory.models.telemetry import peak_rss_mb, rss_mb
    from framememory.models.video_history import history_from_video
    from framememory.models.video_reader import FrameSelection
    from framememory.training.lab import load_lab_model

    torch.set_num_threads(args.threads)
    model, vae, encoder = load_lab_model(args.lab_dir)
    loaded_rss, loaded_peak = rss_mb(), peak_rss_mb()
    samples, stop = [], threading.Event()

    def sample():  # current RSS every second: shows whether it climbs with the clip
        while not stop.wait(1.0):
            samples.append(rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    mem, report = history_from_video(model, vae, encoder, clip, FrameSelection(args.fps), args.width, args.height,
                                     args.latent_frames)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    src = report["source"]
    quarter = [round(samples[min(len(samples) - 1, int(q * len(samples)))], 1) for q in (0.25, 0.5, 0.75, 1.0)] \
        if samples else []
    return {"clip": clip.name, "clip_seconds": src["duration_s"], "source": f"{src['width']}x{src['height']}@"
            f"{src['fps']:g}", "source_frames": src["frames"], "history_frames": report["history_frames"],
            "segments": report["segments"], "memory_tokens": report["memory_tokens"],
            "rss_after_load_mb": round(loaded_rss, 1), "peak_rss_after_load_mb": round(loaded_peak, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_end_mb": round(rss_mb(), 1),
            "rss_at_quarters_mb": quarter, "history_kept_mb": round(history_bytes(mem.history) / 2**20, 2),
            "read_seconds": round(seconds, 1), "frames_per_second": round(report["history_frames"] / seconds, 1),
            "stock_float32_gb": round(src["frames"] * src["width"] * src["height"] * 3 * 4 / 1e9, 1)}


def run_child(clip: Path, args) -> dict:
    """:func:`read_one` in a fresh subprocess (its own peak RSS); returns its row."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(clip), "--width", str(args.width), "--height",
           str(args.height), "--fps", str(args.fps), "--latent-frames", str(args.latent_frames), "--lab-dir",
           str(args.lab_dir), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def extra_settings(args) -> dict:
    return {"width": args.width, "height": args.height, "fps": args.fps, "latent_frames": args.latent_frames,
            "source": os.path.basename(args.source), "clip_size": "1920x1080", "threads": args.threads,
            "model": "lab (training/lab.py load_lab_model)"}


def merged_rows(rows: list[dict], settings: dict) -> list[dict]:
    """``rows`` plus the rows of other clip lengths already in the result file with the same settings (so the clips
    can be measured in separate runs), sorted by clip length."""
    path = Path(ROOT) / "benchmarks" / "results" / "long_clip_history.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    new = {r["clip"] for r in rows}
    keep = [r for r in old.get("rows", []) if old.get("settings") == settings and r["clip"] not in new]
    return sorted(keep + rows, key=lambda r: r["clip_seconds"])


@dataclasses.dataclass(frozen=True)
class Args:
    """Peak RSS of reading a long video file as history."""

    seconds: tuple[float, ...] = (60, 600)
    """clip lengths"""
    source: Path = MEDIA / "bikes.mp4"
    """real clip to loop"""
    clip_dir: Path = Path("/tmp")
    """where the long clips go"""
    width: int = 256
    """history width (pixels)"""
    height: int = 128
    """history height (pixels)"""
    fps: float = 16.0
    """history frame rate"""
    latent_frames: int = 4
    """latent frames per segment"""
    lab_dir: Path = Path(ROOT) / "lab_model"
    """the lab model set"""
    threads: int = 1
    """torch threads of the reading process"""
    child: Path | None = None
    """internal: read this clip in this process and print its row (run_child)"""


def main(argv=None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.child:
        print("RESULT " + json.dumps(read_one(args.child, args)), flush=True)
        return 0
    rows = []
    for s in args.seconds:
        clip = make_long_clip(args.source, s, args.clip_dir / f"framememory_long_{s:g}s_1080p.mp4")
        rows.append(run_child(clip, args))
        print(json.dumps(rows[-1]), flush=True)
    rows = merged_rows(rows, extra_settings(args))
    print_table(rows, ["clip_seconds", "history_frames", "segments", "rss_after_load_mb", "peak_rss_mb", "rss_end_mb",
                       "history_kept_mb", "read_seconds", "stock_float32_gb"])
    print("wrote", write_result("long_clip_history", rows, {"settings": extra_settings(args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
