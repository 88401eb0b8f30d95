"""Settings of the small-scale reproduction (training/reproduce.py): run sizes (:class:`Preset`, :data:`PRESETS`), the
Stage I variants and the paper's v1 numbers, the cache folder, the log line and where windows of a clip start (both
VAEs cut clips with :func:`windows`)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache" / "reproduction"


@dataclass(frozen=True)
class Preset:
    """Sizes of one reproduction run. Units: pixels, latent frames (= frames sampled at ``fps / 4``), steps."""

    width: int = 256                  # frame width in pixels (multiple of 64 so 4x4 memory cells divide)
    height: int = 128                 # frame height in pixels
    fps: float = 16.0                 # nominal video rate; clips are sampled at fps / 4 (one latent frame each)
    history: int = 8                  # latent frames per Stage I history window (2 s)
    segment: int = 4                  # latent frames of the Stage II next segment (1 s)
    train_stride: int = 2             # latent frames between training window starts
    max_seconds: float = 150.0        # seconds decoded per clip at most (Big Buck Bunny is 596 s)
    dim: int = 128                    # DiT width D
    layers: int = 4                   # DiT blocks
    heads: int = 2                    # DiT attention heads
    ffn: int = 256                    # DiT FFN width
    hr_channels: tuple = (16, 32, 64, 64)  # HR branch widths (paper: 64, 128, 256, 512)
    attn_heads: int = 4               # HR branch attention heads
    lora_rank: int = 64
    batch_size: int = 4
    lr: float = 1e-3
    timestep_loc: float = 1.5         # diffusion time t ~ L(loc, 1) in every training stage (module docstring)
    base_steps: int = 600             # base pretraining of the DiT (all weights, no memory)
    base_lr: float = 1e-3
    stage1_steps: int = 600
    stage2_steps: int = 200
    warmup_steps: int = 20
    mixed_precision: str = "no"
    eval_queries: int = 4             # regenerated frames per held-out history
    eval_steps: int = 20              # Euler steps of the frame-query sampler
    eval_windows: int = 3             # held-out histories per clip at most
    stage2_eval_windows: int = 2      # held-out (history, segment) pairs per clip at most
    n_t: int = 8                      # diffusion times of the held-out Stage II loss
    threads: int = 1                  # torch CPU threads (1: the 2 shared cores do not oversubscribe)
    seeds: tuple = (0,)
    # --vae lab only (training/reproduce_labvae.py): training chunks, each one VAE stream, of video frames at fps
    lab_chunk_frames: int = 65        # frames per chunk (1 + 4k: 17 latent frames)
    lab_chunk_stride: int = 260       # frames between chunk starts (spread over long clips, as the lab shards)
    lab_max_chunks: int = 4           # chunks per training clip at most (the lab VAE encodes ~1 s of video per 10 s)


PRESETS = {
    # about 15-25 min on 2 CPU cores: 256x128 frames (16x32 latent, 8x16 DiT tokens), histories of 8 latent frames
    # (16 memory tokens at 4x4x2, 128 at 2x2x1), a 4-block width-128 Wan.
    "cpu-small": Preset(),
    # a few seconds of a run, for tests and smoke checks (numbers meaningless)
    "smoke": Preset(max_seconds=6.0, base_steps=2, stage1_steps=2, stage2_steps=2, warmup_steps=0, eval_queries=2,
                    eval_steps=2, eval_windows=1, stage2_eval_windows=1, n_t=2, batch_size=2, lora_rank=8,
                    lab_chunk_frames=45, lab_max_chunks=1),
    # one GPU: 448x256 frames (32x56 latent, 16x28 tokens), 16-frame histories (4 s), an 8-block width-512 Wan,
    # the paper's HR widths and LoRA rank 128, bf16 autocast.
    "gpu": Preset(width=448, height=256, history=16, train_stride=2, max_seconds=600.0, dim=512, layers=8, heads=4,
                  ffn=2048, hr_channels=(64, 128, 256, 512), attn_heads=8, lora_rank=128, batch_size=8, lr=3e-4,
                  base_steps=3000, base_lr=3e-4, stage1_steps=3000, stage2_steps=1500, warmup_steps=100,
                  mixed_precision="bf16", eval_queries=8, eval_steps=30, eval_windows=4, stage2_eval_windows=3,
                  n_t=8, threads=0, seeds=(0,)),
}

VARIANTS = (  # (name, rate, kind); kind: large_patchifier | only_lr | without_lr | proposed | shared_timestep
    ("Large Patchifier", "4x4x2", "large_patchifier"),
    ("Only LR", "4x4x2", "only_lr"),
    ("Without LR", "4x4x2", "without_lr"),
    ("Proposed", "4x4x2", "proposed"),
    ("Proposed", "2x2x1", "proposed"),
    # the memory-token timestep rule measured: Proposed 4x4x2 with memory tokens at the video tokens' timestep
    # (EncoderConfig.memory_timestep "shared") instead of the rule's timestep 0
    ("Proposed, shared timestep", "4x4x2", "shared_timestep"),
)
PAPER_V1 = {  # arXiv 2512.23851 v1 frame retrieval (PSNR, SSIM, LPIPS), Wan 2.1 480p
    "Large Patchifier 4x4x2": (12.93, 0.412, 0.365), "Only LR 4x4x2": (15.21, 0.472, 0.212),
    "Without LR 4x4x2": (15.73, 0.423, 0.198), "Proposed 4x4x2": (17.41, 0.596, 0.171),
    "Proposed 2x2x1": (20.19, 0.705, 0.121),
}


def log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def windows(n: int, length: int, stride: int, limit: int = 0) -> list[int]:
    """Start indices of windows of ``length`` in ``n`` frames every ``stride``; with ``limit``, at most that many,
    evenly spread."""
    starts = list(range(0, n - length + 1, stride))
    if limit and len(starts) > limit:
        idx = [round(i * (len(starts) - 1) / (limit - 1)) for i in range(limit)] if limit > 1 else [len(starts) // 2]
        starts = [starts[i] for i in idx]
    return starts
