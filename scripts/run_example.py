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

import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from framememory.headless.comfy_server import ComfyServer, ServerError, substitute_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the job's modules (also when loaded by path)
import example_eval  # noqa: E402
import revisit_job  # noqa: E402
from example_common import MEDIA_DIR, REPO_ROOT, ExampleError, banner, log, short  # noqa: E402
from example_models import (MemoryMode, Models, choose_models, install_models, weights_entry,  # noqa: E402
                            with_memory_mode)
from example_report import full_report, print_summary, save_main_outputs  # noqa: E402
from example_run import (RssSampler, link_input, prepare_history, run_prompt, server_device_options,  # noqa: E402
                         tap_frames)


@dataclass(frozen=True)
class Args:
    """The main job's command line (module docstring)."""

    config: str | None = None
    """JSON file with keys wan_model, t5, vae, encoder (paths to weight files)"""
    out: str = "out"
    """output folder"""
    workflow: str | None = None
    """API-format workflow to run instead of the default one"""
    video: str | None = None
    """shot A's clip (None: the held-out carphone_pristine.mp4 for --eval revisit, bikes.mp4 for continuation)"""
    cutaway: str = str(MEDIA_DIR / "bigbuckbunny.mp4")
    """the cutaway's clip (bigbuckbunny.mp4: training split)"""
    gap_seconds: float = 5.0
    """cutaway length (s; whole 1 s segments)"""
    return_seconds: float = 1.0
    """seconds generated after the cutaway"""
    eval: Literal["revisit", "continuation"] = "revisit"
    """revisit: A, a cutaway, back to A; continuation: the clip's next seconds"""
    history_seconds: float = 2.8
    """seconds of --video before the cutaway / used as history (rounded down to whole VAE segments: 13 + 16k frames)"""
    memory_mode: MemoryMode = "frame_preservation"
    """the Storyboard's memory_mode; the lab model loads the encoder / state file and LoRA trained for it (pack_forcing,
    video_ssm); the comparison arm stays 'off'"""
    no_eval: bool = False
    """skip the memory-off run and the comparison with the clip's real continuation"""
    base_dir: str | None = None
    """ComfyUI base directory to use (None: a fresh temporary one)"""
    keep_base: bool = False
    """keep the temporary ComfyUI base directory"""
    timeout: float = 3600.0
    """seconds each prompt may run"""


def parse_args(argv: list[str] | None) -> Args:
    """The command line (``sys.argv[1:]`` when ``argv`` is None). Exits with status 2 and a message on stderr for an
    unknown flag or a number of seconds that is not finite and above 0, before any work."""
    args = tyro.cli(Args, args=argv, description=__doc__, config=(tyro.conf.FlagCreatePairsOff,))
    for flag in ("history_seconds", "gap_seconds", "return_seconds", "timeout"):  # before any work
        value = getattr(args, flag)
        if not math.isfinite(value) or value <= 0:
            print(f"run_example.py: error: --{flag.replace('_', '-')} must be a finite number of seconds above 0, "
                  f"got {value:g}", file=sys.stderr)
            raise SystemExit(2)
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
    log(f"comfyui: {comfyui_dir}; base dir: {base}; models: {models.kind}; workflow: {short(models.workflow)}")
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


def build_prompt(args: Args, models: Models, server: ComfyServer, video: Path):
    """Install the models and the history into the server's folders and make the prompt: the workflow with the
    installed file names, ``--memory-mode``, the history from ``video`` and, when evaluating, the lossless frame tap
    and the evaluation nodes. Returns ``(prompt, substitutions, plan or None, why the evaluation is skipped or None,
    tap node id or None)``."""
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
        log(f"eval: {short(revisit_job.install_eval_nodes(server.base / 'custom_nodes'))} -> scripts/eval_nodes")
    return api, subs, clip, skip, tap


def run_example(args: Args, models: Models, server: ComfyServer, video: Path,
                out: Path) -> tuple[dict, dict, dict, float]:
    """Install the models and the history, start the server, run the workflow (memory on) and, unless skipped, the
    memory-off arm and the comparison. Returns (report.json without command / wall time, decoded, evaluation, RSS)."""
    api, subs, clip, skip, tap = build_prompt(args, models, server, video)
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
    full = full_report(on, models, weights_entry(models, subs), clip, video, ev, decoded, rss.peak_mb, out)
    return full, decoded, ev, rss.peak_mb


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ExampleError, ServerError, example_eval.EvalError) as e:
        print(f"\n[run_example] FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\n[run_example] interrupted", file=sys.stderr)
        sys.exit(130)
