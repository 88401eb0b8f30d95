"""The data of the small-scale reproduction (training/reproduce.py, steps 1-2 of its docstring): clips fetched and
decoded (:mod:`training.media`), the VAE (the fitted patch-PCA stand-in, or the lab model's Wan VAE with ``--vae
lab``), and the training windows and held-out items encoded with it."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from .media import HELDOUT_CLIPS, TRAIN_CLIPS, cached_frames, fetch_media
from .reproduce_config import CACHE_DIR, Preset, log, windows


def load_clip(path: Path, p: Preset):
    """Frames of one video, sampled at ``p.fps / 4``, covering ``p.width x p.height``, at most ``p.max_seconds``:
    uint8 tensor ``[F, H, W, 3]`` (:func:`cached_frames`, cached in ``.cache/reproduction/frames/``)."""
    return cached_frames(path, p.width, p.height, p.fps / 4, p.max_seconds, CACHE_DIR / "frames")


class WindowDataset:
    """Windows of ``length`` latent frames of every clip latent, as ``{"latent": [C, T, h, w], "context": [L, 4096]}``
    (a map-style dataset for ``training.loop.train``; optionally also ``"frames"`` ``[T, H, W, 3]`` float 0..1)."""

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



def _clip_needs(p: Preset, vae_kind: str) -> tuple[float, float, int, int]:
    """``(sample fps, seconds, frames a training clip needs, frames a held-out clip needs)``: the stand-in samples at
    ``fps / 4`` (one latent frame per frame); the lab VAE reads ``fps`` and encodes ``1 + 4k`` frames to ``1 + k``
    latent frames, and needs only the frames its training chunks cover."""
    if vae_kind != "lab":
        return p.fps / 4, p.max_seconds, p.history + p.segment, p.history
    from framememory.training.reproduce_labvae import stream_frames

    covered = (p.lab_max_chunks - 1) * p.lab_chunk_stride + p.lab_chunk_frames
    return p.fps, min(p.max_seconds, covered / p.fps), stream_frames(p.history + p.segment), stream_frames(p.history)


def load_clips(p: Preset, vae_kind: str = "standin") -> tuple[dict, dict, list[str], list[str], dict]:
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
    """The training datasets and held-out items of :class:`RunContext` (keys ``train1``, ``train2``, ``train_base``,
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
    of :class:`RunContext` encoded with it (cached under ``CACHE_DIR``, keyed by clips, sizes, chunking and the VAE
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



def clips_record(p: Preset, clips: dict, train_names: list[str], held_names: list[str], media: dict,
                  too_short: dict, vae_kind: str = "standin") -> dict:
    """The ``clips`` entry of the result: frames per training / held-out clip, the missing and too short clips and
    the sample rate (frames per second)."""
    return {"train": {n: int(clips[n].shape[0]) for n in train_names},
            "heldout": {n: int(clips[n].shape[0]) for n in held_names}, "missing": media["missing"],
            "too_short": too_short,
            "sample_fps": _clip_needs(p, vae_kind)[0]}


def vae_and_windows(p: Preset, preset_name: str, vae_kind: str, clips: dict, train_names: list[str],
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

