"""The main job: a storyboard video with FrameMemory memory tokens, run through a real headless ComfyUI.

    bash scripts/run_example.sh                      # setup + this script, embedded default models
    python scripts/run_example.py --out out          # this script alone (after scripts/setup.sh)
    python scripts/run_example.py --config weights.json

Weights come from (first match wins per key) --config JSON keys, then environment variables:

    wan_model  FRAMEMEMORY_WAN_MODEL  Wan 2.1 diffusion model (.safetensors)  -> models/diffusion_models
    t5         FRAMEMEMORY_T5         umt5-xxl text encoder                   -> models/text_encoders
    vae        FRAMEMEMORY_VAE        Wan 2.1 VAE                             -> models/vae
    encoder    FRAMEMEMORY_ENCODER    FrameMemory history encoder (optional)  -> models/memory_encoders

With none of them set, the embedded default runs: the LAB model (a small Wan 2.1-architecture DiT, a
reduced-width VAE, a memory encoder and a Stage II LoRA trained here on real clips, files in lab_model/;
workflows/storyboard_wan21_lab_api.json), blurry by design, not Wan. Without those files: tiny RANDOM models
written by demo/make_tiny_models.py, which check the pipeline end to end but make NO meaningful imagery.

Evaluation (--eval, scripts/revisit_job.py; --no-eval skips it): "revisit" (default) leaves and returns: the
history is shot A (the first --history-seconds of --video, default the held-out carphone_pristine.mp4) then a
--gap-seconds cutaway (default 5 s of the training-split bigbuckbunny.mp4), read by the Load Video as History node from
one lossless file (one VAE stream, the cut inside it); the Storyboard generates --return-seconds with A's prompt.
"continuation" continues the clip's first seconds with the workflow's own storyboard (default bikes.mp4). Either way
the same prompt runs again with memory_mode "off" and with the memory of another clip (the shuffled control), and all
three arms and the reference rows (mean colour, last frame raw and through the VAE, VAE ceiling; scripts/scores.py)
are scored against the real frames: report.json "evaluation", storyboard_memory_off.mp4, contact_sheet_eval.png.

Writes to --out (default ./out): storyboard.mp4, contact_sheet.png, report.json, comfyui_server.log (+ the two
evaluation files). Exits non-zero with a message on any failure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from framememory.headless.comfy_server import ComfyServer, ServerError, substitute_inputs
from framememory.models.attention import resolve_attention

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))  # example_eval.py, next to this file (also when loaded by path)
import example_eval  # noqa: E402
import revisit_eval  # noqa: E402
import revisit_job  # noqa: E402

WORKFLOW_TINY = REPO_ROOT / "demo" / "workflows" / "api" / "storyboard_wan21_tiny_api.json"
WORKFLOW_LAB = REPO_ROOT / "workflows" / "api" / "storyboard_wan21_lab_api.json"
LAB_DIR = Path(os.environ.get("FRAMEMEMORY_LAB_DIR") or REPO_ROOT / "lab_model")
WORKFLOW_REAL = REPO_ROOT / "workflows" / "api" / "storyboard_wan21_api.json"
MEDIA_DIR = REPO_ROOT / ".cache" / "media"
REPORT_KEY = "framememory_report"

# key -> (environment variable, models sub-folder, (class_type, input) that names the file)
WEIGHT_KEYS = {
    "wan_model": ("FRAMEMEMORY_WAN_MODEL", "diffusion_models", ("UNETLoader", "unet_name")),
    "t5": ("FRAMEMEMORY_T5", "text_encoders", ("CLIPLoader", "clip_name")),
    "vae": ("FRAMEMEMORY_VAE", "vae", ("VAELoader", "vae_name")),
    "encoder": ("FRAMEMEMORY_ENCODER", "memory_encoders", ("FrameMemoryLoadEncoder", "encoder_name")),
}
REQUIRED_REAL = ("wan_model", "t5", "vae")
TINY_FILES = {  # written by demo/make_tiny_models.py
    "wan_model": "framememory_tiny_wan21.safetensors",
    "vae": "framememory_tiny_wan21_vae.safetensors",
    "encoder": "framememory_tiny_wan21_encoder.safetensors",
}
LAB_FILES = {  # key -> (file in LAB_DIR, models sub-folder, (class_type, input) that names it); trained by training/lab.py
    "wan_model": ("framememory_lab_wan21.safetensors", "diffusion_models", ("UNETLoader", "unet_name")),
    "vae": ("framememory_lab_wan21_vae.safetensors", "vae", ("VAELoader", "vae_name")),
    "encoder": ("framememory_lab_wan21_encoder.safetensors", "memory_encoders", ("FrameMemoryLoadEncoder", "encoder_name")),
    "lora": ("framememory_lab_wan21_lora.safetensors", "loras", ("LoraLoaderModelOnly", "lora_name")),
}
REAL_WEIGHTS_HINT = ("Set FRAMEMEMORY_WAN_MODEL, FRAMEMEMORY_T5, FRAMEMEMORY_VAE (and FRAMEMEMORY_ENCODER) "
                     "or pass --config to use real weights.")
EMBEDDED_WARNING = ("EMBEDDED DEFAULT: tiny, randomly initialised models (no real Wan/T5/VAE/encoder weights; the "
                    f"trained lab model is not in {LAB_DIR}). The pipeline ran end to end, but the video is NOT "
                    "meaningful imagery. " + REAL_WEIGHTS_HINT)


class ExampleError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[run_example] {msg}", flush=True)


def banner(text: str) -> None:
    bar = "!" * 100
    print(f"\n{bar}", flush=True)
    for line in textwrap.wrap(text, 96):
        print(f"! {line}", flush=True)
    print(f"{bar}\n", flush=True)


# ---- weights ------------------------------------------------------------------------------------
def resolve_weights(config_path: str | None) -> dict[str, Path]:
    """{key: file} from --config (wins) and the environment; {} means the embedded default."""
    config = {}
    if config_path:
        try:
            config = json.loads(Path(config_path).read_text())
        except (OSError, ValueError) as e:
            raise ExampleError(f"cannot read --config {config_path}: {e}") from e
        unknown = set(config) - set(WEIGHT_KEYS)
        if unknown:
            raise ExampleError(f"--config {config_path}: unknown keys {sorted(unknown)}; expected {sorted(WEIGHT_KEYS)}")
    weights = {}
    for key, (env, _, _) in WEIGHT_KEYS.items():
        value = config.get(key) or os.environ.get(env)
        if value:
            weights[key] = Path(value).expanduser().resolve()
    if not weights:
        return {}
    missing = [k for k in REQUIRED_REAL if k not in weights]
    if missing:
        raise ExampleError("real weights need all of " + ", ".join(
            f"{k} ({WEIGHT_KEYS[k][0]})" for k in REQUIRED_REAL) + f"; missing: {', '.join(missing)}")
    for key, path in weights.items():
        if not path.is_file():
            raise ExampleError(f"{key} ({WEIGHT_KEYS[key][0]}): no such file {path}")
    return weights


def install_real_weights(weights: dict[str, Path], models_dir: Path) -> dict[str, str]:
    """Symlink each file into its ComfyUI models sub-folder; returns {key: file name}."""
    names = {}
    for key, path in weights.items():
        folder = models_dir / WEIGHT_KEYS[key][1]
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / path.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path)
        names[key] = path.name
        log(f"weights: {key} -> models/{WEIGHT_KEYS[key][1]}/{path.name}")
    return names


def make_tiny_models(python: str, comfyui_dir: Path, models_dir: Path) -> dict[str, str]:
    script = REPO_ROOT / "demo" / "make_tiny_models.py"
    if not script.exists():
        raise ExampleError(f"{script} is missing: cannot build the embedded default models")
    cmd = [python, str(script), "--comfyui-dir", str(comfyui_dir), "--out", str(models_dir)]
    log("weights: none given -> embedded default: " + " ".join(shlex.quote(c) for c in cmd))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExampleError(f"demo/make_tiny_models.py failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for line in proc.stdout.strip().splitlines():
        log("  " + line)
    names = {}
    for key, name in TINY_FILES.items():
        path = models_dir / WEIGHT_KEYS[key][1] / name
        if not path.is_file():
            raise ExampleError(f"demo/make_tiny_models.py did not write {path}")
        names[key] = name
    log(f"weights: tiny models written in {time.monotonic() - t0:.1f} s")
    return names


LAB_MODE_FILES = {  # memory mode -> the lab encoder / state file and Stage II LoRA trained for it (training/lab.py phase 6)
    "pack_forcing": {"encoder": "framememory_lab_wan21_packforcing_encoder.safetensors",
                     "lora": "framememory_lab_wan21_packforcing_lora.safetensors"},
    "video_ssm": {"encoder": "framememory_lab_wan21_videossm.safetensors",
                  "lora": "framememory_lab_wan21_videossm_lora.safetensors"},
}
MEMORY_MODES = ("frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off")  # models/memory_modes.py


def lab_files(mode: str = "frame_preservation") -> dict[str, Path] | None:
    """{key: file} of the trained lab model for memory ``mode`` (its own encoder and LoRA for pack_forcing /
    video_ssm) when every file is in LAB_DIR, else None."""
    names = {key: name for key, (name, _, _) in LAB_FILES.items()} | LAB_MODE_FILES.get(mode, {})
    files = {key: LAB_DIR / name for key, name in names.items()}
    return files if all(p.is_file() for p in files.values()) else None


def with_memory_mode(api: dict, mode: str) -> dict:
    """The workflow with every Storyboard's memory_mode set to ``mode`` (unchanged for frame_preservation)."""
    if mode == "frame_preservation":
        return api
    api = json.loads(json.dumps(api))
    for node in api.values():
        if node.get("class_type") == "FrameMemoryStoryboard":
            node["inputs"]["memory_mode"] = mode
    return api


def install_lab_model(files: dict[str, Path], models_dir: Path) -> dict[tuple[str, str], str]:
    """Symlink the lab files into their models sub-folders; returns the workflow substitutions
    {(class_type, input): file name}."""
    subs = {}
    for key, path in files.items():
        _, folder, target = LAB_FILES[key]
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        link = models_dir / folder / path.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path.resolve())
        subs[target] = path.name
        log(f"weights: lab {key} -> models/{folder}/{path.name}")
    return subs


def lab_recipe(dit: Path) -> dict:
    """The ``framememory_recipe`` JSON of the lab DiT's safetensors metadata ({} when absent or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(dit), framework="pt") as f:
            meta = f.metadata() or {}
        recipe = json.loads(meta.get("framememory_recipe") or "{}")
        return recipe if isinstance(recipe, dict) else {}
    except Exception as e:  # noqa: BLE001 - the description only loses detail
        log(f"weights: cannot read the lab recipe from {dit.name}: {e}")
        return {}


def lab_warning(recipe: dict, width: int, height: int, stand_in_text: bool) -> str:
    """The honest description of the lab model, with the facts its recipe gives (clips, size, steps);
    ``stand_in_text``: the workflow encodes prompts with the demo stand-in text encoder."""
    clips = recipe.get("train_clips")
    clips = len(clips) if isinstance(clips, (list, tuple, dict)) else clips  # training/lab.py: {name: bytes}
    settings = recipe.get("recipe") if isinstance(recipe.get("recipe"), dict) else recipe
    size = f"{settings.get('width', width)}x{settings.get('height', height)}"
    trained = f"on {clips} real clips" if clips else "on real clips"
    extra = [f"{k.replace('_', ' ')} {settings[k]}" for k in ("base_steps", "stage1_steps", "stage2_steps", "rate")
             if k in settings]
    return (f"EMBEDDED DEFAULT: the lab model, a small Wan 2.1-architecture DiT, a reduced-width Wan VAE, a "
            f"FrameMemory encoder and a Stage II LoRA trained here {trained} at {size}"
            + (f" ({', '.join(extra)})" if extra else "")
            + (", prompts through a stand-in text encoder (no umt5)" if stand_in_text else "") + ". It is NOT Wan 2.1: "
            "its video is blurry by design. It exists to measure what memory buys when a scene comes back after a cutaway "
            "(or continues), against the real frames and trivial predictors. "
            + REAL_WEIGHTS_HINT)


# ---- run ----------------------------------------------------------------------------------------
class RssSampler:
    """Peak resident memory of the server (and children), sampled in a background thread."""

    def __init__(self, server: ComfyServer, interval: float = 0.2):
        self.server, self.interval, self.peak_mb = server, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.server.rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class ProgressPrinter:
    """One line per executing node and at most one progress line per ~2 s (always the last step)."""

    def __init__(self, prompt: dict):
        self.prompt = prompt
        self.t0 = time.monotonic()
        self.last_progress = 0.0
        self.progress_events = 0

    def __call__(self, event: dict) -> None:
        kind, data = event["type"], event.get("data") or {}
        now = time.monotonic()
        stamp = f"{now - self.t0:7.1f}s"
        if kind == "executing" and data.get("node") is not None:
            node = str(data["node"])
            cls = self.prompt.get(node, {}).get("class_type", "?")
            log(f"{stamp} executing node {node} ({cls})")
        elif kind == "progress":
            self.progress_events += 1
            if now - self.last_progress > 2.0 or data.get("value") == data.get("max"):
                self.last_progress = now
                log(f"{stamp}   progress {data.get('value')}/{data.get('max')} (node {data.get('node')})")
        elif kind in ("execution_success", "execution_error", "execution_interrupted"):
            log(f"{stamp} {kind}")


def find_report(history: dict) -> tuple[str, dict]:
    for node_id, ui in (history.get("outputs") or {}).items():
        value = ui.get(REPORT_KEY)
        if value:
            report = value[0] if isinstance(value, list) else value
            if isinstance(report, dict):
                return node_id, report
    raise ExampleError(f"no node output has a '{REPORT_KEY}' entry; outputs: {sorted((history.get('outputs') or {}).keys())}")


def find_video(server: ComfyServer, prompt: dict, history: dict) -> Path:
    save_nodes = [nid for nid, n in prompt.items() if n.get("class_type") in ("SaveVideo", "SaveWEBM")]
    files = [p for nid in save_nodes for p in server.output_files(history, nid, (".mp4", ".webm", ".mov", ".mkv"))]
    if not files:
        files = server.output_files(history, None, (".mp4", ".webm", ".mov", ".mkv"))
    if not files:
        raise ExampleError(f"the prompt produced no video file; outputs: {json.dumps(history.get('outputs'))[:2000]}")
    if not files[0].is_file():
        raise ExampleError(f"video listed in /history does not exist on disk: {files[0]}")
    return files[0]


# ---- outputs ------------------------------------------------------------------------------------
def decode_video(path: Path):
    """All frames of a video as a list of uint8 HxWx3 arrays, plus its fps (PyAV)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, fps


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


# ---- main ---------------------------------------------------------------------------------------
def server_device_options(embedded: bool) -> dict:
    """CPU for the embedded default (tiny models) or when no CUDA device exists; otherwise the GPU, with the
    attention backend from FRAMEMEMORY_ATTENTION (auto | sage | sdpa): sage only with CUDA and the
    sageattention package, else PyTorch SDPA with a one-line notice (models/attention.py)."""
    import torch

    backend, notice = resolve_attention(os.environ.get("FRAMEMEMORY_ATTENTION", "auto"))
    if notice:
        log(notice)
    use_gpu = not embedded and torch.cuda.is_available() and os.environ.get("FRAMEMEMORY_DEVICE", "auto") != "cpu"
    log(f"device: {'GPU' if use_gpu else 'CPU'}; attention: {backend if use_gpu else 'sdpa (CPU)'}")
    return {"cpu": not use_gpu, "extra_args": ["--use-sage-attention"] if use_gpu and backend == "sage" else []}


@dataclass
class Models:
    """Which weights the example runs: kind "user" (real weights), "lab" (the trained embedded default) or "tiny"
    (random embedded default), its workflow, and the files to install."""

    kind: str
    workflow: Path
    files: dict = field(default_factory=dict)  # {key: Path}: user weights or lab files; {} for tiny
    warning: str | None = None
    recipe: dict = field(default_factory=dict)


def choose_models(config: str | None, workflow: str | None, mode: str = "frame_preservation") -> Models:
    """User weights when given, else the lab model (the set trained for memory ``mode``) when its files are all in
    LAB_DIR, else the tiny random models. Raises ExampleError for incomplete user weights or a missing workflow file."""
    weights = resolve_weights(config)
    lab = None if weights else lab_files(mode)
    kind = "user" if weights else "lab" if lab else "tiny"
    default = {"user": WORKFLOW_REAL, "lab": WORKFLOW_LAB, "tiny": WORKFLOW_TINY}[kind]
    path = Path(workflow).resolve() if workflow else default
    if not path.is_file():
        raise ExampleError(f"workflow {path} is missing")
    models = Models(kind, path, weights or lab or {})
    if kind == "tiny":
        models.warning = EMBEDDED_WARNING
    elif kind == "lab":
        models.recipe = lab_recipe(lab["wan_model"])
        api = json.loads(path.read_text())
        sb = next((n["inputs"] for n in api.values() if n.get("class_type") == "FrameMemoryStoryboard"), {})
        stand_in = any(n.get("class_type") == "FrameMemoryDemoTextEncoder" for n in api.values())
        models.warning = lab_warning(models.recipe, sb.get("width", 256), sb.get("height", 128), stand_in)
    return models


def install_models(models: Models, server: ComfyServer) -> dict[tuple[str, str], str]:
    """Put the chosen weights into the server's models folders; returns the workflow substitutions."""
    if models.kind == "lab":
        return install_lab_model(models.files, server.models_dir)
    names = (make_tiny_models(server.python, server.comfyui_dir, server.models_dir) if models.kind == "tiny"
             else install_real_weights(models.files, server.models_dir))
    return {WEIGHT_KEYS[k][2]: v for k, v in names.items()}


def weights_entry(models: Models, subs: dict) -> dict:
    """report.json "weights": the user's files, or the embedded files with their kind."""
    if models.kind == "user":
        return {k: str(v) for k, v in models.files.items()}
    if models.kind == "lab":
        return {k: f"(embedded lab) {v}" for k, v in models.files.items()}
    return {f"{cls}.{inp}": f"(embedded tiny) {v}" for (cls, inp), v in subs.items()}


# ---- history and runs ---------------------------------------------------------------------------------------------
def prepare_history(args, api: dict, video: Path, input_dir: Path, evaluate: bool):
    """The Storyboard's history and what the evaluation compares (scripts/revisit_job.py): ``--eval revisit`` (the
    default) A + cutaway + A's return, ``--eval continuation`` the clip's first seconds. Returns ``(prompt, plan)``."""
    try:
        if args.eval == "revisit":
            api, plan = revisit_job.prepare(api, video, Path(args.cutaway).resolve(), args.gap_seconds,
                                            args.history_seconds, args.return_seconds, input_dir, MEDIA_DIR, evaluate)
        else:
            api, plan = revisit_job.prepare_continuation(api, video, args.history_seconds, input_dir, MEDIA_DIR, evaluate)
    except example_eval.EvalError:
        raise
    except Exception as e:  # training.data.VideoReadError and friends
        raise ExampleError(f"cannot read {video} or {args.cutaway}: {e}") from e
    s = plan.seq
    log(f"input: {plan.file} in {input_dir}: {s.name}, Load Video as History reads its first {s.history} frames; "
        f"shots: " + "; ".join(f"{label} {b - a} frames{' (given)' if given else ''}" for label, _, a, b, given in s.shots))
    return api, plan


def link_input(video: Path, input_dir: Path) -> str:
    """Put ``video`` into the server's input folder (a symbolic link, a copy where links fail); returns its name."""
    target = input_dir / video.name
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        target.symlink_to(video.resolve())
    except OSError:
        shutil.copy2(video, target)
    return video.name


def run_prompt(server: ComfyServer, api: dict, timeout: float, label: str) -> dict:
    """Queue ``api``, follow it to the end (progress printed) and collect {"prompt_id", "report_node", "report",
    "video", "history", "progress_events", "seconds"}. Raises ServerError / ExampleError on failure."""
    t0 = time.monotonic()
    printer = ProgressPrinter(api)
    prompt_id = server.post_prompt(api)
    log(f"prompt {prompt_id} queued ({label})")
    events = server.follow(prompt_id, timeout=timeout, on_event=printer)
    server.raise_for_events(events)
    history = server.history(prompt_id)
    report_node, report = find_report(history)
    return {"prompt_id": prompt_id, "report_node": report_node, "report": report, "history": history,
            "video": find_video(server, api, history), "progress_events": printer.progress_events,
            "seconds": round(time.monotonic() - t0, 2)}


def tap_frames(server: ComfyServer, run: dict, tap_id: str):
    """The generated frames of a run, from its lossless SaveAnimatedPNG tap: uint8 [F, H, W, 3]."""
    files = server.output_files(run["history"], tap_id, (".png",))
    if not files:
        raise ExampleError(f"the evaluation tap (node {tap_id}) wrote no PNG")
    return example_eval.generated_part(example_eval.read_apng(files[0], float(run["report"]["fps"])), run["report"])


# ---- outputs of the main run --------------------------------------------------------------------
def save_main_outputs(run: dict, out: Path, clip) -> dict:
    """Copy the memory-on video to out/storyboard.mp4, check its frame count against the report and draw
    contact_sheet.png; returns report.json's "decoded" entry."""
    report = run["report"]
    shutil.copy2(run["video"], out / "storyboard.mp4")
    frames, fps = decode_video(out / "storyboard.mp4")
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


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON file with keys wan_model, t5, vae, encoder (paths to weight files)")
    ap.add_argument("--out", default="out", help="output folder (default: ./out)")
    ap.add_argument("--workflow", help="API-format workflow to run instead of the default one")
    ap.add_argument("--video", help="shot A's clip (default: the held-out carphone_pristine.mp4 for --eval revisit, "
                                    "bikes.mp4 for --eval continuation)")
    ap.add_argument("--cutaway", default=str(MEDIA_DIR / "bigbuckbunny.mp4"),
                    help="the cutaway's clip (default: bigbuckbunny.mp4, training split)")
    ap.add_argument("--gap-seconds", type=float, default=5.0, help="cutaway length (default 5; whole 1 s segments)")
    ap.add_argument("--return-seconds", type=float, default=1.0, help="seconds generated after the cutaway (default 1)")
    ap.add_argument("--eval", choices=("revisit", "continuation"), default="revisit",
                    help="revisit (default): A, a cutaway, back to A; continuation: the clip's next seconds")
    ap.add_argument("--history-seconds", type=float, default=2.8,
                    help="seconds of --video before the cutaway / used as history (default 2.8; rounded down to whole "
                         "VAE segments: 13 + 16k frames on Wan)")
    ap.add_argument("--memory-mode", default="frame_preservation", choices=MEMORY_MODES,
                    help="the Storyboard's memory_mode (default frame_preservation); the lab model loads the encoder / "
                         "state file and LoRA trained for pack_forcing or video_ssm; the comparison arm stays 'off'")
    ap.add_argument("--no-eval", action="store_true",
                    help="skip the memory-off run and the comparison with the clip's real continuation")
    ap.add_argument("--base-dir", help="ComfyUI base directory to use (default: a fresh temporary one)")
    ap.add_argument("--keep-base", action="store_true", help="keep the temporary ComfyUI base directory")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds each prompt may run (default 3600)")
    args = ap.parse_args(argv)
    for flag in ("history_seconds", "gap_seconds", "return_seconds", "timeout"):  # before any work
        value = getattr(args, flag)
        if not math.isfinite(value) or value <= 0:
            ap.error(f"--{flag.replace('_', '-')} must be a finite number of seconds above 0, got {value:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    comfyui_dir = Path(os.environ.get("COMFYUI_DIR") or REPO_ROOT / ".cache" / "ComfyUI").resolve()
    if not (comfyui_dir / "main.py").exists():
        raise ExampleError(f"no ComfyUI at {comfyui_dir}: run `bash scripts/setup.sh` (or set COMFYUI_DIR)")
    video = Path(args.video or MEDIA_DIR / ("carphone_pristine.mp4" if args.eval == "revisit" else "bikes.mp4")).resolve()
    if not video.is_file():
        raise ExampleError(f"history video {video} is missing: run `bash scripts/setup.sh` to fetch it")
    models = choose_models(args.config, args.workflow, args.memory_mode)
    if models.warning:
        banner(models.warning)
    base = Path(args.base_dir).resolve() if args.base_dir else Path(tempfile.mkdtemp(prefix="framememory_example_"))
    log(f"comfyui: {comfyui_dir}; base dir: {base}; models: {models.kind}; workflow: {_short(models.workflow)}")
    server = ComfyServer(base, comfyui_dir=comfyui_dir, python=sys.executable,
                         **server_device_options(models.kind != "user"))
    server.prepare_base()
    try:
        full, decoded, ev, rss_mb = run_example(args, models, server, video, out)
        wall = time.monotonic() - t_start
        full.update(command=command, wall_seconds=round(wall, 2))
        full["paths"].update(report=str(out / "report.json"), server_log=str(out / "comfyui_server.log"),
                             workflow=str(models.workflow), history_video=str(video), comfyui_dir=str(comfyui_dir))
        (out / "report.json").write_text(json.dumps(full, indent=2) + "\n")
    finally:
        server.stop()
        if server.log_path.exists():
            shutil.copy2(server.log_path, out / "comfyui_server.log")
        if not args.base_dir and not args.keep_base:
            shutil.rmtree(base, ignore_errors=True)
    print_summary(full, decoded, wall, rss_mb, out, ev)
    if models.warning:
        banner(models.warning)
    return 0


def run_example(args, models: Models, server: ComfyServer, video: Path, out: Path) -> tuple[dict, dict, dict, float]:
    """Install the models and the history, start the server, run the workflow (memory on) and, unless skipped, the
    memory-off arm and the comparison. Returns (report.json without command / wall time, decoded, evaluation, RSS)."""
    subs = install_models(models, server)
    api = with_memory_mode(substitute_inputs(json.loads(models.workflow.read_text()), subs), args.memory_mode)
    clip, no_history = None, example_eval.history_input(api)
    skip = ("--no-eval" if args.no_eval else no_history or example_eval.metrics_missing())
    if no_history is None:
        api, clip = prepare_history(args, api, video, server.input_dir, evaluate=skip is None)
    elif any(n.get("class_type") in ("LoadVideo", example_eval.VIDEO_HISTORY) for n in api.values()):  # as it says
        name = link_input(video, server.input_dir)
        api = substitute_inputs(api, {("LoadVideo", "file"): name, (example_eval.VIDEO_HISTORY, "video"): name})
        log(f"input: {video.name} -> {server.input_dir} ({no_history}: --history-seconds not used)")
    tap = None
    if skip is None:
        api, tap = example_eval.with_frame_tap(api, clip.storyboard_id, float(api[clip.storyboard_id]["inputs"]["fps"]))
    if skip is None:  # the shuffled control's Splice History node (evaluation only, not part of the pack)
        log(f"eval: {_short(revisit_job.install_eval_nodes(server.base / 'custom_nodes'))} -> scripts/eval_nodes")
    t0 = time.monotonic()
    log(f"server: starting ComfyUI (headless{', --cpu' if server.cpu else ''})")
    server.start()
    log(f"server: up at {server.url} after {time.monotonic() - t0:.1f} s")
    with RssSampler(server) as rss:
        on = run_prompt(server, api, args.timeout, "memory on" if skip is None else "workflow")
        decoded = save_main_outputs(on, out, clip)
        ev = {"skipped": skip} if skip else revisit_job.evaluate(
            server, api, on, tap_frames(server, on, tap), clip, out, run_prompt,
            lambda run: tap_frames(server, run, tap), MEDIA_DIR, args.timeout)
    report = on["report"]
    full = {
        **report,
        "server_peak_rss_mb": round(rss.peak_mb, 1),
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
        "weights": weights_entry(models, subs),
        "paths": {"video": str(out / "storyboard.mp4"), "contact_sheet": str(out / "contact_sheet.png")},
    }
    return full, decoded, ev, rss.peak_mb


def _short(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ExampleError, ServerError, example_eval.EvalError) as e:
        print(f"\n[run_example] FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\n[run_example] interrupted", file=sys.stderr)
        sys.exit(130)
