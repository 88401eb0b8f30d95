"""One row of benchmarks/memory_modes.py in its own process (``memory_modes.py --arm KEY``): the row's lab model set
(:data:`ROWS`) and its columns, context (1), the next segments against the real continuation (2-3), recall of an
early frame (4), colour drift (5), written to ``--arm-json`` after every stage. The columns and their units are
described in memory_modes.py's docstring."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/ (also under PYTHONSAFEPATH)
from common import ROOT, lab_set_files, load_lab_set, vae_pass  # noqa: E402
from long_run import PROMPT, history_clip, segment_metrics, setup  # noqa: E402
from long_run import run_arm as storyboard_arm  # noqa: E402

FP = "frame_preservation"
ROWS = {  # key -> name, memory mode, lab set (training.lab.load_lab_model mode), encoder
    "off": {"name": "no memory", "mode": "off", "set": FP, "encoder": "lab"},
    "sliding": {"name": "sliding window", "mode": "sliding_window", "set": FP, "encoder": "lab"},
    "fp": {"name": "Frame Preservation (lab encoder)", "mode": FP, "set": FP, "encoder": "lab"},
    "fp_4x4x2": {"name": "Frame Preservation 4x4x2 (LR only, untrained)", "mode": FP, "set": FP,
                 "encoder": "untrained:4x4x2"},
    "fp_2x2x2": {"name": "Frame Preservation 2x2x2 (LR only, untrained)", "mode": FP, "set": FP,
                 "encoder": "untrained:2x2x2"},
    "pack_forcing": {"name": "PackForcing", "mode": "pack_forcing", "set": "pack_forcing", "encoder": "lab"},
    "video_ssm": {"name": "VideoSSM", "mode": "video_ssm", "set": "video_ssm", "encoder": "lab"},
    "shuffled": {"name": "shuffled memory (Frame Preservation, another clip's history)", "mode": FP, "set": FP,
                 "encoder": "lab"},
    "references": {"name": "reference rows", "mode": "off", "set": FP, "encoder": "lab"},
}
REFERENCE_NAMES = {"mean_colour": "mean colour of the history (reference)",
                   "last_frame": "last history frame repeated (reference)",
                   "last_frame_vae": "last history frame through the VAE (reference)",
                   "vae_ceiling": "VAE ceiling: the real frames through the VAE (reference)"}
WIDTH, HEIGHT, FPS, SEGMENT = 256, 128, 16.0, 4  # the lab size; 4 latent frames (1 s) per segment
LATENT_PER_S = FPS / 4  # Wan: 4 video frames per latent frame
CONTEXT_SECONDS = (20, 60, 120)
WAN480 = {"ht": 30, "wt": 52, "dim": 1536, "blocks": 30, "ssm_heads": 12, "ssm_key_dim": 64}  # Wan 2.1 1.3B, 832x480
HELDOUT = ("bikes.mp4", "tree.avi", "carphone_pristine.mp4")  # training.reproduce.HELDOUT_CLIPS with >= 64 frames
MEDIA = os.path.join(ROOT, ".cache", "media")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[memory_modes +{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)


def clip_path(name: str) -> str:
    return name if os.path.exists(name) else os.path.join(MEDIA, name)


def latent_frames(seconds: float) -> int:
    return int(round(seconds * LATENT_PER_S))


# ---- column 1: context ------------------------------------------------------------------------------------------
def context_count(mode: str, cfg, frames: int, ht: int, wt: int, dim: int) -> dict:
    """Memory per DiT forward after ``frames`` latent frames of history on an ``ht x wt`` token grid, from the
    resolved mode config: ``tokens`` attended (PackForcing: after top-K), ``carried`` (in the conds, before
    selection), ``state_floats`` (VideoSSM), ``cost`` = tokens + state floats / ``dim`` (token-equivalents)."""
    from framememory.memory.grid import memory_grid
    from framememory.memory.designs.context import partition_frames

    per_frame = ht * wt
    rt = cfg.patch_size[0] * cfg.rate[2]
    _, hm, wm = memory_grid((rt, ht * cfg.patch_size[1], wt * cfg.patch_size[2]), cfg)
    tokens = carried = state = 0
    if mode == "sliding_window":
        tokens = carried = min(frames, cfg.overlap_latent_frames) * per_frame
    elif mode == FP:
        tokens = carried = frames // rt * hm * wm + min(frames, cfg.overlap_latent_frames) * per_frame
    elif mode == "pack_forcing":
        s, r = partition_frames(frames, cfg.sink_latent_frames, cfg.overlap_latent_frames)
        blocks = max(0, (frames - r) // rt - -(-s // rt))  # memory steps wholly between sink and recent window
        kept = blocks if cfg.top_k <= 0 else min(blocks, cfg.top_k)
        carried, tokens = ((s + r) * per_frame + n * hm * wm for n in (blocks, kept))
    elif mode == "video_ssm":
        s, r = partition_frames(frames, cfg.sink_latent_frames, cfg.overlap_latent_frames)
        tokens = carried = (s + r) * per_frame
        if cfg.ssm_heads:
            state = cfg.dit_blocks * cfg.ssm_heads * (dim // cfg.ssm_heads) * cfg.ssm_key_dim
    return {"tokens": tokens, "carried": carried, "state_floats": state, "cost": round(tokens + state / dim, 2)}


def wan480_config(cfg, mode: str):
    """The lab config at Wan 2.1 1.3B's width (and, for VideoSSM, its 30 blocks, 12 heads, dk 64)."""
    if mode == "video_ssm" and cfg.ssm_heads:
        return dataclasses.replace(cfg, dim=WAN480["dim"], dit_blocks=WAN480["blocks"],
                                   ssm_heads=WAN480["ssm_heads"], ssm_key_dim=WAN480["ssm_key_dim"])
    return dataclasses.replace(cfg, dim=WAN480["dim"])


def synthetic_counts(model, encoder, mode: str, seconds=CONTEXT_SECONDS) -> dict:
    """Measured with the inference code (``memory_inputs``) on a synthetic history of random latents, for the modes
    that need no encoded spans (off, sliding_window, video_ssm): ``{"<seconds>": {"tokens", "state_floats"}}``."""
    import torch

    from framememory.memory.history import HistoryBuffer
    from framememory.models.conds import STATE_KEY
    from framememory.models.memory_modes import memory_inputs

    g, history, out = torch.Generator().manual_seed(0), HistoryBuffer(), {}
    for s in sorted(seconds):
        while history.latent_frames < latent_frames(s):
            first = not history.segments
            history.append(torch.randn(16, SEGMENT, HEIGHT // 8, WIDTH // 8, generator=g),
                           torch.zeros(13 if first else 16, 1, 1, 3, dtype=torch.uint8), stream_start=first)
        inp = memory_inputs(model, encoder, history, 0, mode)
        state = inp.extra.get(STATE_KEY)
        out[str(s)] = {"tokens": inp.count, "state_floats": 0 if state is None else int(state.numel())}
    return out


def context_column(lab, mode: str) -> dict:
    """Column 1 for one row: counts at the lab size and at Wan 2.1 1.3B 480p, plus the measured ones."""
    from framememory.models.memory_modes import mode_config

    model, _, encoder = lab
    cfg = mode_config(encoder, model, mode)
    dim = model.model.diffusion_model.dim
    ht, wt = HEIGHT // 8 // cfg.patch_size[1], WIDTH // 8 // cfg.patch_size[2]
    wan = wan480_config(cfg, mode)
    out = {"config": {k: v for k, v in dataclasses.asdict(cfg).items() if k in (
               "rate", "overlap_latent_frames", "sink_latent_frames", "top_k", "ssm_heads", "ssm_key_dim",
               "dit_blocks", "use_hr", "use_lr", "memory_type")},
           "lab": {str(s): context_count(mode, cfg, latent_frames(s), ht, wt, dim) for s in CONTEXT_SECONDS},
           "wan480": {str(s): context_count(mode, wan, latent_frames(s), WAN480["ht"], WAN480["wt"], WAN480["dim"])
                      for s in CONTEXT_SECONDS}}
    net = encoder.parts[0].state_network(model) if mode == "video_ssm" else None
    if net is not None:
        out["state_numel"] = net.state_numel()  # StateMemory's own count, vs the function's
    if mode in ("off", "sliding_window", "video_ssm"):
        out["measured"] = synthetic_counts(model, encoder, mode)
    return out


def token_check(segments: list[dict], mode: str, cfg, dim: int) -> dict:
    """Every segment's reported memory tokens (before PackForcing's selection) vs :func:`context_count`'s
    ``carried`` at its history length (causal stream: 1 + (F - 1) / 4 latent frames for F frames)."""
    ht, wt = HEIGHT // 8 // cfg.patch_size[1], WIDTH // 8 // cfg.patch_size[2]
    pairs = []
    for s in segments:
        t = 1 + (s["history_frames_total"] - 1) // 4
        pairs.append((t, s["memory_tokens"], context_count(mode, cfg, t, ht, wt, dim)["carried"]))
    return {"checked": len(pairs), "mismatches": [p for p in pairs if p[1] != p[2]],
            "at_20s": next(({"latent_frames": t, "reported": a, "counted": b} for t, a, b in pairs
                            if t == latent_frames(20)), None)}


# ---- columns 2-3: next segments vs the real continuation --------------------------------------------------------
def generated_frames(seconds: float) -> int:
    from framememory.memory.storyboard import Shot, plan_segments

    return sum(p.frames for p in plan_segments([Shot(0, PROMPT, 0.0, seconds)], FPS, SEGMENT, 4, continues=True))


def quality_clip(path: str, history_seconds: float, generated: int):
    """uint8 frames ``[F, H, W, 3]`` of the clip (history + continuation) and H: the main job's history length
    (``example_eval.history_length``), shortened when the clip leaves fewer than ``generated`` frames after it."""
    from example_eval import history_length, read_clip

    from framememory.memory.storyboard import segment_frames

    frames = read_clip(path, WIDTH, HEIGHT, FPS, math.floor(history_seconds * FPS + 1e-6) + generated)
    room = len(frames) - generated
    available = room if room >= segment_frames(SEGMENT) else len(frames)
    return frames, history_length(history_seconds, FPS, SEGMENT, available)


def shuffle_partner(clip: str) -> str:
    """The clip whose first frames are the shuffled control's history for ``clip``: the next one of HELDOUT."""
    names = [os.path.basename(c) for c in HELDOUT]
    return HELDOUT[(names.index(os.path.basename(clip)) + 1) % len(HELDOUT)] if os.path.basename(clip) in names \
        else HELDOUT[0]


def quality_run(lab, mode: str, clip: str, args, shuffled: bool = False) -> dict:
    """One clip: continue its history for ``args.seconds``; PSNR / SSIM (frames and 8x thumbnails) against the real
    continuation. ``shuffled``: the history is another held-out clip's first frames (:func:`shuffle_partner`, the same
    length), the continuation still this clip's: the shuffled-memory control."""
    import torch
    from example_eval import arm_metrics

    from framememory.memory.frames import to_uint8
    from framememory.models.memory_modes import mode_config

    frames, h = quality_clip(clip_path(clip), args.history_seconds, generated_frames(args.seconds))
    history = frames[:h]
    if shuffled:
        other, _ = quality_clip(clip_path(shuffle_partner(clip)), args.history_seconds, 0)
        if len(other) < h:
            raise ValueError(f"the shuffled control's clip {shuffle_partner(clip)} has {len(other)} frames, {h} needed")
        history = other[:h]
    out, report = storyboard_arm(lab, torch.from_numpy(history).float() / 255.0, mode, args.seconds, args.seed,
                                 args.steps)
    pred, real = to_uint8(out).numpy(), frames[h:]
    f = min(len(pred), len(real))
    if f == 0:
        raise ValueError(f"{clip}: no real frame after the {h} history frames")
    segs, f2 = [s["frames"] for s in report["segments"]], min(f, int(2 * FPS))
    first, whole = arm_metrics(pred[:f2], real[:f2], segs), arm_metrics(pred[:f], real[:f], segs)
    model, _, encoder = lab
    return {"clip": clip, "history_frames": h, "compared_frames": f, "psnr_db": first["psnr_db"],
            "ssim": first["ssim"], "thumb_psnr_db": first["thumb_psnr_db"], "psnr_db_all": whole["psnr_db"],
            "ssim_all": whole["ssim"], **({"history_from": shuffle_partner(clip)} if shuffled else {}),
            "per_segment_psnr_db": whole["per_segment_psnr_db"],
            "sample_s": [s["sample_s"] for s in report["segments"]],
            "memory_tokens": [s["memory_tokens"] for s in report["segments"]],
            "token_check": token_check(report["segments"], mode, mode_config(encoder, model, mode),
                                       model.model.diffusion_model.dim)}


def reference_run(lab, clip: str, args) -> dict:
    """The reference rows of one clip's continuation (scripts/scores.py): mean colour and last frame of the history,
    and through the lab VAE (the history's last frame and the real continuation encoded and decoded as one stream)
    the last frame and the ceiling; each scored as :func:`quality_run` scores a row (first 2 s and all)."""
    import numpy as np
    import scores
    from example_eval import arm_metrics

    frames, h = quality_clip(clip_path(clip), args.history_seconds, generated_frames(args.seconds))
    f = min(len(frames) - h, generated_frames(args.seconds))
    v = vae_pass(lab[1], frames[h - 1:h + f])
    refs = scores.reference_frames(frames[:h], f, np.concatenate([np.zeros_like(frames[:h - 1]), v]))
    f2, real = min(f, int(2 * FPS)), frames[h:h + f]
    out = {}
    for name, pred in refs.items():
        first, whole = arm_metrics(pred[:f2], real[:f2], [f2]), arm_metrics(pred, real, [f])
        out[name] = {"psnr_db": first["psnr_db"], "ssim": first["ssim"], "thumb_psnr_db": first["thumb_psnr_db"],
                     "psnr_db_all": whole["psnr_db"], "ssim_all": whole["ssim"]}
    return {"clip": clip, "history_frames": h, "compared_frames": f, "references": out}


# ---- column 4: recall of an early frame -------------------------------------------------------------------------
def training_memory(model, encoder, inp, mode: str):
    """The inference memory (``MemoryInputs``) as the training forward's namespace (``training.stages``), batch 1;
    None for an empty memory."""
    from types import SimpleNamespace

    from framememory.models.memory_modes import mode_config

    if inp.tokens is None:
        return None
    return SimpleNamespace(
        tokens=inp.tokens[None].float(), positions2=(inp.positions.double() * 2).round().long()[None], hidden=None,
        cross=None, memory_t0=mode_config(encoder, model, mode).memory_timestep == "zero",
        extra={k: v[None] for k, v in inp.extra.items()},
        readout=encoder.parts[0].state_network(model) if mode == "video_ssm" else None)


def sample_frame(model, context, memory, frame_time: int, steps: int, seed: int):
    """ONE latent frame ``[1, 16, 1, h, w]`` (model space) at RoPE time ``frame_time``: Euler over ComfyUI's own
    "simple" sigmas of the model, velocity from ``training.stages.dit_forward`` (the DiT with its LoRA applied)."""
    import comfy.model_management
    import comfy.samplers
    import torch

    from framememory.training.stages import dit_forward

    comfy.model_management.load_models_gpu([model])  # applies the LoRA patches to the shared weights
    dm = model.model.diffusion_model
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).float()
    x = torch.randn((1, 16, 1, HEIGHT // 8, WIDTH // 8), generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    times = torch.tensor([[float(frame_time)]])
    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            v = dit_forward(dm, x, s.view(1), context, memory, frame_times=times)
            x = x + (s_next - s) * v.float()
    return x


def stage1_window(lora_path: str) -> int | None:
    """The Stage I history window (latent frames) from a lab file's ``framememory_recipe`` metadata, or None."""
    from safetensors import safe_open

    with safe_open(lora_path, framework="pt") as f:
        recipe = json.loads((f.metadata() or {}).get("framememory_recipe") or "{}")
    settings = recipe.get("recipe", recipe) if isinstance(recipe, dict) else {}
    return settings.get("stage1_window")


def recall_run(lab, mode: str, clip: str, args, window: int, shuffled: bool = False) -> dict:
    """Column 4 for one clip (module docstring): the Stage I frame query. The history is the clip's first ``window``
    latent frames at most (the trained length); latent frame j is sampled at its RoPE time with the memory of the
    history (``shuffled``: of another clip's history, the control; mode "off": none), and both it and the real
    latent frame j are decoded in the history's stream (latent frames 0..j decoded as one stream, frame j's pixels
    kept). Returns PSNR / SSIM of those pixels and the latent RMSE in model space (no VAE at all)."""
    from example_eval import frame_metrics

    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.memory.frames import to_uint8
    from framememory.models.history_writer import history_from_frames
    from framememory.models.vae_stream import VideoStream

    model, vae, encoder = lab
    seconds = min(args.recall_seconds, (1 + 4 * (window - 1)) / FPS)
    own, h = history_clip(clip_path(clip), seconds, WIDTH, HEIGHT, FPS)
    source = own if not shuffled else history_clip(clip_path(shuffle_partner(clip)), h / FPS, WIDTH, HEIGHT, FPS)[0]
    mem, _ = history_from_frames(model, vae, encoder, source, SEGMENT, FPS, WIDTH, HEIGHT, mode=mode)
    real_mem = mem if not shuffled else history_from_frames(model, vae, encoder, own, SEGMENT, FPS, WIDTH, HEIGHT,
                                                            mode="off")[0]
    t_h, j = mem.history.latent_frames, args.recall_frame
    if not 0 <= j < t_h:
        raise ValueError(f"--recall-frame {j} is outside the history's {t_h} latent frames")
    memory = None if mode == "off" else training_memory(model, encoder, mem.conds(model), mode)
    text = StandInTextEncoder()
    context = text.encode_from_tokens_scheduled(text.tokenize(PROMPT))[0][0]
    x = sample_frame(model, context, memory, j - t_h, args.steps, args.seed)
    real = real_mem.history.latents(0, j + 1)[None]  # [1, C, j + 1, h, w], VAE space
    gen = real.clone()
    gen[:, :, j] = model.model.process_latent_out(x)[:, :, 0]
    pixels = lambda z: to_uint8(VideoStream(vae, "decode", time_stride=4).decode(z))[-(1 if j == 0 else 4):]  # noqa
    psnr, ssim = frame_metrics(pixels(gen).numpy(), pixels(real).numpy())
    rmse = float((x - model.model.process_latent_in(real[:, :, j:j + 1])).pow(2).mean().sqrt())
    return {"clip": clip, "history_frames": h, "history_latent_frames": t_h, "trained_window": window,
            "query_latent_frame": j, "distance_s": round((t_h - j) / LATENT_PER_S, 2),
            "memory_tokens": 0 if memory is None else int(memory.tokens.shape[1]), "psnr_db": round(float(psnr.mean()), 3),
            "ssim": round(float(ssim.mean()), 4), "latent_rmse": round(rmse, 4),
            **({"history_from": shuffle_partner(clip)} if shuffled else {})}


def recall_column(args, out: dict, save) -> None:
    """Column 4 for the rows that have it (Frame Preservation, no memory, shuffled): with the lab set's Stage I LoRA
    (``framememory_lab_wan21_stage1_lora.safetensors``) and the Frame Preservation encoder; "not trained" when the lab
    set has no Stage I LoRA (a Stage II LoRA is not trained on the frame query)."""
    if args.arm not in ("fp", "off", "shuffled"):
        out["recall"] = {"skipped": "the frame query is a Stage I task: Frame Preservation, no memory, shuffled only"}
        return
    info = lab_set_files(args.lab_dir, "stage1")
    if info.get("missing"):
        out["recall"] = {"not_trained": f"no Stage I LoRA in the lab set ({', '.join(info['missing'])})"}
        return
    window = stage1_window(info["files"]["lora"]) or 12
    lab = load_lab_set(args.lab_dir, info["files"])
    mode = "off" if args.arm == "off" else FP
    for clip in args.recall_clips:
        stage(out["recall"], clip, f"{args.arm} | {clip} | recall (Stage I LoRA, {window} latent frames)",
              lambda: recall_run(lab, mode, clip, args, window, shuffled=args.arm == "shuffled"), save)


# ---- column 5: colour drift -------------------------------------------------------------------------------------
def drift_run(lab, mode: str, args) -> dict:
    """A ``args.drift_seconds`` storyboard after ``args.history_seconds`` of bikes.mp4 (as long_run.py): CIEDE2000
    of each segment's mean colour vs the history's, at every 10 s mark and on average."""
    from framememory.models.memory_modes import mode_config

    history, h = history_clip(clip_path(args.drift_clip), args.history_seconds, WIDTH, HEIGHT, FPS)
    frames, report = storyboard_arm(lab, history, mode, args.drift_seconds, args.seed, args.steps)
    rows = segment_metrics(frames, [s["frames"] for s in report["segments"]], history)
    del frames
    for r, s in zip(rows, report["segments"]):
        r["end_s"] = round((s["start_frame"] - report["start_frames"] + s["frames"]) / FPS, 4)
    marks = [{"t_s": r["end_s"], "ciede2000": r["ciede2000"]} for r in rows
             if r["end_s"] >= 10 and abs(r["end_s"] / 10 - round(r["end_s"] / 10)) < 1e-6]
    model, _, encoder = lab
    return {"clip": args.drift_clip, "history_frames": h, "seconds": args.drift_seconds, "marks": marks,
            "mean_ciede2000": round(statistics.fmean(r["ciede2000"] for r in rows), 3), "curve": rows,
            "sample_s": [s["sample_s"] for s in report["segments"]],
            "token_check": token_check(report["segments"], mode, mode_config(encoder, model, mode),
                                       model.model.diffusion_model.dim)}


# ---- one row in its own process ---------------------------------------------------------------------------------
def load_row(lab_dir: str, key: str, row: dict):
    """``(model, vae, encoder)`` of the row (``common.lab_set_files``: "off" runs the no-memory LoRA when the lab set
    has one, "sliding" the sliding-window LoRA; ``fp_4x4x2`` the trained 4x4x2 set when present) and the note of
    which LoRA stood in; the encoder replaced for the untrained LR-only rows."""
    from framememory.models.encoding import MemoryEncoder

    set_key = {"sliding": "sliding", "off": "off", "fp_4x4x2": "fp_4x4x2", "pack_forcing": "pack_forcing",
               "video_ssm": "video_ssm"}.get(key, "fp")
    info = lab_set_files(lab_dir, set_key)
    untrained = row["encoder"].startswith("untrained:") and (key != "fp_4x4x2" or info.get("missing"))
    if untrained or info.get("missing"):
        info = lab_set_files(lab_dir, "fp")
    if info.get("missing"):
        raise FileNotFoundError(f"lab files missing in {lab_dir}: {info['missing']} (run training/lab.py)")
    model, vae, encoder = load_lab_set(lab_dir, info["files"])
    if untrained:
        encoder = MemoryEncoder.untrained(row["encoder"].split(":", 1)[1])
    return (model, vae, encoder), ("" if untrained else info["note"])


def stage(out: dict, key: str, label: str, fn, save) -> None:
    """``out[key] = fn()``, or the error (the arm goes on with its other columns); ``save(label)`` and a log line
    either way."""
    t0 = time.perf_counter()
    try:
        out[key] = fn()
        log(f"{label}: done in {time.perf_counter() - t0:.1f} s")
    except Exception as e:  # noqa: BLE001  a column that fails is reported, the others still run
        out[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        log(f"{label}: FAILED ({type(e).__name__}: {e})")
    save(label)


def arm_main(args) -> None:
    """The work of one row (``--arm KEY``), written to ``--arm-json`` after every stage; under
    ``torch.inference_mode()`` as ComfyUI's executor runs every node (``execution.py``). Without it the VAE stream's
    causal cache (``models.vae_stream``) chains the autograd graphs of all parts: measured +285 MB of RSS per
    16-frame part on the smoke VAE, never freed while the stream lives."""
    setup()
    import torch

    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        arm_rows(args)


def arm_rows(args) -> None:
    """Load the row's model set, then its columns one stage at a time (:func:`stage`)."""
    from framememory.models.telemetry import peak_rss_mb

    row = ROWS[args.arm]
    out = {"key": args.arm, **row, "quality": {}, "recall": {}}

    def save(label: str) -> None:
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        out.setdefault("peak_rss_mb_after", {})[label] = out["peak_rss_mb"]
        with open(args.arm_json + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
        os.replace(args.arm_json + ".tmp", args.arm_json)

    lab, note = load_row(args.lab_dir, args.arm, row)
    if args.arm == "fp" or (args.arm == "fp_4x4x2" and not row["name"].endswith("untrained)") and not note):
        out["name"] = f"Frame Preservation {lab[2].check(lab[0]).rate_str}"
    if args.arm == "fp_4x4x2" and lab[2].name != "untrained":
        out["name"] = f"Frame Preservation {lab[2].check(lab[0]).rate_str} (trained)"
    out["name"] += f" ({note})" if note else ""
    label = out["name"]
    if args.arm == "references":  # no model rows: the reference predictors of each clip's continuation
        for clip in args.clips:
            stage(out["quality"], clip, f"references | {clip}", lambda: reference_run(lab, clip, args), save)
        return
    stage(out, "context", f"{label} | context", lambda: context_column(lab, row["mode"]), save)
    for clip in args.clips:
        stage(out["quality"], clip, f"{label} | {clip} | next {args.seconds:g} s",
              lambda: quality_run(lab, row["mode"], clip, args, shuffled=args.arm == "shuffled"), save)
    recall_column(args, out, save)
    if args.drift_seconds > 0:
        stage(out, "drift", f"{label} | {args.drift_clip} | drift {args.drift_seconds:g} s",
              lambda: drift_run(lab, row["mode"], args), save)

