"""The lab recipe's check of its DiT (issue 23): the first generated second after a static-camera held-out history,
against the reference rows, for every arm a lab set folder has.

    .venv/bin/python training/lab_probe.py --lab-dir .cache/lab_v2/out            # carphone + tree, seeds 0 1
    .venv/bin/python training/lab_probe.py --lab-dir lab_model --modes frame_preservation off
    .venv/bin/python training/lab_probe.py --vae-streams .cache/lab_v2/work/vae_ckpt/weights.safetensors  # VAE only

For each clip: the history is its first ``--history-frames`` frames (13 + 16k, as the main job cuts histories) at
256x128 / 16 fps, the real continuation its next 16 frames (1 s). Each arm generates one 1 s segment with the clip's
own prompt (``scripts/revisit_eval.prompt_for``) through ``models.storyboard.run_storyboard`` (the Storyboard node's
loop) with the lab set loaded by the stock loaders (:func:`training.lab.load_lab_model`: mode off takes the no-memory
LoRA, sliding_window the sliding-window LoRA when the set has them). Scores and reference rows come from
``scripts/scores.py`` (issue 22's one code path): mean colour, last frame raw and through the VAE (the real history +
continuation as one VAE stream), the VAE ceiling. The target of issue 23: every trained memory arm beats
``last_frame_vae`` on full-frame PSNR. Prints a table and writes ``--out`` JSON. Held-out clips only.

``--vae-streams FILE`` checks a VAE alone (a lab VAE file or a VAE checkpoint during training): reconstruction PSNR /
SSIM on the first 1, 5, 9, 17, 49 frames of each clip as one stream (:func:`vae_streams`).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro

from framememory.headless.comfy_import import import_comfyui

REPO_ROOT = Path(__file__).resolve().parents[1]
ARMS = ("frame_preservation", "frame_preservation_4x4x2", "sliding_window", "off", "pack_forcing", "video_ssm")
PER_SECOND = 16  # frames of one generated second at 16 fps (4 latent frames)


def setup(comfyui_dir: str | None, threads: int) -> None:
    """ComfyUI (:func:`framememory.headless.comfy_import.import_comfyui`: CPU, PyTorch SDPA attention, as a GPU
    attends; benchmarks/long_run.py) and scripts/ importable, ``threads`` torch threads."""
    import torch

    import_comfyui(comfyui_dir, cpu=True, sdpa=True)
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    torch.set_num_threads(threads)


def clip_frames(name: str, frames: int):
    """uint8 ``[frames, 128, 256, 3]`` numpy: the first frames of a held-out clip at 16 fps (scripts/example_eval
    ``read_clip``). Raises ValueError for a training clip or a clip too short."""
    from example_eval import read_clip

    from framememory.training.media import HELDOUT_CLIPS, MEDIA_DIR

    if name not in HELDOUT_CLIPS:
        raise ValueError(f"{name} is not a held-out clip ({HELDOUT_CLIPS}): the probe never scores training footage")
    x = read_clip(str(MEDIA_DIR / name), 256, 128, 16.0, frames)
    if len(x) < frames:
        raise ValueError(f"{name} has {len(x)} frames at 16 fps, the probe needs {frames}")
    return x


def vae_pass(vae, frames):
    """The real frames through the VAE as one stream: uint8 ``[F, H, W, 3]`` -> the same shape."""
    import numpy as np
    import torch

    x = torch.from_numpy(frames).float() / 255.0
    y = vae.decode(vae.encode(x)).reshape(x.shape).clamp(0, 1)
    return np.rint(y.float().numpy() * 255).astype(np.uint8)


def generate(lab, history, mode: str, prompt: str, seed: int, steps: int):
    """One 1 s segment after ``history`` (uint8 ``[N, H, W, 3]``) in memory ``mode``: uint8 ``[16, H, W, 3]``."""
    import numpy as np
    import torch

    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.memory.storyboard import Shot
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder = lab
    clip = StandInTextEncoder()
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    h = torch.from_numpy(history).float() / 255.0
    start, _ = history_from_frames(model, vae, encoder, h, 4, 16.0, h.shape[2], h.shape[1], mode=mode)
    frames, _, _ = run_storyboard(model, vae, clip, encoder, negative, [Shot(0, prompt, 0.0, 1.0)],
                                  SamplerSettings(steps, 1.0, "euler", "simple", seed), h.shape[2], h.shape[1], 16.0, 4,
                                  start, mode=mode)
    return np.rint(frames[:PER_SECOND].clamp(0, 1).float().numpy() * 255).astype(np.uint8)


def probe(lab_dir: str, clips: list[str], history_frames: int, arms: list[str], seeds: list[int], steps: int) -> dict:
    """Every arm whose files ``lab_dir`` has, on every clip and seed, beside the reference rows (module docstring).
    Returns ``{"clips": {clip: {row: score}}, "mean": {row: score}, "beats_last_frame_vae": {arm: bool}}``."""
    import numpy as np
    import torch
    from revisit_eval import prompt_for
    from scores import reference_frames, score

    from framememory.training.lab import load_lab_model
    from framememory.training.lab_recipe import ALL_FILES, MODE_SET

    have = [a for a in arms if a not in MODE_SET or (Path(lab_dir) / ALL_FILES[MODE_SET[a][1]]).is_file()]
    per_clip, t0 = {}, time.perf_counter()
    for name in clips:
        x = clip_frames(name, history_frames + PER_SECOND)
        history, real = x[:history_frames], x[history_frames:]
        rows = {}
        for arm in have:
            lab = load_lab_model(lab_dir, mode=arm)
            mode = "frame_preservation" if arm == "frame_preservation_4x4x2" else arm
            with torch.inference_mode():
                if not rows:
                    refs = reference_frames(history, PER_SECOND, vae_pass(lab[1], x))
                    rows.update({k: score(v, real) for k, v in refs.items()})
                scores = [score(generate(lab, history, mode, prompt_for(name), s, steps), real) for s in seeds]
            rows[arm] = {k: np.mean([s[k] for s in scores], axis=0).round(4).tolist() for k in scores[0]}
            print(f"{name} {arm}: {rows[arm]['psnr_db']:.2f} dB ({time.perf_counter() - t0:.0f} s)", flush=True)
        per_clip[name] = rows
    keys = list(next(iter(per_clip.values())))
    mean = {k: {m: float(np.mean([per_clip[c][k][m] for c in per_clip])) for m in per_clip[clips[0]][k]
                if m != "per_frame_psnr_db"} for k in keys}
    memory = [a for a in have if a != "off"]
    return {"clips": per_clip, "mean": mean, "history_frames": history_frames, "seeds": seeds, "steps": steps,
            "beats_last_frame_vae": {a: mean[a]["psnr_db"] > mean["last_frame_vae"]["psnr_db"] for a in memory},
            "seconds": round(time.perf_counter() - t0, 1)}


def vae_streams(vae_file: str, clips: list[str], lengths: list[int]) -> dict:
    """Held-out reconstruction of a VAE file (a lab VAE or a checkpoint's ``weights.safetensors``, through
    ``comfy.sd.VAE``) on the first ``n`` frames of each clip as one stream, for each ``n`` in ``lengths`` (4k+1):
    ``{n: reconstruction_metrics}`` (training.vae_train). Shows whether a VAE holds up over long streams."""
    from safetensors.torch import load_file

    import comfy.sd

    from framememory.training.vae_train import reconstruction_metrics

    vae = comfy.sd.VAE(sd={k: v.float() for k, v in load_file(vae_file).items()})
    frames = {n: clip_frames(n, max(lengths)) for n in clips}
    import torch

    with torch.inference_mode():
        return {k: reconstruction_metrics(vae, {n: torch.from_numpy(f[:k]) for n, f in frames.items()}) for k in lengths}


@dataclass(frozen=True)
class Args:
    """The lab recipe's check of its DiT: the first generated second after a static-camera held-out history."""

    lab_dir: str = str(REPO_ROOT / "lab_model")
    """lab set folder"""
    clips: tuple[str, ...] = ("carphone_pristine.mp4", "tree.avi")
    """held-out static-camera clips"""
    history_frames: int = 45
    """history frames, 13 + 16k (45 = 2.8 s)"""
    modes: tuple[Literal[ARMS], ...] = ARMS  # type: ignore[valid-type]
    """the arms to run (those the lab set has files for)"""
    seeds: tuple[int, ...] = (0, 1)
    """sampling seeds"""
    steps: int = 12
    """sampling steps (the main job's 12)"""
    threads: int = 2
    """torch CPU threads"""
    out: Optional[str] = None
    """result JSON (default <lab-dir>/probe_first_second.json)"""
    vae_streams: Optional[str] = None
    """instead: reconstruction PSNR of this VAE file on the first 1/5/9/17/... frames of --clips"""
    lengths: tuple[int, ...] = (1, 5, 9, 17, 49)
    """stream lengths (frames, 4k+1) of --vae-streams"""
    comfyui_dir: Optional[str] = None
    """ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)"""


def main(argv: list[str] | None = None) -> int:
    a = tyro.cli(Args, args=argv, description=__doc__.split("\n")[0])
    if (a.history_frames - 13) % 16 or a.history_frames < 13:
        raise SystemExit(f"--history-frames must be 13 + 16k (whole segments of the VAE stream), got {a.history_frames}")
    setup(a.comfyui_dir, a.threads)
    if a.vae_streams:
        res = vae_streams(a.vae_streams, list(a.clips), list(a.lengths))
        for k, v in res.items():
            print(f"{k:4d} frames: PSNR {v['psnr_db']:.2f} dB SSIM {v['ssim']:.3f} {v['per_clip']}")
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
        return 0
    res = probe(a.lab_dir, list(a.clips), a.history_frames, list(a.modes), list(a.seeds), a.steps)
    print(f"{'row':28s} {'PSNR':>7s} {'SSIM':>6s} {'thumb PSNR':>10s}")
    for k, v in res["mean"].items():
        print(f"{k:28s} {v['psnr_db']:7.2f} {v['ssim']:6.3f} {v.get('thumb_psnr_db', float('nan')):10.2f}")
    print("beats last frame through the VAE:", res["beats_last_frame_vae"])
    out = Path(a.out or Path(a.lab_dir) / "probe_first_second.json")
    out.write_text(json.dumps(res, indent=1) + "\n")
    print("written:", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
