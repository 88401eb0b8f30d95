"""The main job: a storyboard video with FrameMemory memory tokens, run through a real headless ComfyUI.

    bash scripts/run_example.sh                      # setup + this script, embedded default models
    python scripts/run_example.py --out out          # this script alone (after scripts/setup.sh)
    python scripts/run_example.py --config weights.json

Weights come from (first match wins per key) --config JSON keys, then environment variables:

    wan_model  FRAMEMEMORY_WAN_MODEL  Wan 2.1 diffusion model (.safetensors)  -> models/diffusion_models
    t5         FRAMEMEMORY_T5         umt5-xxl text encoder                   -> models/text_encoders
    vae        FRAMEMEMORY_VAE        Wan 2.1 VAE                             -> models/vae
    encoder    FRAMEMEMORY_ENCODER    FrameMemory history encoder (optional)  -> models/memory_encoders

With none of them set, the embedded default runs: tiny RANDOM models written by demo/make_tiny_models.py.
That checks the whole pipeline end to end on a CPU in minutes, but its video is NOT meaningful imagery.

Writes to --out (default ./out): storyboard.mp4, contact_sheet.png, report.json, comfyui_server.log.
Exits non-zero with a message on any failure.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # tests/harness.py (only that directory: see tests/conftest.py)

from harness import ComfyServer, ServerError, substitute_inputs  # noqa: E402

WORKFLOW_TINY = REPO_ROOT / "workflows" / "storyboard_wan21_tiny_api.json"
WORKFLOW_REAL = REPO_ROOT / "workflows" / "storyboard_wan21_api.json"
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
EMBEDDED_WARNING = ("EMBEDDED DEFAULT: tiny, randomly initialised models (no real Wan/T5/VAE/encoder weights). "
                    "The pipeline ran end to end, but the video is NOT meaningful imagery. "
                    "Set FRAMEMEMORY_WAN_MODEL, FRAMEMEMORY_T5, FRAMEMEMORY_VAE (and FRAMEMEMORY_ENCODER) "
                    "or pass --config to use real weights.")


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
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("framememory_attention", REPO_ROOT / "models" / "attention.py")
    attention = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(attention)
    backend, notice = attention.resolve_attention(os.environ.get("FRAMEMEMORY_ATTENTION", "auto"))
    if notice:
        log(notice)
    use_gpu = not embedded and torch.cuda.is_available() and os.environ.get("FRAMEMEMORY_DEVICE", "auto") != "cpu"
    log(f"device: {'GPU' if use_gpu else 'CPU'}; attention: {backend if use_gpu else 'sdpa (CPU)'}")
    return {"cpu": not use_gpu, "extra_args": ["--use-sage-attention"] if use_gpu and backend == "sage" else []}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON file with keys wan_model, t5, vae, encoder (paths to weight files)")
    ap.add_argument("--out", default="out", help="output folder (default: ./out)")
    ap.add_argument("--workflow", help="API-format workflow to run instead of the default one")
    ap.add_argument("--video", default=str(MEDIA_DIR / "bikes.mp4"), help="history video for LoadVideo (default: bikes.mp4)")
    ap.add_argument("--base-dir", help="ComfyUI base directory to use (default: a fresh temporary one)")
    ap.add_argument("--keep-base", action="store_true", help="keep the temporary ComfyUI base directory")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds the prompt may run (default 3600)")
    args = ap.parse_args(argv)

    t_start = time.monotonic()
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    comfyui_dir = Path(os.environ.get("COMFYUI_DIR") or REPO_ROOT / ".cache" / "ComfyUI").resolve()
    if not (comfyui_dir / "main.py").exists():
        raise ExampleError(f"no ComfyUI at {comfyui_dir}: run `bash scripts/setup.sh` (or set COMFYUI_DIR)")
    video = Path(args.video).resolve()
    if not video.is_file():
        raise ExampleError(f"history video {video} is missing: run `bash scripts/setup.sh` to fetch it")

    weights = resolve_weights(args.config)
    embedded = not weights
    workflow_path = Path(args.workflow).resolve() if args.workflow else (WORKFLOW_TINY if embedded else WORKFLOW_REAL)
    if not workflow_path.is_file():
        raise ExampleError(f"workflow {workflow_path} is missing")
    if embedded:
        banner(EMBEDDED_WARNING)

    base = Path(args.base_dir).resolve() if args.base_dir else Path(tempfile.mkdtemp(prefix="framememory_example_"))
    log(f"comfyui: {comfyui_dir}; base dir: {base}; workflow: {workflow_path.relative_to(REPO_ROOT) if workflow_path.is_relative_to(REPO_ROOT) else workflow_path}")
    server = ComfyServer(base, comfyui_dir=comfyui_dir, python=sys.executable, **server_device_options(embedded))
    server.prepare_base()
    try:
        names = (make_tiny_models(sys.executable, comfyui_dir, server.models_dir) if embedded
                 else install_real_weights(weights, server.models_dir))
        shutil.copy2(video, server.input_dir / video.name)
        log(f"input: {video.name} -> {server.input_dir}")

        api = json.loads(workflow_path.read_text())
        subs = {WEIGHT_KEYS[k][2]: v for k, v in names.items()}
        subs[("LoadVideo", "file")] = video.name
        api = substitute_inputs(api, subs)

        t0 = time.monotonic()
        log("server: starting ComfyUI (headless, --cpu)")
        server.start()
        log(f"server: up at {server.url} after {time.monotonic() - t0:.1f} s")
        printer = ProgressPrinter(api)
        with RssSampler(server) as rss:
            prompt_id = server.post_prompt(api)
            log(f"prompt {prompt_id} queued")
            events = server.follow(prompt_id, timeout=args.timeout, on_event=printer)
            server.raise_for_events(events)
            history = server.history(prompt_id)
        report_node, report = find_report(history)
        video_out = find_video(server, api, history)

        shutil.copy2(video_out, out / "storyboard.mp4")
        frames, fps = decode_video(out / "storyboard.mp4")
        # "output_frames": frames in the node's IMAGE output (starting clip + generated when
        # include_history is on); "total_frames": generated frames. Older reports lack output_frames.
        expected = report.get("output_frames", report.get("total_frames"))
        if expected is not None and len(frames) != expected:
            raise ExampleError(f"the saved video has {len(frames)} frames, the report says {expected}")
        history_shown = (report.get("start_frames", 0)
                         if report.get("output_frames") == report.get("start_frames", 0) + report.get("total_frames", -1)
                         and report.get("start_frames", 0) < len(frames) else 0)
        sheet_idx = contact_sheet(frames, out / "contact_sheet.png", history_frames=history_shown)
        wall = time.monotonic() - t_start
        full = {
            **report,
            "command": command,
            "wall_seconds": round(wall, 2),
            "server_peak_rss_mb": round(rss.peak_mb, 1),
            "embedded_default": embedded,
            "warning": EMBEDDED_WARNING if embedded else None,
            "decoded": {"frames": len(frames), "fps": fps,
                        "height": int(frames[0].shape[0]), "width": int(frames[0].shape[1]),
                        "contact_sheet_frames": sheet_idx},
            "prompt_id": prompt_id,
            "report_node": report_node,
            "progress_events": printer.progress_events,
            "weights": {k: str(v) for k, v in weights.items()} if weights else {k: f"(embedded tiny) {v}" for k, v in names.items()},
            "paths": {"video": str(out / "storyboard.mp4"), "contact_sheet": str(out / "contact_sheet.png"),
                      "report": str(out / "report.json"), "server_log": str(out / "comfyui_server.log"),
                      "workflow": str(workflow_path), "history_video": str(video), "comfyui_dir": str(comfyui_dir)},
        }
        (out / "report.json").write_text(json.dumps(full, indent=2) + "\n")
    finally:
        server.stop()
        if server.log_path.exists():
            shutil.copy2(server.log_path, out / "comfyui_server.log")
        if not args.base_dir and not args.keep_base:
            shutil.rmtree(base, ignore_errors=True)

    print()
    print(summary_table(report))
    print()
    log(f"model family {report.get('model_family')}, {report.get('width')}x{report.get('height')} @ {report.get('fps')} fps, "
        f"{report.get('start_frames')} history frames, {report.get('total_frames')} generated, "
        f"{len(frames)} in the video, {len(report.get('shots', []))} shots, {len(report.get('segments', []))} segments")
    seams = report.get("seams") or {}
    if seams.get("per_boundary"):
        log(f"seams at segment joins (pixel change across a join / inside segments, 1.0 = none): mean "
            f"{seams.get('mean')}, per join {seams.get('per_boundary')}; decode: {report.get('decode')}")
    log(f"wall {wall:.1f} s, server peak RSS {rss.peak_mb:.0f} MB")
    for name in ("storyboard.mp4", "contact_sheet.png", "report.json", "comfyui_server.log"):
        log(f"wrote {out / name}")
    if embedded:
        banner(EMBEDDED_WARNING)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ExampleError, ServerError) as e:
        print(f"\n[run_example] FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\n[run_example] interrupted", file=sys.stderr)
        sys.exit(130)
