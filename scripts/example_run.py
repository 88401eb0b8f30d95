"""The main job's runs on the headless ComfyUI server (scripts/run_example.py): the device it runs on, the history
put into the prompt (scripts/revisit_job.py), a prompt queued and followed to its end with progress lines, its
report and files found in the server's outputs, and the server's peak resident memory while it runs."""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from framememory.headless.comfy_server import ComfyServer
from framememory.models.attention import resolve_attention

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the job's modules, next to this file
import example_eval  # noqa: E402
import revisit_job  # noqa: E402
from example_common import MEDIA_DIR, ExampleError, log  # noqa: E402

REPORT_KEY = "framememory_report"


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


# ---- the history ----------------------------------------------------------------------------------------------
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


# ---- a run ---------------------------------------------------------------------------------------
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
