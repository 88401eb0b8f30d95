"""The one prepared GPU check (issue 25, point 3): what to run first on any lent CUDA machine.

Usage:
  bash benchmarks/gpu_check.sh                         # a CUDA machine: real size, 12 GiB cap, <= 8 min, no downloads
  python benchmarks/gpu_check.py --dry-run --out X     # CPU, tiny sizes: the same path without the CUDA calls (tests)

What it runs (``--size real``, the default on CUDA): Wan 2.1 1.3B at real size (ComfyUI's ``WanModel``, dim 1536, 30
blocks, random bf16 weights) with its real-size VAE (``WanVAE`` dim 96) and umt5-xxl text encoder (fp8-scaled as
Comfy-Org ships it; random weights and a small sentencepiece vocabulary trained here on the prompts, since the real
one cannot be downloaded), all loaded through ComfyUI's own loaders (``load_diffusion_model_state_dict`` = UNETLoader,
``comfy.sd.VAE`` = VAELoader, ``load_text_encoder_state_dicts`` = CLIPLoader type wan), memory encoders through
``MemoryEncoder.from_file`` (Load Memory Encoder). Then, at 832x480, 16 fps, for each memory mode (frame_preservation
4x4x2, pack_forcing, video_ssm, sliding_window, off) and 20 / 60 / 120 s of history, one 1 s storyboard segment
through ``models.storyboard.run_storyboard`` (what the Storyboard node calls): memory of the history, sample
(:data:`STEPS` Euler steps, cfg 5: the CFG batch of 2), decode, append, encode. The history is built as a storyboard
holds it (real-shaped latents and frames of synthetic content, LR-encoded through the VAE and encoded by the memory
encoder; VideoSSM's state absorbed beforehand), so a row measures the steady state of a long run.

The 12 GiB card (:data:`CARD_GIB`): ``torch.cuda.set_per_process_memory_fraction`` caps PyTorch at 12 GiB minus the
CUDA context, and ComfyUI's ``--reserve-vram`` (set before ``comfy.model_management`` is imported) is the card's
memory above 12 GiB plus ComfyUI's own default 0.4 GiB, so ComfyUI plans its loading for a 12 GiB card as on an
RTX 4070. PyTorch's native caching allocator (ComfyUI's ``main.py`` would pick cudaMallocAsync unless
``--disable-cuda-malloc``). An out-of-memory row is recorded (``error``) and the check goes on.

Recorded per row: peak allocated / reserved VRAM per phase (text encode, sample, decode, colour, encode), seconds per
sampling step (median of the steps after the first) and per segment, the memory tokens attended, what ComfyUI had
loaded, and beside them the fake-tensor estimate of the same row (benchmarks/vram_estimate.py's
``benchmarks/results/vram_estimate.json``: ComfyUI's plan per phase on a 12 GiB card, CUDA context included).
Also: fla's gated delta rule (Triton, ``fla.ops.gated_delta_rule.chunk_gated_delta_rule``, when fla-core is
installed) against the pack's torch recurrence (``memory.designs.video_ssm``) at VideoSSM's real sizes.

Time budget on an H100 / H200 (the check stops starting rows at ``--budget-s``, default 420 s): models ~60 s, fla
check ~10 s, histories ~60 s (120 s of history LR-encoded and encoded; VideoSSM absorbs 476 latent frames), rows
~5-15 s each (3 steps at up to ~2 s per step at 120 s of frame_preservation, decode ~2 s), 15 rows ~2-3 min.
Writes one JSON (``--out``, default benchmarks/results/gpu_check.json) and prints one table. ``--dry-run``: tiny
sizes on the CPU (DiT dim 128, 2 blocks; VAE dim 8; the pack's stand-in text encoder; 2 / 4 s of history at 128x64,
shown beside the estimate's 20 / 60 s rows): every step above except the CUDA calls (cap, VRAM counters, fla).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Literal, Optional

import tyro

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, machine, print_table  # noqa: E402
from framememory.headless.comfy_import import import_comfyui  # noqa: E402
from gpu_check_models import (PROMPTS, MeasuredClip, encoder_files, encoder_for, load_dit, load_text_encoder,  # noqa: E402
                              load_vae)

GIB = 2 ** 30
CARD_GIB = 12.0          # an RTX 4070-class card
TARGET_GIB = 11.5        # issue 13 / 25: the peak a 12 GiB card must stay under
COMFY_DEFAULT_RESERVE_GIB = 0.4  # comfy.model_management.EXTRA_RESERVED_VRAM on Linux
STEPS = 3                # Euler steps per row: the first loads and warms up, the others time a step
MODES = ("frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off")
ESTIMATE_MODEL = "wan21_1.3b_bf16"  # its rows in benchmarks/results/vram_estimate.json
SIZES = {
    "real": dict(width=832, height=480, fps=16.0, latent_frames=4, histories=(20, 60, 120), steps=STEPS,
                 dtype="bfloat16", dit=dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30), vae_dim=96,
                 hr_channels=(64, 128, 256, 512), attn_heads=8, ssm_heads=12, ssm_key_dim=64, text="umt5-xxl"),
    "tiny": dict(width=128, height=64, fps=16.0, latent_frames=4, histories=(2, 4), steps=2,
                 dtype="float32", dit=dict(dim=128, ffn_dim=256, num_heads=1, num_layers=2), vae_dim=8,
                 hr_channels=(16, 32, 64, 64), attn_heads=4, ssm_heads=1, ssm_key_dim=16, text="stand-in"),
}
FLA_SIZES = {"real": dict(heads=12, dk=64, dv=128, tokens=(1560, 6240)),  # one and four 480p latent frames
             "tiny": dict(heads=2, dk=16, dv=32, tokens=(40,))}


# ---------------------------------------------------------------------------------------------- device and ComfyUI
def setup_device(dry: bool, card_gib: float, reserve_gib: float) -> dict:
    """Import ComfyUI (``import_comfyui``); on CUDA cap PyTorch at a ``card_gib`` card and set ComfyUI's ``--reserve-vram``
    to the memory above it plus ``reserve_gib``, before ``comfy.model_management`` is imported. Returns the device
    description. Raises RuntimeError when a real run finds no CUDA device."""
    import torch

    import_comfyui(cpu=dry)
    import comfy.cli_args

    if dry:
        return {"device": "cpu", "dry_run": True}
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run with --dry-run on a machine without a GPU")
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()  # the CUDA context (and anything else on the card)
    cap = card_gib * GIB - context
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
    comfy.cli_args.args.reserve_vram = (total - card_gib * GIB) / GIB + reserve_gib
    return {"device": torch.cuda.get_device_name(0), "total_gib": round(total / GIB, 2),
            "cuda_context_gib": round(context / GIB, 3), "cap_gib": round(cap / GIB, 3), "card_gib": card_gib,
            "comfy_reserve_vram_gib": round(comfy.cli_args.args.reserve_vram, 3), "dry_run": False}


def vram_now() -> dict:
    """PyTorch's current allocated / reserved memory in GiB (empty on the CPU)."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {"alloc_gib": round(torch.cuda.memory_allocated() / GIB, 3),
            "reserved_gib": round(torch.cuda.memory_reserved() / GIB, 3)}


def loaded_models() -> str:
    """What ComfyUI holds on its device now: ``Class loaded/total GiB`` per model."""
    import comfy.model_management as mm

    return ", ".join(f"{type(getattr(m.model, 'model', m.model)).__name__} "
                     f"{m.model_loaded_memory() / GIB:.2f}/{m.model_memory() / GIB:.2f}"
                     for m in mm.current_loaded_models)


# ---------------------------------------------------------------------------------------------- history
def build_history(model, vae, encoder, size: dict, seconds: int, stats: dict):
    """``seconds`` of history as a storyboard holds it: one continuous stream of segments (13 frames, then 16; 4
    latent frames each) with real-shaped latents (seeded normal) and frames (a seeded random image shifted 4 px per
    frame), appended and encoded one segment at a time (``encode_pending_experts``: the LR clip through the VAE,
    continuing its stream, then the memory encoder). Timed as phase ``build_history``. Returns the HistoryBuffer."""
    import torch

    from framememory.memory.history import HistoryBuffer
    from framememory.memory.storyboard import Shot, plan_segments
    from framememory.models.experts import encode_pending_experts
    from framememory.models.telemetry import phase

    w, h, t = size["width"], size["height"], size["latent_frames"]
    g = torch.Generator().manual_seed(3)
    base = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    history = HistoryBuffer()
    with phase(stats, "build_history"):
        for plan in plan_segments([Shot(0, "history", 0.0, float(seconds))], size["fps"], t, 4):
            latent = torch.randn(16, plan.latent_frames, h // 8, w // 8, generator=g)
            frames = torch.stack([base.roll(4 * (plan.start_frame + f), dims=1) for f in range(plan.frames)])
            history.append(latent, frames)
            encode_pending_experts([model], vae, encoder, history)
    return history


def history_prefix(history, size: dict, seconds: int):
    """The first ``seconds`` of ``history`` (its segments shared; its LR streams, as they stand at the end of the whole
    history, are of the same shape as at any point, which is all a measurement needs)."""
    from framememory.memory.history import HistoryBuffer
    from framememory.memory.storyboard import Shot, plan_segments

    n = len(plan_segments([Shot(0, "history", 0.0, float(seconds))], size["fps"], size["latent_frames"], 4))
    return HistoryBuffer(history.segments[:n], history.lr_streams)


def absorb(model, encoder, prefix, carried: dict, stats: dict) -> dict:
    """VideoSSM: absorb the frames of ``prefix`` that left its window into the state, continuing ``carried`` (the
    state of a shorter prefix of the same history), as the pack does at a segment (``memory_modes.ssm_inputs``);
    timed as phase ``absorb_history``. Returns the states to carry on."""
    from framememory.models.memory_modes import memory_inputs
    from framememory.models.telemetry import phase

    prefix.states = dict(carried)
    with phase(stats, "absorb_history"):
        memory_inputs(model, encoder, prefix, 0, "video_ssm")
    return dict(prefix.states)


# ---------------------------------------------------------------------------------------------- one row
def step_seconds(times: list[float]) -> tuple[float | None, float | None]:
    """``(median seconds per step after the first, first step)`` from the progress callback's timestamps (its
    "sample" reports: one before the first step, one after each)."""
    steps = [b - a for a, b in zip(times, times[1:])]
    if not steps:
        return None, None
    return round(statistics.median(steps[1:] or steps), 3), round(steps[0], 3)


def phase_fields(record: dict, context_gib: float) -> dict:
    """Seconds and VRAM peaks (GiB; ``*_card_gib``: reserved + the CUDA context, what the card holds) per phase of a
    segment record (``models.telemetry.phase`` keys)."""
    out = {}
    for ph in ("load_models", "text", "build_history", "absorb_history", "sample", "decode", "colour", "encode"):
        if f"{ph}_s" in record:
            out[f"{ph}_s"] = record[f"{ph}_s"]
        if f"{ph}_peak_reserved_mb" in record:
            out[f"{ph}_alloc_gib"] = round(record[f"{ph}_peak_alloc_mb"] / 1024, 3)
            out[f"{ph}_reserved_gib"] = round(record[f"{ph}_peak_reserved_mb"] / 1024, 3)
            out[f"{ph}_card_gib"] = round(record[f"{ph}_peak_reserved_mb"] / 1024 + context_gib, 3)
    return out


def run_row(ctx: dict, mode: str, seconds: int, start_history) -> dict:
    """One 1 s storyboard segment after ``start_history`` in ``mode`` through ``run_storyboard``. Returns the row
    (an ``error`` field instead of measurements when it ran out of memory or was refused)."""
    import torch

    import comfy.model_management as mm
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.memory_value import Memory
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    size, encoder = ctx["size"], encoder_for(ctx["encoders"], mode)
    start = Memory(start_history, encoder, size["fps"], size["width"], size["height"], mode)
    text, times = {}, []
    row = {"mode": mode, "history_s": seconds}
    try:
        _, _, report = run_storyboard(
            ctx["model"], ctx["vae"], MeasuredClip(ctx["clip"], text), encoder, ctx["negative"],
            parse_storyboard(f"1.0 | {PROMPTS[0]}"), SamplerSettings(size["steps"], 5.0, "euler", "simple", 42),
            size["width"], size["height"], size["fps"], size["latent_frames"], start=start, mode=mode,
            progress=lambda p: times.append(time.perf_counter()) if p.phase == "sample" else None)
    except (torch.OutOfMemoryError, mm.OOM_EXCEPTION, ValueError) as e:
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        row.update(vram_now())
        return row
    finally:
        row["loaded"] = loaded_models()
        gc.collect()
        mm.soft_empty_cache()
    seg = report["segments"][0]
    s_step, first = step_seconds(times)
    row.update(M=seg["memory_tokens"], s_step=s_step, first_step_s=first, s_segment=seg["seconds"],
               **phase_fields({**text, **seg}, ctx["device"].get("cuda_context_gib", 0.0)))
    return row


# ---------------------------------------------------------------------------------------------- fla vs torch
def delta_inputs(heads: int, dk: int, dv: int, n: int, device: str, seed: int = 5):
    """Seeded inputs of VideoSSM's absorb at its sizes: L2-normalised keys ``[1, H, N, dk]``, values ``[1, H, N, dv]``,
    decay in (0.9, 1) and injection around sigmoid(-2) (the state module's initial gates), a random initial state."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(1, heads, n, dk, generator=g), dim=-1)
    v = torch.randn(1, heads, n, dv, generator=g)
    alpha = 0.9 + 0.1 * torch.rand(1, heads, n, generator=g)
    beta = torch.sigmoid(-2 + torch.randn(1, heads, n, generator=g))
    s0 = torch.randn(1, heads, dv, dk, generator=g) * 0.1
    return tuple(t.to(device) for t in (k, v, alpha, beta, s0))


def timed(fn, cuda: bool) -> tuple[float, object]:
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def fla_check(size_name: str, dry: bool) -> dict:
    """The final state of the gated delta rule by fla's Triton kernel (``memory.designs.video_ssm._fla_final_state``, CUDA,
    fla-core installed) against the pack's torch recurrence (``_chunked_final_state``, the chunked WY form) at
    VideoSSM's sizes, and the torch recurrence against the literal per-token loop (float64, first 256 tokens). Max
    absolute and relative differences, seconds per call (fla's first call compiles: reported apart)."""
    import torch

    from framememory.memory.designs import video_ssm as sm

    dims, cuda = FLA_SIZES[size_name], not dry
    device = "cuda" if cuda else "cpu"
    fla = sm._fla_chunk() if cuda else None
    out = {"fla_installed": fla is not None, "rows": [],
           "note": None if fla is not None else ("no CUDA (dry run)" if dry else "fla-core not importable")}
    for n in dims["tokens"]:
        k, v, alpha, beta, s0 = delta_inputs(dims["heads"], dims["dk"], dims["dv"], n, device)
        t_torch, ref = timed(lambda: sm._chunked_final_state(k, v, alpha, beta, s0, 64), cuda)
        m = min(n, 256)
        loop = sm.gated_delta_rule_reference(*(t[:, :, :m].double().cpu() for t in (k, v)),
                                             alpha[:, :, :m].double().cpu(), beta[:, :, :m].double().cpu(),
                                             s0.double().cpu())
        short = sm._chunked_final_state(k[:, :, :m], v[:, :, :m], alpha[:, :, :m], beta[:, :, :m], s0, 64)
        row = {"tokens": n, "heads": dims["heads"], "dk": dims["dk"], "dv": dims["dv"], "torch_s": round(t_torch, 5),
               "torch_vs_loop_max_abs": float((short.double().cpu() - loop).abs().max())}
        if fla is not None:
            compile_s, _ = timed(lambda: sm._fla_final_state(k, v, alpha, beta, s0, 64), cuda)
            t_fla, got = timed(lambda: sm._fla_final_state(k, v, alpha, beta, s0, 64), cuda)
            diff = (got.float() - ref.float()).abs().max()
            row.update(fla_s=round(t_fla, 5), fla_first_call_s=round(compile_s, 3), fla_vs_torch_max_abs=float(diff),
                       fla_vs_torch_rel=float(diff / ref.abs().max()), agree=bool(diff / ref.abs().max() < 1e-2))
        out["rows"].append(row)
    return out


# ---------------------------------------------------------------------------------------------- the estimate
def estimate_rows(path: str) -> dict:
    """The fake-tensor plan of each row (benchmarks/vram_estimate.py's JSON, model :data:`ESTIMATE_MODEL`), keyed
    ``(mode, history_s)``: frame_preservation from ``rows`` at 4x4x2, pack_forcing / video_ssm from ``mode_rows``, off
    from the 0 s row (no memory tokens); sliding_window has no row. Fields: per-phase GiB on the card (CUDA context
    included), peak, peak + margin, fits, what ComfyUI keeps loaded while sampling."""
    with open(path) as f:
        data = json.load(f)
    keep = ("text_gib", "absorb_gib", "sample_gib", "decode_gib", "encode_gib", "peak_gib", "peak_plus_margin_gib",
            "fits", "sample_loaded", "M", "reserve_vram_needed_gib", "why_not")
    out = {}
    for r in data.get("rows", []):
        if r["model"] == ESTIMATE_MODEL and r["rate"] in ("4x4x2", "-"):
            mode = "frame_preservation" if r["history_s"] else "off"
            out[(mode, r["history_s"])] = {k: r[k] for k in keep if k in r}
    for r in data.get("mode_rows", []):
        if r["model"] == ESTIMATE_MODEL:
            out[(r["mode"], r["history_s"])] = {k: r[k] for k in keep if k in r}
    return {"source": os.path.relpath(path, ROOT), "date": data.get("machine", {}).get("date"), "rows": out}


def estimate_for(est: dict, mode: str, seconds: int) -> dict:
    row = est["rows"].get((mode, seconds)) or (est["rows"].get(("off", 0)) if mode == "off" else None)
    return {f"est_{k}": v for k, v in (row or {}).items()}


# ---------------------------------------------------------------------------------------------- the check
def run_rows(ctx: dict, history, est: dict, deadline: float, on_row, log=print) -> list[dict]:
    """Every mode at every history length (modes in :data:`MODES` order, histories ascending: VideoSSM's absorbed
    state carries from one length to the next); rows not started before ``deadline`` are marked skipped.
    ``on_row(rows)`` after each row (the JSON is written then)."""
    size, rows, carried = ctx["size"], [], {}
    context = ctx["device"].get("cuda_context_gib", 0.0)
    est_seconds = dict(zip(size["histories"], SIZES["real"]["histories"]))  # a tiny row stands beside a real one
    for mode in MODES:
        for seconds in size["histories"]:
            if time.perf_counter() > deadline:
                rows.append({"mode": mode, "history_s": seconds, "error": "skipped: time budget (--budget-s)"})
                continue
            prefix, pre = history_prefix(history, size, seconds), {}
            if mode == "video_ssm":
                carried = absorb(ctx["model"], ctx["encoders"]["video_ssm"], prefix, carried, pre)
            row = run_row(ctx, mode, seconds, prefix)
            row.update(phase_fields(pre, context))
            peaks = [v for k, v in row.items() if k.endswith("_card_gib") and k != "absorb_history_card_gib"]
            if peaks:
                row["peak_card_gib"] = max(peaks)
                row["fits"] = "error" not in row and row["peak_card_gib"] <= TARGET_GIB
            row.update(estimate_for(est, mode, est_seconds[seconds]), est_history_s=est_seconds[seconds])
            rows.append(row)
            on_row(rows)
            log(f"{mode} {seconds} s: " + ", ".join(f"{k} {row[k]}" for k in ("M", "s_step", "s_segment",
                                                                               "peak_card_gib", "error") if k in row))
    return rows


def cell(row: dict, measured: str, estimated: str) -> str:
    a, b = row.get(measured), row.get(estimated)
    return f"{'-' if a is None else a}/{'-' if b is None else b}"


def table(rows: list[dict]) -> list[dict]:
    """The printed table: per row memory tokens, seconds per step and segment, and per phase the card's peak GiB as
    measured / as the fake-tensor estimate planned it."""
    out = []
    for r in rows:
        out.append({"mode": r["mode"], "hist_s": r["history_s"], "M": r.get("M", "-"), "s/step": r.get("s_step", "-"),
                     "s/seg": r.get("s_segment", "-"), "text": cell(r, "text_card_gib", "est_text_gib"),
                     "sample": cell(r, "sample_card_gib", "est_sample_gib"),
                     "decode": cell(r, "decode_card_gib", "est_decode_gib"),
                     "encode": cell(r, "encode_card_gib", "est_encode_gib"),
                     "peak": cell(r, "peak_card_gib", "est_peak_gib"), "fits": r.get("fits", "-"),
                     "error": r.get("error", "")[:60]})
    return out


@dataclasses.dataclass(frozen=True)
class Args:
    """The one prepared GPU check: what to run first on any lent CUDA machine."""

    dry_run: bool = False
    """CPU, tiny sizes, no CUDA calls (what the tests run)"""
    size: Optional[Literal["real", "tiny"]] = None
    """model sizes (:data:`SIZES`; default: real on CUDA, tiny with --dry-run)"""
    steps: Optional[int] = None
    """sampling steps per row (default :data:`STEPS`; tiny 2)"""
    card_gib: float = CARD_GIB
    """the card to emulate (GiB)"""
    reserve_gib: float = COMFY_DEFAULT_RESERVE_GIB
    """ComfyUI's --reserve-vram on that card (its default 0.4)"""
    budget_s: float = 400.0
    """no row starts after this many seconds"""
    estimate: str = os.path.join(ROOT, "benchmarks", "results", "vram_estimate.json")
    """the fake-tensor estimate shown beside the measurements"""
    out: Optional[str] = None
    """the JSON (default benchmarks/results/gpu_check.json; dry run: a temporary file)"""


def parse_args(argv=None) -> Args:
    return tyro.cli(Args, args=argv, description=__doc__.split("\n")[0])


def build(size: dict, device: str, folder: str, stats: dict) -> dict:
    """Models through ComfyUI's loaders, the negative prompt encoded, the longest history built."""
    from framememory.models.telemetry import phase

    with phase(stats, "load_models"):
        ctx = {"size": size, "model": load_dit(size, device), "vae": load_vae(size, device),
               "clip": load_text_encoder(size, device), "encoders": encoder_files(size, folder)}
    clip = ctx["clip"]
    ctx["negative"] = MeasuredClip(clip, stats).encode_from_tokens_scheduled(clip.tokenize(PROMPTS[1]))
    ctx["history"] = build_history(ctx["model"], ctx["vae"], ctx["encoders"]["fig2"], size, max(size["histories"]),
                                   stats)
    return ctx


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    size_name = args.size or ("tiny" if args.dry_run else "real")
    size = {**SIZES[size_name], "steps": args.steps or SIZES[size_name]["steps"]}
    device = setup_device(args.dry_run, args.card_gib, args.reserve_gib)
    print(f"gpu_check: {device}", flush=True)
    result = {"benchmark": "gpu_check", "machine": machine(), "device": device, "size": size_name,
              "command": " ".join(sys.argv), "settings": {k: v for k, v in size.items() if k != "dit"} | size["dit"]}
    result["fla"] = fla_check(size_name, args.dry_run)
    print(f"gpu_check: fla {json.dumps(result['fla'])}", flush=True)
    out = args.out or (os.path.join(tempfile.gettempdir(), "gpu_check_dry_run.json") if args.dry_run else
                       os.path.join(ROOT, "benchmarks", "results", "gpu_check.json"))
    est = estimate_rows(args.estimate)
    result["estimate"] = {k: est[k] for k in ("source", "date")}
    setup: dict = {}

    def write(rows: list[dict]) -> None:
        result.update(rows=rows, seconds=round(time.perf_counter() - t0, 1),
                      setup=phase_fields(setup, device.get("cuda_context_gib", 0.0)))
        write_json(out, result)

    with tempfile.TemporaryDirectory() as folder:
        ctx = build(size, "cpu" if args.dry_run else "cuda", folder, setup)
        ctx["device"] = device
        print(f"gpu_check: built in {time.perf_counter() - t0:.1f} s {json.dumps(setup)}", flush=True)
        write(run_rows(ctx, ctx.pop("history"), est, t0 + args.budget_s, write))
    print_table(table(result["rows"]), ["mode", "hist_s", "M", "s/step", "s/seg", "text", "sample", "decode", "encode",
                                        "peak", "fits", "error"])
    print("GiB on the card: measured (PyTorch reserved + CUDA context) / estimated (vram_estimate.json); "
          f"fits: measured peak <= {TARGET_GIB} GiB")
    print(f"gpu_check: wrote {out} after {result['seconds']} s", flush=True)
    return result


def write_json(path: str, result: dict) -> None:
    """Write ``result`` to ``path`` atomically (memory.io.write_file_atomic): a stop mid-write keeps the last one."""
    from framememory.memory.io import write_file_atomic

    write_file_atomic(path, json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
