"""Benchmark (issue 12): the memory modes side by side on the lab model, one comparison table.

Usage:
  .venv/bin/python benchmarks/memory_modes.py [--lab-dir lab_model/] [--rows off sliding fp ...] [--clips bikes.mp4 ...]
      [--seconds 3] [--drift-seconds 60] [--steps 12] [--out benchmarks/results/memory_modes_lab] [--quick]

Rows (``--rows`` takes the keys): ``off`` "no memory" (mode off; the lab set's no-memory LoRA when it has one, else
the Frame Preservation (FP) LoRA with memory removed, said in the name: ``common.lab_set_files``); ``sliding``
"sliding window" (mode sliding_window: the last 3 latent frames; its own LoRA when present, else FP's); ``fp`` "Frame
Preservation <rate>" (the trained lab encoder and its LoRA: 2x2x1 in the first lab recipe); ``fp_4x4x2`` (the trained
4x4x2 set when the lab has it, else ``MemoryEncoder.untrained`` LR only with the FP LoRA) / ``fp_2x2x2`` (LR only,
untrained); ``pack_forcing`` "PackForcing" and ``video_ssm`` "VideoSSM" (their own lab encoder / state file and LoRA,
``training.lab.MODE_FILES``); ``shuffled``: FP with another held-out clip's history (the shuffled-memory control);
``references``: no model, the reference predictors of scripts/scores.py (mean colour, last frame raw and through the
VAE, VAE ceiling), printed as four rows. Every row runs in its own subprocess (``--arm``), so its RSS is its own and a
crash loses only that row; partial results are written after every row.

Columns (units):

1. ``tok 20s / 60s / 120s``: memory tokens one DiT forward attends to after 20 / 60 / 120 s of history at the lab
   size (256x128, 16 fps: 4 latent frames per second, 8x16 = 128 DiT tokens per latent frame). Counted by functions
   of the resolved mode config (:func:`context_count`; PackForcing after its per-forward top-K selection, so it is
   bounded; ``carried`` in the JSON is before selection). ``state``: VideoSSM state floats (``L*H*dv*dk``, one per
   sample, constant). ``cost 20s``: token-equivalents at 20 s = tokens + state floats / D (the plot's x).
   Checks in the JSON: ``measured`` (off / sliding / VideoSSM: ``memory_inputs`` on a synthetic history of random
   latents of that length) and ``token_check`` (every generated segment's reported tokens vs the count function at
   that segment's history length; the drift run reaches 20 s). ``wan480``: the same functions for Wan 2.1 1.3B at
   832x480 (30x52 tokens per latent frame, D 1536, 30 blocks; VideoSSM 12 heads, dk 64) with the lab configs'
   rate / S / R / K: computed, not run.
2. ``step x``: median wall time of a segment's sampling phase (report ``segments[i]["sample_s"]``) over the quality
   runs, divided by the "no memory" row's.
3. ``PSNR dB`` / ``SSIM``: each held-out clip's first H frames as history (H from ``--history-seconds``, 13 + 16k
   frames, ``example_eval.history_length``; fewer when the clip leaves no room for the generated part, as the main
   job's carphone run), ``--seconds`` generated in 1 s segments (one shot, ``long_run.PROMPT``, seed 42, 12 Euler
   steps, cfg 1, scheduler simple: the main job's settings), generated frame j vs real frame H + j (torchmetrics,
   RGB in [0, 1]) averaged over the first 2 s, then over the clips; per clip and per segment in the JSON.
4. ``recall dB`` / ``recall RMSE``: the Stage I frame query at inference, with the lab set's Stage I LoRA
   (``framememory_lab_wan21_stage1_lora.safetensors``; "not trained" without it) and the FP encoder, for the rows
   FP, no memory and shuffled: the clip's first frames as history, no longer than ``--recall-seconds`` nor the Stage I
   window of the LoRA's recipe, through the inference code (``history_from_frames``, ``Memory.conds``); ONE latent
   frame sampled (own Euler loop over ComfyUI's sigmas, ``training.stages.dit_forward``) at RoPE time ``j - T_H``
   (``--recall-frame`` j), then it and the real latent frame j decoded in the history's stream (latent frames 0..j
   as one stream); PSNR of frame j's pixels, and the RMSE of the two latents in model space (no VAE at all).
5. ``drift <N>s`` / ``drift mean``: a ``--drift-seconds`` storyboard from bikes.mp4's first ``--history-seconds``
   (as ``long_run.py``): CIEDE2000 of a segment's mean CIELAB colour vs the history's at the last 10 s mark, and
   the mean over all segments (every 10 s mark in the JSON). ``--drift-seconds 0`` skips it.
6. ``RSS MB``: peak resident set size (``ru_maxrss``) of the row's subprocess, MiB (after each stage in the JSON:
   the drift run's frames come last).

Writes ``<out>.json`` (table rows, every arm's details, the settings) and ``<out>.png`` (x: context cost at 20 s in
token-equivalents, log scale; y: mean PSNR; one labelled point per row). ``--quick`` (the test): bikes.mp4 only,
13 history frames, 1 s, 2 steps, no drift, recall after 29 frames (1.8 s) of history.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Literal, Optional

import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/ (also under PYTHONSAFEPATH)
from common import ROOT, fetch_heldout, print_table, write_result  # noqa: E402
from long_run import PROMPT  # noqa: E402
from memory_modes_row import (CONTEXT_SECONDS, FPS, HEIGHT, HELDOUT, REFERENCE_NAMES, ROWS, SEGMENT, WIDTH,  # noqa: E402
                              arm_main, log)

# ---- the parent: rows in subprocesses, the table, the plot ------------------------------------------------------
PASS = ("lab_dir", "clips", "seconds", "history_seconds", "drift_seconds", "drift_clip", "steps", "seed",
        "recall_clips", "recall_seconds", "recall_frame", "threads")


def run_row(key: str, args, folder: str) -> dict:
    """Run one row's subprocess; its JSON (possibly partial), with the exit code and wall time."""
    path = os.path.join(folder, f"{key}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--arm", key, "--arm-json", path]
    for name in PASS:
        value = getattr(args, name)
        cmd += [f"--{name.replace('_', '-')}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    arm = {"key": key, **ROWS[key]}
    if os.path.exists(path):
        with open(path) as f:
            arm = json.load(f)
    arm.update(returncode=rc, wall_s=round(time.perf_counter() - t0, 1))
    if rc != 0:
        arm["error"] = f"the row's process exited with {rc}"
    return arm


def ok(d) -> bool:
    return isinstance(d, dict) and "error" not in d


def mean_of(items: dict, key: str):
    vals = [v[key] for v in items.values() if ok(v)]
    return round(statistics.fmean(vals), 3) if vals else None


def errors(arm: dict) -> str | None:
    """The row's process error and every failed column ("column: message"), or None."""
    found = [arm["error"]] if arm.get("error") else []
    for col in ("context", "drift"):
        if isinstance(arm.get(col), dict) and "error" in arm[col]:
            found.append(f"{col}: {arm[col]['error']}")
    for col in ("quality", "recall"):
        found += [f"{col} {clip}: {v['error']}" for clip, v in arm.get(col, {}).items()
                  if isinstance(v, dict) and "error" in v]
    return "; ".join(found) or None


def table_row(arm: dict, args) -> dict:
    """The printed row of one arm (None where a column failed or was skipped)."""
    ctx = arm.get("context") if ok(arm.get("context")) else None
    lab, wan = (ctx["lab"], ctx["wan480"]) if ctx else ({}, {})
    quality, recall = arm.get("quality", {}), arm.get("recall", {})
    samples = [t for q in quality.values() if ok(q) for t in q["sample_s"]]
    drift = arm.get("drift") if ok(arm.get("drift")) else None
    return {
        "key": arm["key"], "row": arm.get("name"), **{f"tok {s}s": lab[s]["tokens"] for s in lab},
        "state": lab["20"]["state_floats"] if lab else None, "cost 20s": lab["20"]["cost"] if lab else None,
        "wan480 tok 20/60/120s": "/".join(str(wan[str(s)]["tokens"]) for s in CONTEXT_SECONDS) if wan else None,
        "wan480 state": wan["20"]["state_floats"] if wan else None,
        "sample_s": statistics.median(samples) if samples else None, "step x": None,
        "PSNR dB": mean_of(quality, "psnr_db"), "SSIM": mean_of(quality, "ssim"),
        "thumb dB": mean_of(quality, "thumb_psnr_db"), "margin dB": None,
        "PSNR per clip": "/".join(f"{quality[c]['psnr_db']:.2f}" if ok(quality.get(c)) else "-" for c in args.clips),
        "recall dB": "not trained" if "not_trained" in recall else mean_of(recall, "psnr_db"),
        "recall RMSE": mean_of(recall, "latent_rmse"),
        "recall per clip": "/".join(f"{recall[c]['psnr_db']:.2f}" if ok(recall.get(c)) else "-"
                                    for c in args.recall_clips),
        f"drift {args.drift_seconds:g}s": drift["marks"][-1]["ciede2000"] if drift and drift["marks"] else None,
        "drift mean": drift["mean_ciede2000"] if drift else None,
        "RSS MB": arm.get("peak_rss_mb"), "error": errors(arm),
    }


def reference_rows(arm: dict, args) -> list[dict]:
    """The printed rows of the reference predictors (the "references" arm: one per :data:`REFERENCE_NAMES`)."""
    quality, out = arm.get("quality", {}), []
    for key, name in REFERENCE_NAMES.items():
        per = {c: q["references"][key] for c, q in quality.items() if ok(q) and key in q.get("references", {})}
        out.append({"key": key, "row": name, "PSNR dB": mean_of(per, "psnr_db"), "SSIM": mean_of(per, "ssim"),
                    "thumb dB": mean_of(per, "thumb_psnr_db"), "margin dB": None,
                    "PSNR per clip": "/".join(f"{per[c]['psnr_db']:.2f}" if c in per else "-" for c in args.clips),
                    "error": errors(arm)})
    return out


def add_margins(rows: list[dict], arms: dict, args) -> None:
    """``margin dB`` of every memory row: the mean over clips of its PSNR minus the best of no memory, mean colour
    and last frame on that clip (scripts/scores.py ``margin``)."""
    import scores

    refs = arms.get("references", {}).get("quality", {})
    for r in rows:
        arm = arms.get(r["key"])
        if r["key"] in ("off", "references") or arm is None or r["key"] in REFERENCE_NAMES:
            continue
        vals = []
        for clip in args.clips:
            q, off, ref = (a.get("quality", {}).get(clip) for a in (arm, arms.get("off", {}), {"quality": refs}))
            if not (ok(q) and ok(ref)):
                continue
            table = {"row": q, **({"off": off} if ok(off) else {}), **ref["references"]}
            vals.append(scores.margin(table, "row", off="off"))
        r["margin dB"] = round(statistics.fmean(vals), 3) if vals else None


def step_ratios(rows: list[dict]) -> None:
    """Fill ``step x``: each row's median sampling time per segment over the "no memory" row's."""
    base = next((r["sample_s"] for r in rows if r["key"] == "off"), None)
    for r in rows:
        if base and r.get("sample_s") is not None:
            r["step x"] = round(r["sample_s"] / base, 3)


def plot(rows: list[dict], path: str) -> None:
    """Context cost at 20 s (token-equivalents, log x; 0 drawn at 1) vs mean PSNR, one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    shown = [r for r in rows if r.get("cost 20s") is not None and r["PSNR dB"] is not None]
    for r, style in zip((r for r in rows if r["key"] in REFERENCE_NAMES and r["PSNR dB"] is not None),
                        (":", "-", "-.", "--")):  # one line style per reference row
        ax.axhline(r["PSNR dB"], linestyle=style, color="grey", linewidth=1)
        ax.annotate(r["row"], (0.55, r["PSNR dB"]), fontsize=6, color="grey", xytext=(0, 2), textcoords="offset points")
    for i, r in enumerate(shown):
        x = max(r["cost 20s"], 1.0)
        ax.scatter([x], [r["PSNR dB"]])
        ax.annotate(r["row"] + (" (0 tokens)" if r["cost 20s"] == 0 else ""), (x, r["PSNR dB"]), fontsize=7,
                    xytext=(5, (4, -10, 12)[i % 3]), textcoords="offset points")  # staggered: close points
    ax.set_xscale("log")
    ax.set_xlim(0.5, 30 * max([1.0] + [max(r["cost 20s"], 1.0) for r in shown]))  # room for the labels
    ax.set(xlabel="context at 20 s of history (memory tokens + state floats / D), lab size",
           ylabel="mean PSNR over the first 2 s vs real (dB)", title="memory modes on the lab model")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


COLUMNS = ["row", "tok 20s", "tok 60s", "tok 120s", "state", "cost 20s", "wan480 tok 20/60/120s", "wan480 state",
           "step x", "PSNR dB", "thumb dB", "SSIM", "margin dB", "PSNR per clip", "recall dB", "recall RMSE", "recall per clip"]


def save_result(stem: str, rows: list[dict], extra: dict) -> str:
    """``write_result`` to ``<stem>.json`` (a stem outside benchmarks/results/ goes by its absolute path)."""
    results = os.path.join(ROOT, "benchmarks", "results")
    rel = os.path.relpath(os.path.abspath(stem), results)
    return write_result(os.path.abspath(stem) if rel.startswith("..") else rel, rows, extra)


def settings(args) -> dict:
    return {k: getattr(args, k) for k in PASS} | {
        "rows": args.rows, "jobs": args.jobs, "prompt": PROMPT, "cfg": 1.0, "sampler": "euler", "scheduler": "simple",
        "size": [WIDTH, HEIGHT], "fps": FPS, "segment_latent_frames": SEGMENT, "quick": args.quick}


NOTES = [
    "Context counts are functions of each mode's resolved config (column 1 of the module docstring), checked against "
    "memory_inputs on synthetic histories (off / sliding / VideoSSM: 'measured') and against every generated "
    "segment's reported tokens ('token_check'; carried tokens, before PackForcing's selection).",
    "Every row runs in its own process under torch.inference_mode(), as ComfyUI's executor runs nodes.",
    "One prompt (long_run.PROMPT) for every row and clip, as long_run.py; the stand-in text encoder carries word "
    "identity only, and cfg 1 ignores the (empty) negative.",
    "wan480 columns are computed for Wan 2.1 1.3B at 832x480 with the lab configs' rate / S / R / K (VideoSSM 12 "
    "heads, dk 64): not run.",
    "The 4x4x2 / 2x2x2 Frame Preservation rows use an untrained LR-only encoder with the lab's Frame Preservation "
    "LoRA (trained with the lab encoder): the lab has no trained encoder at these rates.",
    "recall (issue 22): the Stage I LoRA of the lab set with the Frame Preservation encoder, a history no longer than "
    "the Stage I window, generated and real latent frame j decoded in the history's stream (latent frames 0..j as one "
    "stream), latent RMSE in model space beside PSNR; rows Frame Preservation, no memory and shuffled (another clip's "
    "history); 'not trained' when the lab set has no Stage I LoRA.",
    "Reference rows (scripts/scores.py): mean colour and last frame of the history, and through the lab VAE the last "
    "frame and the ceiling (the history's last frame and the real continuation encoded and decoded as one stream); "
    "margin dB: a row's PSNR minus the best of no memory, mean colour and last frame, per clip, averaged.",
]


def run_rows(args, stem: str) -> dict:
    """Every row in its own subprocess, ``args.jobs`` at a time; ``<stem>_partial.json`` after each one ends."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    arms = {}
    with tempfile.TemporaryDirectory(prefix="memory_modes_") as folder, ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_row, key, args, folder): key for key in args.rows}
        for i, key in enumerate(args.rows):
            log(f"row {i + 1}/{len(args.rows)}: {ROWS[key]['name']} ({key}) queued")
        for future in as_completed(futures):
            key = futures[future]
            arms[key] = future.result()
            log(f"row {key}: exit {arms[key]['returncode']} after {arms[key]['wall_s']} s ({len(arms)}/{len(futures)})")
            save_result(stem + "_partial", [], {"settings": settings(args), "arms": arms})
    return arms


@dataclasses.dataclass(frozen=True)
class Args:
    """The memory modes side by side on the lab model, one comparison table."""

    lab_dir: str = os.path.join(ROOT, "lab_model")
    """the lab model set (all 8 files)"""
    rows: tuple[Literal[tuple(ROWS)], ...] = tuple(ROWS)  # type: ignore[valid-type]
    """rows to run (keys)"""
    clips: tuple[str, ...] = HELDOUT
    """held-out clips for PSNR / SSIM"""
    seconds: float = 3.0
    """seconds generated per clip"""
    history_seconds: float = 2.8
    """history of the clips (2.8: 29 frames)"""
    drift_seconds: float = 60.0
    """drift run length; 0 skips it"""
    drift_clip: str = "bikes.mp4"
    """clip of the drift run"""
    steps: int = 12
    """Euler steps per segment (12, as the main job)"""
    seed: int = 42
    """sampling seed"""
    recall_clips: tuple[str, ...] = ("bikes.mp4", "tree.avi")
    """clips of the recall column"""
    recall_seconds: float = 12.85
    """recall history (12.85 s: 205 frames = 52 latent frames; a shorter clip gives what it has: bikes.mp4 157 frames)"""
    recall_frame: int = 4
    """latent frame j queried"""
    threads: int = 2
    """torch CPU threads per row"""
    jobs: int = 1
    """rows run at once (1 keeps the step-time column fair; more only for quick checks)"""
    out: str = os.path.join(ROOT, "benchmarks", "results", "memory_modes_lab")
    """result path stem: <out>.json and <out>.png"""
    quick: bool = False
    """test size: bikes.mp4, 1 s, 2 steps, no drift, short recall"""
    arm: Optional[Literal[tuple(ROWS)]] = None  # type: ignore[valid-type]
    """internal: run this row in this process (the parent's subprocess)"""
    arm_json: Optional[str] = None
    """internal: where the row's process writes its JSON"""


def parse_args(argv=None) -> Args:
    """The command line; ``--quick`` replaces the sizes with the test's (the first clip, 13 and 29 history frames)."""
    args = tyro.cli(Args, args=argv, description=__doc__)
    if args.quick:
        args = dataclasses.replace(args, clips=args.clips[:1], recall_clips=args.recall_clips[:1], seconds=1.0, steps=2,
                                   drift_seconds=0.0, history_seconds=0.85, recall_seconds=2.8)
    return args


def main() -> None:
    args = parse_args()
    if args.arm:
        return arm_main(args)
    stem = args.out
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    fetch_heldout([c for c in (*args.clips, *args.recall_clips, *HELDOUT) if not os.path.exists(c)])
    arms = run_rows(args, stem)
    rows = [table_row(arms[k], args) for k in args.rows if k != "references"]
    rows += reference_rows(arms["references"], args) if "references" in arms else []
    step_ratios(rows)
    add_margins(rows, arms, args)
    cols = COLUMNS + ([f"drift {args.drift_seconds:g}s", "drift mean"] if args.drift_seconds > 0 else []) + ["RSS MB"]
    print_table(rows, cols, digits=2)
    for r in rows:
        if r["error"]:
            print(f"{r['row']}: {r['error']}")
    plot(rows, stem + ".png")
    path = save_result(stem, rows, {"settings": settings(args), "notes": NOTES, "arms": arms})
    print("written:", stem + ".png", path)
    if os.path.exists(stem + "_partial.json"):
        os.remove(stem + "_partial.json")



if __name__ == "__main__":
    main()
