"""Benchmark: a long storyboard on the lab model from a real clip, memory on vs off (scene kept, colour drift).

Usage:
  .venv/bin/python benchmarks/long_run.py [--seconds 60] [--clip .cache/media/bikes.mp4] [--history-seconds 2.8]
  .venv/bin/python benchmarks/long_run.py --arms frame_preservation+colour --name long_run_lab_colour  # issue 14

Loads the lab model set (``lab_model/``, made by ``training/lab.py``) with the stock loaders' own functions
(:func:`training.lab.load_lab_model`), takes the first ``--history-seconds`` of the clip (a held-out clip: bikes.mp4
by default; read with the training pipeline's reader at 256x128, 16 fps) as the starting history, and generates
``--seconds`` of video as one shot in 1 s segments with ``models.storyboard.run_storyboard``, twice: memory mode
``frame_preservation`` and ``off`` (same seed, model, history, prompt). Per generated segment:

* ``psnr_vs_history_db``: mean PSNR (torchmetrics, [0, 1] RGB) of the segment's frames against the history's last
  frame: how much of the scene the video keeps;
* ``ciede2000``: CIEDE2000 colour difference (scikit-image ``deltaE_ciede2000``) between the segment's mean CIELAB
  colour (``rgb2lab`` of every pixel, averaged) and the history's: colour drift.

Against the real continuation (issue 22; as far as the clip goes: bikes.mp4 about 8 s after the history): every arm,
the shuffled-memory control (Frame Preservation with ``--shuffled-clip``'s first frames as the history, run that long)
and the reference rows of scripts/scores.py (mean colour, last frame raw and through the VAE, VAE ceiling): PSNR /
SSIM on frames and 8x thumbnails, each memory arm's margin over the best of memory off, mean colour and last frame,
and a NOTE for every reference it loses to.

Prints both curves at every 10 s mark, checks "memory-on drift below memory-off at every 10 s mark", writes
``benchmarks/results/long_run_lab.json`` and the plot ``benchmarks/results/long_run_lab.png`` (matplotlib).
"""
from __future__ import annotations

import dataclasses
import os
import time

import tyro

from common import ROOT, print_table, vae_pass, write_result
from framememory.headless.comfy_import import import_comfyui

PROMPT = "a street with cyclists and pedestrians on a sunny day"


def setup() -> None:
    """Import ComfyUI on the CPU with PyTorch SDPA, as a GPU run would attend: ComfyUI's CPU default (split /
    sub-quadratic attention sized to the free RAM) took 23 GB of RSS at ~7k memory tokens and was OOM-killed in a
    60 s run."""
    import_comfyui(cpu=True, sdpa=True)


def history_clip(path: str, seconds: float, width: int, height: int, fps: float):
    """(frames float ``[H, height, width, 3]`` 0..1, H): the first H frames of ``path`` at ``fps``, H the largest
    13 + 16k not above ``seconds * fps``, as the main job picks them (scripts/example_eval.py ``read_clip``,
    ``history_length``; raises its EvalError when the clip is too short)."""
    import math

    import torch
    from example_eval import history_length, read_clip  # scripts/ (on sys.path through common.py)

    frames = read_clip(path, width, height, fps, math.floor(seconds * fps + 1e-6))
    h = history_length(seconds, fps, 4, len(frames))
    return torch.from_numpy(frames[:h]).float() / 255.0, h


def segment_metrics(frames, sizes: list[int], history) -> list[dict]:
    """Per segment (``sizes`` frames each, in order, of ``frames`` ``[F, H, W, 3]`` 0..1): PSNR against the
    history's last frame and CIEDE2000 between mean CIELAB colours (module docstring)."""
    from skimage.color import deltaE_ciede2000, rgb2lab
    from torchmetrics.functional.image import peak_signal_noise_ratio

    ref = history[-1:].permute(0, 3, 1, 2)
    lab_hist = rgb2lab(history.numpy()).reshape(-1, 3).mean(0)
    rows, start = [], 0
    for k, n in enumerate(sizes):
        seg = frames[start:start + n]
        start += n
        x = seg.permute(0, 3, 1, 2)
        psnr = float(peak_signal_noise_ratio(x, ref.expand_as(x), data_range=1.0, reduction="none", dim=(1, 2, 3)).mean())
        lab_seg = rgb2lab(seg.numpy()).reshape(-1, 3).mean(0)
        rows.append({"segment": k, "end_s": None, "psnr_vs_history_db": round(psnr, 3),
                     "ciede2000": round(float(deltaE_ciede2000(lab_seg[None], lab_hist[None])[0]), 3)})
    return rows


def run_arm(lab, history, mode: str, seconds: float, seed: int, steps: int, colour: float = 0.0):
    """One storyboard of ``seconds`` after ``history`` in memory ``mode`` with colour-drift correction strength
    ``colour`` (0 = off; ``models.colour_match``). Returns (frames [F, H, W, 3] 0..1, report)."""
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.memory.storyboard import Shot
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder = lab
    clip = StandInTextEncoder()
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    h, w = int(history.shape[1]), int(history.shape[2])
    start, _ = history_from_frames(model, vae, encoder, history, 4, 16.0, w, h, mode=mode)
    frames, _, report = run_storyboard(model, vae, clip, encoder, negative, [Shot(0, PROMPT, 0.0, seconds)],
                                       SamplerSettings(steps, 1.0, "euler", "simple", seed), w, h, 16.0, 4, start,
                                       mode=mode, colour_correction=colour)
    return frames, report


def marks(rows_on: list[dict], rows_off: list[dict], every_s: float = 10.0) -> list[dict]:
    """The two curves at every ``every_s`` mark (the segment ending there), and whether memory-on drifts less."""
    out = []
    for a, b in zip(rows_on, rows_off):
        if a["end_s"] is not None and abs(a["end_s"] / every_s - round(a["end_s"] / every_s)) < 1e-6 and a["end_s"] > 0:
            out.append({"t_s": a["end_s"], "psnr_on": a["psnr_vs_history_db"], "psnr_off": b["psnr_vs_history_db"],
                        "drift_on": a["ciede2000"], "drift_off": b["ciede2000"],
                        "on_drifts_less": a["ciede2000"] < b["ciede2000"]})
    return out


def versus_real(lab, clip: str, history, frames_by_arm: dict, args) -> dict:
    """Every arm and the reference rows (scripts/scores.py) against the clip's real continuation, over the frames the
    clip has after the history (bikes.mp4: about 8 s), plus the shuffled-memory control: Frame Preservation with
    another held-out clip's first frames as the history, run that long. Returns ``{"frames", "rows": {name:
    scores}, "margin_db": {arm: margin}, "losses": [...]}``."""
    import numpy as np
    import scores
    from example_eval import read_clip

    from framememory.memory.frames import to_uint8

    h = int(history.shape[0])
    real = read_clip(clip, 256, 128, 16.0, 100_000)[h:]
    m = 4 * (min(len(real), *(len(f) for f in frames_by_arm.values())) // 4)  # VAE pass: 1 + 4k frames
    if m == 0:
        return {"frames": 0, "note": "the clip has no frames after the history"}
    hist, real = to_uint8(history).numpy(), real[:m]
    other, _ = history_clip(os.path.join(ROOT, ".cache", "media", args.shuffled_clip), h / 16.0, 256, 128, 16.0)
    if other.shape[0] != h:
        raise ValueError(f"--shuffled-clip {args.shuffled_clip} gives {other.shape[0]} history frames, {h} needed")
    shuffled, _ = run_arm(lab, other, "frame_preservation", math_ceil_s(m), args.seed, args.steps)
    v = vae_pass(lab[1], np.concatenate([hist[-1:], real]))
    refs = scores.reference_frames(hist, m, np.concatenate([np.zeros_like(hist[:-1]), v]))
    rows = {k: scores.score(to_uint8(f[:m]).numpy(), real) for k, f in {**frames_by_arm, "shuffled": shuffled}.items()}
    rows.update({k: scores.score(f, real) for k, f in refs.items()})
    memory = [k for k in frames_by_arm if not k.startswith("off")]
    return {"frames": m, "rows": rows, "margin_db": {k: scores.margin(rows, k, off="off") for k in memory},
            "losses": scores.losses(rows, memory, against=("off", *scores.TRIVIAL, "last_frame_vae"))}


def math_ceil_s(frames: int) -> float:
    """Whole seconds of 1 s segments (16 frames) covering ``frames``."""
    return float(-(-frames // 16))


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, rows in curves.items():
        t = [r["end_s"] for r in rows]
        a.plot(t, [r["psnr_vs_history_db"] for r in rows], label=label)
        b.plot(t, [r["ciede2000"] for r in rows], label=label)
    a.set(xlabel="generated seconds", ylabel="PSNR vs last history frame (dB)", title="scene kept")
    b.set(xlabel="generated seconds", ylabel="CIEDE2000 vs history mean colour", title="colour drift")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


@dataclasses.dataclass(frozen=True)
class Args:
    """A long storyboard on the lab model from a real clip, memory on vs off."""

    seconds: float = 60.0
    """seconds to generate"""
    clip: str = os.path.join(ROOT, ".cache", "media", "bikes.mp4")
    """history clip"""
    history_seconds: float = 2.8
    """seconds of the clip used as history"""
    lab_dir: str = os.path.join(ROOT, "lab_model")
    """the lab model set"""
    steps: int = 12
    """sampling steps per segment (12, as the example)"""
    seed: int = 42
    """sampling seed"""
    arms: tuple[str, ...] = ("frame_preservation", "off")
    """arms to run: a memory mode, optionally '+colour' (colour-drift correction at --colour-strength), e.g.
    frame_preservation+colour; the first two are compared at the marks"""
    colour_strength: float = 1.0
    """strength of the '+colour' arms"""
    shuffled_clip: str = "carphone_pristine.mp4"
    """held-out clip whose first frames are the shuffled control's history ('' skips the comparison with the real
    continuation)"""
    name: str = "long_run_lab"
    """result name under benchmarks/results/"""


def run_arms(args, lab, off_lab, history) -> tuple[dict, dict, dict, dict]:
    """Every arm of ``args.arms`` over the same history: ``(curves, wall, rss, frames_by_arm)`` keyed by arm; each
    arm's segment rows are written as a partial result when it ends."""
    curves, wall, rss, frames_by_arm = {}, {}, {}, {}
    for arm in args.arms:
        mode, _, extra = arm.partition("+")
        t0 = time.perf_counter()
        frames, report = run_arm(off_lab if mode == "off" else lab, history, mode, args.seconds, args.seed, args.steps,
                                 args.colour_strength if extra == "colour" else 0.0)
        wall[arm] = round(time.perf_counter() - t0, 1)
        rows = segment_metrics(frames, [s["frames"] for s in report["segments"]], history)
        ends = [s["start_frame"] - report["start_frames"] + s["frames"] for s in report["segments"]]
        for r, e in zip(rows, ends):
            r["end_s"] = round(e / 16.0, 4)
        curves[arm] = rows
        frames_by_arm[arm] = frames[:int(16 * 12)]  # the part a real continuation can exist for (<= 12 s kept)
        rss[arm] = report["peak_rss_mb"]
        print(f"{arm}: {len(rows)} segments in {wall[arm]} s, peak RSS {rss[arm]} MB", flush=True)
        write_result(f"{args.name}_partial", rows, {"mode": arm, "wall_s": wall[arm], "report": report})
    return curves, wall, rss, frames_by_arm


def print_versus_real(vs_real: dict) -> None:
    for k, r in vs_real.get("rows", {}).items():
        print(f"vs real, first {vs_real['frames']} frames: {k:16s} PSNR {r['psnr_db']:.2f} dB thumb "
              f"{r['thumb_psnr_db']:.2f} SSIM {r['ssim']:.3f}" + (f"  margin {vs_real['margin_db'][k]:+.2f} dB"
                                                                  if k in vs_real["margin_db"] else ""))
    for line in vs_real.get("losses", []):
        print("NOTE:", line)


def main(args: Args) -> None:
    setup()
    import torch

    torch.set_num_threads(2)
    from common import lab_set_files, load_lab_set
    from framememory.training.lab import load_lab_model

    lab = load_lab_model(args.lab_dir)
    off_set = lab_set_files(args.lab_dir, "off")  # the no-memory LoRA when the lab set has one (the honest floor)
    off_lab = load_lab_set(args.lab_dir, off_set["files"], lab[1]) if off_set.get("note") == "no-memory LoRA" else lab
    print(f"off arm: {off_set.get('note') or 'memory LoRA, memory removed'}", flush=True)
    history, h_frames = history_clip(args.clip, args.history_seconds, 256, 128, 16.0)
    curves, wall, rss, frames_by_arm = run_arms(args, lab, off_lab, history)
    vs_real = versus_real(lab, args.clip, history, frames_by_arm, args) if args.shuffled_clip else {}
    print_versus_real(vs_real)
    first, second = args.arms[0], args.arms[1 % len(args.arms)]
    at = marks(curves[first], curves[second])
    print_table(at, ["t_s", "psnr_on", "psnr_off", "drift_on", "drift_off", "on_drifts_less"], digits=2)
    target = all(m["on_drifts_less"] for m in at) if len(args.arms) > 1 else None  # one arm: nothing to compare
    if target is not None:
        print(f"{first} drift below {second} at every 10 s mark: {'met' if target else 'MISSED'}")
    png = os.path.join(ROOT, "benchmarks", "results", f"{args.name}.png")
    plot(curves, png)
    print("written:", png, write_result(args.name, at, {
        "clip": os.path.basename(args.clip), "history_frames": h_frames, "seconds": args.seconds,
        "steps": args.steps, "seed": args.seed, "prompt": PROMPT, "wall_s": wall, "peak_rss_mb": rss,
        "arms": list(args.arms), "colour_strength": args.colour_strength,
        "target_met": target, "versus_real": vs_real,
        "curves": curves}))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
