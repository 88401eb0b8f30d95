"""Data stage of training (arXiv 2512.23851 trains on precomputed latents and text conditions).

A folder of videos (``.mp4 .avi .mov .mkv .webm`` decoded with PyAV, animated ``.webp`` / ``.gif`` with Pillow),
with optional timestamped storyboard captions, becomes a folder of safetensors shards, one per clip-chunk::

    OUT/manifest.json                          settings, per-video status, shard list, failed videos
    OUT/<video key>/chunk_00000.safetensors    tensors  latent [C, T, h, w]  (the VAE's latent of the chunk)
                                                        lr_latent_<rate> [C, Tm, h', w'] (per LR rate, e.g.
                                                                 lr_latent_4x4x2: the VAE of memory.encoder.lr_clip
                                                                 of the chunk, the history encoder's LR branch input)
                                                        text   [L, D]        (the text condition of its prompt)
                                                        pooled [P]           (optional: its pooled text embedding,
                                                                              HunyuanVideo's CLIP-L y, P = 768)
                                               metadata "framememory_shard": JSON, see ``shard_metadata``

``latent`` is what ``comfy.sd.VAE.encode`` returns (VAE space); the training DiT needs model space, i.e. the
model's ``process_latent_in``: :class:`ModelSpaceDataset` applies the family's latent format on loading.
``lr_latent_<rate>`` is the same VAE's latent of the chunk's LR clip (:func:`memory.encoder.lr_clip`, the chunk as
one stream from its first frame, covering its whole memory time steps): exactly what the nodes compute for the same
frames at inference (``models/encoding.py``: the same function through the same VAE stream), so training and
inference give the same memory tokens (tested). Format ``framememory-shards/2``; version 1 shards (no LR latents)
are refused with the command that rebuilds them.

Captions (both optional; a video without any gets ``default_prompt``):

* a JSON sidecar next to the video, ``<name>.<ext>.json`` or ``<name>.json``:
  ``{"shots": [{"start_s": 0.0, "end_s": 2.0, "prompt": "a cyclist"}, ...]}``
* one ``captions.csv`` in the folder, header ``video,start_s,end_s,prompt`` (``video``: file name relative to
  the folder). A sidecar wins over the CSV for the same video.

Each chunk gets the prompt of the shot nearest its middle time: the shot whose ``[start_s, end_s)`` contains it,
else the shot whose interval is closest (ties: the earlier shot).

Clips: every frame is center-cropped and area-resized to ``width x height`` by the nodes' own
:func:`memory.frames.fit_frames`, the video is resampled to ``fps`` by
nearest frame in time, and cut into chunks of ``chunk_frames`` frames (4k+1 for Wan's causal VAE) every
``stride`` frames. Frames that do not fill a last chunk are dropped.

Robustness: shards are written to a temporary file and renamed, so a shard on disk is always complete; a
finished shard is skipped on a rerun (and a video whose shards are all there, unchanged since, is not even
decoded). A video whose size, mtime or captions differ from the manifest's record is re-encoded from scratch.
Changing ClipSettings needs a new output folder (ValueError otherwise). A video that cannot be opened or decoded is logged, listed under ``failed`` in the manifest and
skipped. Errors from the encoders themselves (out of memory, a bad model) are not the video's fault: they stop
the run, and a rerun resumes.

The encoders are plain callables, so this module needs no ComfyUI:
``encode_video(frames [F, H, W, 3] float32 in 0..1) -> latent [1, C, T, h, w]`` and
``encode_text(prompt: str) -> [L, D]`` (``[1, L, D]`` is accepted too), or ``-> (text [L, D], pooled [P] or [1, P])``
for models with a pooled text input (HunyuanVideo). ``training/prepare_data.py`` builds them from ComfyUI models.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..memory.config import EncoderConfig
from ..memory.encoder import lr_clip, lr_frames_per_span
from ..memory.frames import fit_frames, resample_indexed, to_uint8
from ..memory.grid import memory_grid
from ..memory.io import write_file_atomic
from ..models.video_reader import open_container, timed_frames

log = logging.getLogger("framememory.training.data")

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
PIL_EXTS = (".webp", ".gif")
FORMAT = "framememory-shards/2"  # /2: shards carry lr_latent_<rate> (LR branch input); /1 had none
REBUILD = ("rebuild them with training/prepare_data.py (same arguments, a new --out folder; --lr-rates RATE for "
           "the encoder's rate)")
META_KEY = "framememory_shard"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class VideoReadError(RuntimeError):
    """A video could not be opened or decoded (the file's fault, not the encoders')."""


@dataclass(frozen=True)
class ClipSettings:
    width: int = 832          # output frame width in pixels (multiple of 16)
    height: int = 480         # output frame height in pixels (multiple of 16)
    fps: float = 16.0         # frames per second after resampling (Wan 2.1: 16)
    chunk_frames: int = 81    # video frames per chunk; 4k+1 for the causal VAE (81 -> 21 latent frames)
    stride: int = 0           # frames between chunk starts; 0 = chunk_frames (no overlap)
    max_chunks: int = 0       # chunks per video at most; 0 = no limit
    dtype: str = "bfloat16"   # storage dtype of `latent` and `text`: float32, float16 or bfloat16
    default_prompt: str = ""  # prompt of chunks from a video without captions
    lr_rates: tuple = ("4x4x2",)  # rates whose LR latents the shards carry (the history encoder's rate)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 16 or self.height % 16:
            raise ValueError(f"width and height must be positive multiples of 16, got {self.width}x{self.height}")
        if self.chunk_frames < 1 or (self.chunk_frames - 1) % 4:
            raise ValueError(f"chunk_frames must be 4k+1 (1, 5, ..., 81), got {self.chunk_frames}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.stride < 0 or self.max_chunks < 0:
            raise ValueError("stride and max_chunks must be >= 0")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        object.__setattr__(self, "lr_rates", tuple(EncoderConfig(rate=r).rate_str for r in self.lr_rates))
        for rate in self.lr_rates:
            enc = EncoderConfig(rate=rate)
            _, hm, wm = memory_grid((1, self.height // enc.vae_stride[1], self.width // enc.vae_stride[2]), enc)
            if min(hm, wm) < 1:
                raise ValueError(f"frames of {self.width}x{self.height} are below one memory token at LR rate {rate}: "
                                 "use a larger size or a finer rate (lr_rates / --lr-rates, e.g. 2x2x2)")

    @property
    def step(self) -> int:
        return self.stride or self.chunk_frames


@dataclass(frozen=True)
class CaptionShot:
    start_s: float
    end_s: float
    prompt: str


# ----------------------------------------------------------------------------------------------- captions


def _parse_shots(rows, where: str) -> list[CaptionShot]:
    shots = []
    for i, r in enumerate(rows):
        try:
            shot = CaptionShot(float(r["start_s"]), float(r["end_s"]), str(r["prompt"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: shot {i} needs start_s, end_s (numbers) and prompt: {e}") from None
        if shot.end_s < shot.start_s:
            raise ValueError(f"{where}: shot {i} ends ({shot.end_s} s) before it starts ({shot.start_s} s)")
        shots.append(shot)
    return sorted(shots, key=lambda s: s.start_s)


def load_captions(folder: str | os.PathLike, videos: list[Path]) -> dict[Path, list[CaptionShot]]:
    """Captions of ``videos`` (paths inside ``folder``) from sidecar JSONs and ``folder/captions.csv``.

    Returns {video path: shots sorted by start_s}; videos without captions are absent.
    Raises ValueError on a malformed sidecar or CSV (a typo in captions should not silently train on "").
    """
    folder = Path(folder)
    out: dict[Path, list[CaptionShot]] = {}
    csv_path = folder / "captions.csv"
    if csv_path.exists():
        by_name: dict[str, list[dict]] = {}
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"video", "start_s", "end_s", "prompt"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{csv_path}: missing columns {sorted(missing)} (need video,start_s,end_s,prompt)")
            for row in reader:
                by_name.setdefault(row["video"].strip().replace("\\", "/"), []).append(row)
        for v in videos:
            rows = by_name.get(v.relative_to(folder).as_posix())
            if rows:
                out[v] = _parse_shots(rows, f"{csv_path} ({v.name})")
    for v in videos:
        for side in (v.with_name(v.name + ".json"), v.with_suffix(".json")):
            if side.exists():
                with open(side, encoding="utf-8") as f:
                    data = json.load(f)
                if not isinstance(data, dict) or not isinstance(data.get("shots"), list):
                    raise ValueError(f"{side}: expected {{\"shots\": [{{\"start_s\", \"end_s\", \"prompt\"}}, ...]}}")
                out[v] = _parse_shots(data["shots"], str(side))
                break
    return out


def prompt_at(shots: list[CaptionShot], t_s: float) -> tuple[int, str] | None:
    """(index, prompt) of the shot nearest time ``t_s`` (seconds): one containing it in [start_s, end_s), else the
    one with the closest interval (ties: the earlier). None when ``shots`` is empty."""
    best, best_d = None, math.inf
    for i, s in enumerate(shots):
        d = 0.0 if s.start_s <= t_s < s.end_s else min(abs(t_s - s.start_s), abs(t_s - s.end_s))
        if d < best_d:
            best, best_d = i, d
    return None if best is None else (best, shots[best].prompt)


# ----------------------------------------------------------------------------------------------- decoding


def list_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files under ``folder`` (recursive, sorted), by extension (see VIDEO_EXTS, PIL_EXTS)."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS + PIL_EXTS)


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """One decoded RGB frame ``[H, W, 3]`` uint8 through the nodes' own :func:`memory.frames.fit_frames` (centre
    crop + area resize), back to uint8: training shards and the Storyboard see the same pixels of a clip."""
    x = fit_frames(torch.from_numpy(np.array(rgb, copy=True))[None], width, height)  # a writable copy
    return to_uint8(x)[0].numpy()


def _frames_av(path: Path, width: int, height: int) -> Iterator[tuple[float, np.ndarray]]:
    with open_container(path) as container:
        if not container.streams.video:
            raise VideoReadError("no video stream")
        for t, rgb in timed_frames(container):
            yield t, _fit(rgb, width, height)


def _frames_pil(path: Path, width: int, height: int) -> Iterator[tuple[float, np.ndarray]]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        t = 0.0
        for frame in ImageSequence.Iterator(im):
            yield t, _fit(np.asarray(frame.convert("RGB")), width, height)
            t += (frame.info.get("duration") or 1000 / 16) / 1000.0


def decode_frames(path: str | os.PathLike, width: int, height: int) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (time in seconds from the first frame, frame uint8 [height, width, 3]) scaled to cover and center-cropped.
    Any failure to open or decode raises VideoReadError."""
    path = Path(path)
    gen = _frames_pil if path.suffix.lower() in PIL_EXTS else _frames_av
    try:
        yield from gen(path, width, height)
    except VideoReadError:
        raise
    except Exception as e:  # av.error.*, PIL.UnidentifiedImageError, OSError, ...
        raise VideoReadError(f"{type(e).__name__}: {e}") from e


def resample(frames: Iterator[tuple[float, np.ndarray]], fps: float) -> Iterator[np.ndarray]:
    """Frames at times k / fps (k = 0, 1, ...): for each, the source frame nearest in time (ties: the earlier).
    Stops at the last source frame (:func:`memory.frames.resample_indexed`)."""
    return (a for _, a in resample_indexed(frames, fps))


def iter_chunks(path: str | os.PathLike, cfg: ClipSettings) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first frame index at cfg.fps, frames uint8 [chunk_frames, height, width, 3]) for each chunk of a video.
    Raises VideoReadError (possibly after some chunks) when the file cannot be decoded."""
    F, n, buf, buf_start, next_start = cfg.chunk_frames, 0, [], 0, 0
    for k, a in enumerate(resample(decode_frames(path, cfg.width, cfg.height), cfg.fps)):
        if k < next_start:
            continue
        if not buf:
            buf_start = k
        buf.append(a)
        if len(buf) == F:
            yield buf_start, np.stack(buf)
            n += 1
            if cfg.max_chunks and n >= cfg.max_chunks:
                return
            next_start = buf_start + cfg.step
            buf = buf[next_start - buf_start:]
            buf_start = next_start


# ----------------------------------------------------------------------------------------------- shards


def video_key(folder: Path, video: Path) -> str:
    """Folder name of a video's shards: its path relative to the input folder, '/' -> '__', other odd characters
    -> '_', plus a short hash of the relative path so different paths never collide."""
    rel = video.relative_to(folder).as_posix()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", rel.replace("/", "__"))
    return f"{safe}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"


def shard_metadata(*, source: str, key: str, chunk: int, start: int, cfg: ClipSettings, prompt: str,
                   shot: int | None, source_size: tuple[int, int] | None = None) -> dict:
    """The JSON stored under metadata key ``framememory_shard``. Frame indices are at ``fps`` (the resampled rate);
    ``frame_range`` is [first, end) and ``time_range_s`` is the same span in seconds of the source video."""
    end = start + cfg.chunk_frames
    return {"format": FORMAT, "source": source, "video_key": key, "chunk": chunk, "fps": cfg.fps,
            "frame_range": [start, end], "time_range_s": [start / cfg.fps, end / cfg.fps],
            "resolution": [cfg.width, cfg.height], "prompt": prompt, "shot": shot}


def save_shard_atomic(path: Path, latent: torch.Tensor, text: torch.Tensor, meta: dict,
                      pooled: torch.Tensor | None = None, lr_latents: dict | None = None) -> None:
    """Write ``path`` atomically (:func:`memory.io.save_safetensors_atomic`): readers never see half a shard.
    ``pooled`` ``[P]``: the optional pooled text embedding (HunyuanVideo); ``lr_latents``: ``{rate: [C, Tm, h', w']}``
    stored as ``lr_latent_<rate>``."""
    from ..memory.io import save_safetensors_atomic

    tensors = {"latent": latent, "text": text}
    if pooled is not None:
        tensors["pooled"] = pooled.reshape(-1)
    tensors.update({f"lr_latent_{r}": v for r, v in (lr_latents or {}).items()})
    save_safetensors_atomic(str(path), tensors, {META_KEY: json.dumps(meta)})


def shard_ok(path: Path) -> bool:
    """True when ``path`` is a readable shard with ``latent``, ``text`` and our metadata (header check only)."""
    if not path.exists():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return {"latent", "text"} <= set(f.keys()) and META_KEY in (f.metadata() or {})
    except Exception:
        return False


def read_shard_item(path: str | os.PathLike, lr_rate: str | tuple | None = None) -> dict:
    """One shard as ``{"latent": [C, T, h, w], "text": [L, D], "meta": dict}`` plus ``"pooled": [P]`` when it has
    one and ``"lr_latent": [C, Tm, h', w']`` of ``lr_rate`` when asked for (a list, one per rate, for a tuple of
    rates: an EncoderSet's parts), tensors in their stored dtype.

    Raises:
        ValueError: the shard has no LR latent at a rate asked for (names the rates it has and the rebuild command).
    """
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        item = {k: f.get_tensor(k) for k in ("latent", "text", "pooled") if k in keys}
        item["meta"] = json.loads(f.metadata()[META_KEY])
        rates = [] if lr_rate is None else [lr_rate] if isinstance(lr_rate, str) else list(lr_rate)
        lrs = []
        for rate in rates:
            key = f"lr_latent_{EncoderConfig(rate=rate).rate_str}"
            if key not in keys:
                have = sorted(k[len("lr_latent_"):] for k in keys if k.startswith("lr_latent_"))
                raise ValueError(f"shard {path} has no LR latent at rate {rate} (it has {have or 'none'}): {REBUILD}")
            lrs.append(f.get_tensor(key))
        if lrs:
            item["lr_latent"] = lrs[0] if isinstance(lr_rate, str) else lrs
    return item


def read_shard(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(latent [C, T, h, w], text [L, D], metadata dict) of one shard (:func:`read_shard_item`)."""
    item = read_shard_item(path)
    return item["latent"], item["text"], item["meta"]


class ShardDataset(torch.utils.data.Dataset):
    """The shards listed in ``root/manifest.json`` as a map-style dataset of
    {"latent": [C, T, h, w], "text": [L, D], "meta": dict} plus "pooled": [P] for shards that have it and
    "lr_latent" of ``lr_rate`` (the encoder's rate, e.g. "4x4x2") when given.

    Raises:
        FileNotFoundError: no manifest. ValueError: shards of an older format, or without LR latents at ``lr_rate``.
    """

    def __init__(self, root: str | os.PathLike, lr_rate: str | tuple | None = None) -> None:
        self.root = Path(root)
        manifest = json.loads((self.root / "manifest.json").read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.root} holds shards of format {manifest.get('format')!r}, this version reads "
                             f"{FORMAT!r} (shards now carry the LR branch's latents): {REBUILD}")
        rates = tuple(manifest.get("settings", {}).get("lr_rates", ()))
        for rate in ([] if lr_rate is None else [lr_rate] if isinstance(lr_rate, str) else lr_rate):
            if EncoderConfig(rate=rate).rate_str not in rates:
                raise ValueError(f"{self.root} has LR latents at rates {list(rates)}, not {rate}: {REBUILD}")
        self.lr_rate = lr_rate
        self.paths = [self.root / s for v in manifest["videos"] for s in v.get("shards", [])]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return read_shard_item(self.paths[i], self.lr_rate)


class ModelSpaceDataset(torch.utils.data.Dataset):
    """A dataset of VAE-space ``latent`` items (:class:`ShardDataset`) seen in the DiT's model space:
    ``latent_format.process_in(latent)`` (ComfyUI's ``comfy.latent_formats``, as ``BaseModel.process_latent_in``:
    Wan 2.1 ``(z - mean) / std`` per channel, HunyuanVideo ``z * 0.476986``), float32; other keys unchanged."""

    def __init__(self, dataset, latent_format) -> None:
        self.dataset, self.latent_format = dataset, latent_format

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        to_model = lambda z: self.latent_format.process_in(z.float()[None])[0]  # noqa: E731
        item["latent"] = to_model(item["latent"])
        lr = item.get("lr_latent")
        if lr is not None:
            item["lr_latent"] = [to_model(z) for z in lr] if isinstance(lr, (list, tuple)) else to_model(lr)
        return item


# ----------------------------------------------------------------------------------------------- the run


def chunk_lr_latents(pixels: torch.Tensor, latent_frames: int, cfg: ClipSettings,
                     encode_video: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{rate: [1, C, Tm, h', w']}``: for each of ``cfg.lr_rates``, the VAE latent of :func:`memory.encoder.lr_clip`
    of the chunk's frames ``[F, H, W, 3]`` (0..1) over its whole memory time steps (the chunk is one stream from
    its first frame; frames past the last whole step are left out, as the memory grid leaves them out)."""
    out = {}
    for rate in cfg.lr_rates:
        enc = EncoderConfig(rate=rate)
        unit = enc.patch_size[0] * enc.rate[2]
        frames, _ = lr_frames_per_span(latent_frames // unit * unit, enc, stream_start=True)
        out[rate] = encode_video(lr_clip(pixels[:frames], enc, stream_start=True))
    return out


def _unbatched(t: torch.Tensor, ndim: int, what: str) -> torch.Tensor:
    """``t`` detached with a leading batch of 1 removed; ValueError unless it then has ``ndim`` dimensions."""
    t = t.detach()
    if t.ndim == ndim + 1 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != ndim:
        raise ValueError(f"{what}, got {tuple(t.shape)}")
    return t


def _as_text(t: torch.Tensor) -> torch.Tensor:
    return _unbatched(t, 2, "encode_text must return [L, D] (or [1, L, D])")


def _as_pooled(p: torch.Tensor) -> torch.Tensor:
    return _unbatched(p, 1, "encode_text's pooled embedding must be [P] (or [1, P])")


def _as_latent(z: torch.Tensor) -> torch.Tensor:
    z = z.detach()
    if z.ndim != 5 or z.shape[0] != 1:
        raise ValueError(f"encode_video must return [1, C, T, h, w], got {tuple(z.shape)}")
    return z[0]


class _Preparation:
    """One :func:`prepare_dataset` run: the manifest being written, the encoders and the text cache."""

    def __init__(self, input_dir: Path, out_dir: Path, cfg: ClipSettings, encode_video, encode_text) -> None:
        self.input_dir, self.out_dir, self.cfg = input_dir, out_dir, cfg
        self.encode_video, self.encode_text = encode_video, encode_text
        self.dtype = _DTYPES[cfg.dtype]
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        settings = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as the manifest stores it (tuples -> lists)
        self.previous = self._previous(settings)
        self.manifest = {"format": FORMAT, "settings": settings, "input_dir": str(input_dir), "videos": [],
                         "failed": [], "run": {"written": 0, "skipped": 0, "failed": 0}}

    def _previous(self, settings: dict) -> dict:
        """Entries of an earlier run's manifest by source (empty without one). Raises ValueError for other settings."""
        path = self.out_dir / "manifest.json"
        if not path.exists():
            return {}
        old = json.loads(path.read_text())
        if old.get("settings") != settings:
            raise ValueError(f"{self.out_dir} holds shards made with settings {old.get('settings')}, not {settings}: "
                             "use another output folder")
        return {v["source"]: v for v in old.get("videos", [])}

    def video(self, video: Path, shots: list[CaptionShot]) -> dict:
        """Shards of one video (skipped when an earlier run finished it unchanged). Returns its manifest entry."""
        rel, key, st = video.relative_to(self.input_dir).as_posix(), video_key(self.input_dir, video), video.stat()
        captions_sha1 = hashlib.sha1(json.dumps([dataclasses.astuple(s) for s in shots]).encode()).hexdigest()
        entry = {"source": rel, "key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "captions_sha1": captions_sha1, "status": "ok", "chunks": 0, "shards": []}
        prev = self.previous.get(rel)
        same = prev is not None and all(prev.get(k) == entry[k] for k in ("size", "mtime_ns", "captions_sha1"))
        shard_dir = self.out_dir / key
        if same and prev.get("status") == "ok" and prev.get("shards") and all(
                shard_ok(self.out_dir / s) for s in prev["shards"]):
            entry.update(chunks=prev["chunks"], shards=prev["shards"])  # unchanged and complete: not even decoded
            self.manifest["run"]["skipped"] += len(prev["shards"])
            return entry
        if prev is not None and not same and shard_dir.is_dir():  # video or captions changed since: redo it
            log.info("%s or its captions changed: re-encoding it", video)
            for old in shard_dir.glob("chunk_*.safetensors"):
                old.unlink()
        if shard_dir.is_dir():
            for stale in shard_dir.glob("*.tmp*"):  # left by a killed process
                stale.unlink()
        self._chunks(video, shots, entry, shard_dir)
        if entry["status"] == "ok" and entry["chunks"] == 0:
            entry["status"] = "too_short"
            log.warning("%s is shorter than one chunk (%d frames at %g fps): no shards", video,
                        self.cfg.chunk_frames, self.cfg.fps)
        return entry

    def _chunks(self, video: Path, shots: list[CaptionShot], entry: dict, shard_dir: Path) -> None:
        """Write the shards of every chunk of ``video`` not written yet; an unreadable video marks ``entry`` failed."""
        run, chunks = self.manifest["run"], iter_chunks(video, self.cfg)
        while True:
            try:
                item = next(chunks, None)
            except VideoReadError as e:
                entry["status"], entry["error"] = "failed", str(e)
                self.manifest["failed"].append({"source": entry["source"], "error": str(e),
                                                "chunks_written": entry["chunks"]})
                run["failed"] += 1
                log.warning("skipping unreadable video %s: %s", video, e)
                return
            if item is None:
                return
            path = shard_dir / f"chunk_{entry['chunks']:05d}.safetensors"
            entry["chunks"] += 1
            entry["shards"].append(path.relative_to(self.out_dir).as_posix())
            if shard_ok(path):
                run["skipped"] += 1
                continue
            self._write_chunk(path, entry, item, shots)
            run["written"] += 1

    def _text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(text [L, D], pooled [P] or None)`` of ``prompt`` (encoded once per distinct prompt)."""
        if prompt not in self.text_cache:
            enc = self.encode_text(prompt)
            text, pooled = enc if isinstance(enc, tuple) else (enc, None)
            self.text_cache[prompt] = (_as_text(text).to("cpu", self.dtype),
                                       None if pooled is None else _as_pooled(pooled).to("cpu", self.dtype))
        return self.text_cache[prompt]

    def _write_chunk(self, path: Path, entry: dict, item: tuple[int, np.ndarray], shots: list[CaptionShot]) -> None:
        """Encode one chunk (latent, LR latents, text) and write its shard atomically."""
        cfg, (start, frames) = self.cfg, item
        found = prompt_at(shots, (start + (cfg.chunk_frames - 1) / 2) / cfg.fps)
        shot, prompt = found if found else (None, cfg.default_prompt)
        with torch.no_grad():
            text, pooled = self._text(prompt)
            pixels = torch.from_numpy(frames).float().div_(255.0)  # [F, H, W, 3] 0..1
            latent = _as_latent(self.encode_video(pixels)).to("cpu", self.dtype)
            lr_latents = {r: _as_latent(lr).to("cpu", self.dtype)
                          for r, lr in chunk_lr_latents(pixels, latent.shape[1], cfg, self.encode_video).items()}
        path.parent.mkdir(exist_ok=True)
        meta = shard_metadata(source=entry["source"], key=entry["key"], chunk=entry["chunks"] - 1, start=start,
                              cfg=cfg, prompt=prompt, shot=shot)
        save_shard_atomic(path, latent, text, meta, pooled=pooled, lr_latents=lr_latents)

    def save(self, done: list[str]) -> None:
        """Write the manifest with the videos done so far plus the earlier run's others."""
        videos = self.manifest["videos"] + [v for s, v in self.previous.items() if s not in done]
        write_file_atomic(self.out_dir / "manifest.json", json.dumps({**self.manifest, "videos": videos}, indent=1))


def prepare_dataset(input_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: ClipSettings,
                    encode_video: Callable[[torch.Tensor], torch.Tensor], encode_text: Callable[[str], torch.Tensor],
                    progress: bool = True) -> dict:
    """Encode every video under ``input_dir`` into shards under ``out_dir`` (see the module docstring).

    Args:
        encode_video: frames [F, H, W, 3] float32 0..1 (F = cfg.chunk_frames) -> latent [1, C, T, h, w] (also used
            for the LR clips of ``cfg.lr_rates``).
        encode_text: prompt -> [L, D] (or [1, L, D]), or -> (that, pooled [P] or [1, P]) to store a pooled text
            embedding too (HunyuanVideo); called once per distinct prompt.
        progress: show a tqdm bar over videos.
    Returns the manifest (also written to ``out_dir/manifest.json`` after every video), with run counters
    under "run": written, skipped (shards already there), failed (videos).
    Raises:
        ValueError: ``out_dir`` holds shards made with other ClipSettings; malformed captions.
        Whatever the encoders raise (the run stops; rerun to resume).
    """
    input_dir, out_dir = Path(input_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prep = _Preparation(input_dir, out_dir, cfg, encode_video, encode_text)
    videos = list_videos(input_dir)
    captions = load_captions(input_dir, videos)
    manifest, run = prep.manifest, prep.manifest["run"]
    try:
        from tqdm import tqdm
        bar = tqdm(videos, unit="video", desc="prepare", disable=not progress)
    except ImportError:  # tqdm ships with ComfyUI; the run does not need it
        bar = videos
    for video in bar:
        manifest["videos"].append(prep.video(video, captions.get(video, [])))
        prep.save([e["source"] for e in manifest["videos"]])
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(written=run["written"], skipped=run["skipped"], failed=run["failed"])
    manifest["num_shards"] = sum(len(v["shards"]) for v in manifest["videos"])
    write_file_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=1))
    log.info("prepared %d shards (%d written, %d already there) from %d videos; %d failed", manifest["num_shards"],
             run["written"], run["skipped"], len(videos), run["failed"])
    return manifest
