"""The lab VAE path of ``training/reproduce.py --vae lab``: clips encoded as Wan encodes video, the real LR branch.

``training/reproduce.py`` by default runs on a linear stand-in VAE (:mod:`training.standin_vae`: one latent frame per
frame sampled at ``fps / 4``). With ``--vae lab`` it uses this module instead:

* **VAE.** The lab model's VAE (``lab_model/framememory_lab_wan21_vae.safetensors``: ComfyUI's ``WanVAE`` at base
  width 12, trained here at 256x128, 16 fps; :mod:`training.vae_train`), loaded through ``comfy.sd.VAE`` as the stock
  Load VAE loads it (:class:`LabVideoVAE`). Latents are mapped to the DiT's model space with ComfyUI's
  ``latent_formats.Wan21`` (``process_in`` / ``process_out``), as the shards of ``training/data.py`` are.
* **Time.** Frames are read at the preset's ``fps`` (16) and each stream of ``1 + 4k`` frames encodes to ``1 + k``
  latent frames (Wan's causal VAE: the first latent frame is one video frame, each next one four).
* **Training windows** (:func:`encode_training_chunks`, :class:`ChunkWindows`): each training clip is cut into
  chunks of ``lab_chunk_frames`` frames every ``lab_chunk_stride`` frames (at most ``lab_max_chunks`` per clip), each
  chunk encoded as one VAE stream, as ``training/data.py`` builds the lab model's shards; histories of the preset's
  ``history`` latent frames are cut inside a chunk at starts that are whole memory time steps, so a window that does
  not start the chunk continues its stream, as a history does at inference.
* **LR branch.** The paper's inference-time path, not a stand-in: :func:`memory.encoder.lr_clip` of the chunk's
  *pixels* through the same VAE as one stream (:func:`training.data.chunk_lr_latents`, the function the shards use;
  the nodes run the same ``lr_clip`` + VAE stream in ``models.encoding.lr_encoder``), cropped with the window; Stage I
  masks it like the history (``training.stages.mask_lr_latent``) inside the training loop.
* **Held-out histories** (:func:`encode_heldout`): windows of ``history`` latent frames, each encoded as its own
  stream from its first frame (``1 + 4 (T - 1)`` frames), with the LR latents of every rate of the run and the
  original frames.
* **Frame queries** (:meth:`LabVideoVAE.render`): a regenerated latent frame cannot be decoded alone by a causal VAE
  (a mid-stream latent decoded as a stream's first frame scores ~6 dB), so each query's latent frames are put into
  the ground-truth history at their positions and the history is decoded up to the last of them; the video frames of
  the query's latent frames (one for latent 0, four for latent ``j >= 1``) are scored against the original frames.
  Queries at distinct latent frames share one decode (:func:`_disjoint_rounds`; one decode per history per row with
  ``eval_queries <= history``), so the decoder's causal context is ground truth or another query's regenerated frame,
  the same for every row.
  The VAE ceiling row is the ground-truth history decoded the same way: the lab VAE's own reconstruction.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import SimpleNamespace

import torch

LAB_VAE_FILE = Path(__file__).resolve().parents[1] / "lab_model" / "framememory_lab_wan21_vae.safetensors"
TIME_STRIDE = 4  # video frames per latent frame after the first (Wan 2.1's causal VAE)


def stream_frames(latent_frames: int) -> int:
    """Video frames of a causal stream of ``latent_frames`` latent frames: ``1 + 4 (T - 1)``."""
    return 1 + TIME_STRIDE * (latent_frames - 1)


def latent_video_frames(j: int) -> list[int]:
    """Indices of the video frames that latent frame ``j`` of a stream stands for (``[0]`` for ``j = 0``)."""
    return [0] if j == 0 else list(range(TIME_STRIDE * j - 3, TIME_STRIDE * j + 1))


def time_unit(rates) -> int:
    """Latent frames every window start is a multiple of: the least common multiple of the rates' ``pt * rt``."""
    from ..memory.config import EncoderConfig

    cfgs = [EncoderConfig(rate=r) for r in rates]
    return math.lcm(*[c.patch_size[0] * c.rate[2] for c in cfgs]) if cfgs else 1


class LabVideoVAE:
    """The lab VAE through ``comfy.sd.VAE``, in the DiT's model space (module docstring).

    Args:
        path: the VAE file (default :data:`LAB_VAE_FILE`).
    Raises:
        FileNotFoundError: no such file (run ``training/lab.py``).
    """

    def __init__(self, path: str | Path = LAB_VAE_FILE) -> None:
        import comfy.sd
        import comfy.utils
        from comfy.latent_formats import Wan21

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"lab VAE {path} is missing: run `.venv/bin/python training/lab.py`")
        self.vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
        self.fmt = Wan21()
        self.path = path
        self.info = {"file": path.name, "bytes": path.stat().st_size}
        self._gt_cache: dict[str, torch.Tensor] = {}

    def key(self) -> str:
        """12 hex digits of the file's name, size and first MiB (cache names)."""
        with open(self.path, "rb") as f:
            head = f.read(1 << 20)
        return hashlib.sha1(head + f"{self.path.name}{self.info['bytes']}".encode()).hexdigest()[:12]

    def encode_vae_space(self, frames: torch.Tensor) -> torch.Tensor:
        """``[F, H, W, 3]`` (uint8 or float 0..1), ``F = 1 + 4k`` -> ``[1, 16, 1 + k, H / 8, W / 8]`` VAE space, CPU
        float32. Raises ValueError for another frame count."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or (frames.shape[0] - 1) % TIME_STRIDE:
            raise ValueError(f"expected a [1 + 4k, H, W, 3] stream, got {tuple(frames.shape)}")
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        with torch.no_grad():
            return self.vae.encode(x).float().cpu()

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_vae_space` mapped to model space (``Wan21.process_in``)."""
        return self.fmt.process_in(self.encode_vae_space(frames))

    def lr_latents(self, frames: torch.Tensor, latent_frames: int, rates) -> dict[str, torch.Tensor]:
        """``{rate: [C, Tm, h', w']}`` model-space LR latents of a stream of ``latent_frames`` latent frames whose
        pixels are ``frames`` (:func:`training.data.chunk_lr_latents`: ``lr_clip`` + this VAE, one stream)."""
        from .data import chunk_lr_latents

        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        lrs = chunk_lr_latents(x, latent_frames, SimpleNamespace(lr_rates=tuple(rates)), self.encode_vae_space)
        return {r: self.fmt.process_in(z)[0] for r, z in lrs.items()}

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Model-space ``[B, 16, T, h, w]`` -> ``[B, 1 + 4 (T - 1), 8h, 8w, 3]`` float32 0..1 (CPU; each sample
        decoded as one stream)."""
        with torch.no_grad():
            x = self.vae.decode(self.fmt.process_out(latent.float().cpu()))
        return x.reshape(latent.shape[0], -1, *x.shape[-3:]).float().clamp(0, 1)

    def _decode_gt(self, history: torch.Tensor, upto: int) -> torch.Tensor:
        """Decoded frames of ``history[:, :, :upto]`` (cached by content: shared by every row of the table)."""
        z = history[:, :, :upto].float().cpu()
        key = hashlib.sha1(z.numpy().tobytes()).hexdigest()
        if key not in self._gt_cache:
            self._gt_cache[key] = self.decode(z)[0]
        return self._gt_cache[key]

    def render(self, history: torch.Tensor, omega: torch.Tensor, pred: torch.Tensor):
        """``training.evaluate.frame_query_metrics``'s ``render`` hook (module docstring).

        Args:
            history: ``[1, C, T, h, w]`` model-space history that starts its VAE stream. omega: ``[Q, k]`` latent
                frame indices. pred: ``[Q, C, k, h, w]`` regenerated latent frames.
        Returns:
            ``(images [N, 3, H, W], ground truth decoded [N, 3, H, W], frame index [N])``, N the video frames of all
            queries' latent frames, CPU float32 0..1 / int64.
        """
        upto = int(omega.max()) + 1
        gt = self._decode_gt(history, upto)  # [F, H, W, 3]
        decoded: dict[int, torch.Tensor] = {}
        for group in _disjoint_rounds(omega):  # one decode per round of queries at distinct latent frames
            z = history[:, :, :upto].float().cpu().clone()
            for q in group:
                for i, j in enumerate(omega[q].tolist()):
                    z[0, :, j] = pred[q, :, i].float().cpu()
            frames = gt if torch.equal(z, history[:, :, :upto].float().cpu()) else self.decode(z)[0]
            decoded.update({q: frames for q in group})
        imgs, refs, index = [], [], []
        for q in range(omega.shape[0]):
            for j in omega[q].tolist():
                idx = latent_video_frames(j)
                imgs.append(decoded[q][idx])
                refs.append(gt[idx])
                index += idx
        as_chw = lambda xs: torch.cat(xs).permute(0, 3, 1, 2)  # noqa: E731
        return as_chw(imgs), as_chw(refs), torch.tensor(index, dtype=torch.long)


def _disjoint_rounds(omega: torch.Tensor) -> list[list[int]]:
    """Queries (rows of ``omega`` ``[Q, k]``) grouped greedily, in order, into rounds whose latent frames do not
    overlap (with ``Q <= T`` and ``k = 1`` every query's frame is distinct: one round)."""
    rounds: list[tuple[list[int], set]] = []
    for q, row in enumerate(omega.tolist()):
        for members, used in rounds:
            if not used & set(row):
                members.append(q)
                used.update(row)
                break
        else:
            rounds.append(([q], set(row)))
    return [m for m, _ in rounds]


def chunk_starts(n_frames: int, chunk: int, stride: int, max_chunks: int, min_frames: int) -> list[tuple[int, int]]:
    """``(start, frames)`` of the chunks of a clip of ``n_frames``: every ``stride`` frames, ``frames`` the chunk
    length ``chunk`` or what is left, floored to ``1 + 4k``; chunks below ``min_frames`` are dropped; at most
    ``max_chunks``."""
    out = []
    for s in range(0, max(n_frames, 1), stride):
        n = min(chunk, n_frames - s)
        n = 1 + (n - 1) // TIME_STRIDE * TIME_STRIDE if n >= 1 else 0
        if n >= min_frames:
            out.append((s, n))
        if len(out) >= max_chunks:
            break
    return out


def encode_training_chunks(vae: LabVideoVAE, clips: list[torch.Tensor], p, rates, log=print) -> list[dict]:
    """Chunks of the training clips (uint8 ``[F, H, W, 3]`` at ``p.fps``) as ``{"latent": [C, T, h, w], "lr":
    {rate: [C, Tm, h', w']}}`` model space (module docstring; chunk settings ``p.lab_chunk_frames``,
    ``p.lab_chunk_stride``, ``p.lab_max_chunks``; chunks shorter than a Stage II window are dropped)."""
    need = stream_frames(p.history + p.segment)
    out = []
    for c in clips:
        for s, n in chunk_starts(len(c), p.lab_chunk_frames, p.lab_chunk_stride, p.lab_max_chunks, need):
            z = vae.encode(c[s: s + n])[0]
            out.append({"latent": z, "lr": vae.lr_latents(c[s: s + n], z.shape[1], rates)})
        log(f"lab VAE: {len(out)} training chunks encoded")
    return out


def encode_heldout(vae: LabVideoVAE, clips: list[torch.Tensor], length: int, limit: int, rates, context,
                   lr_latent_frames: int | None = None) -> list[dict]:
    """Held-out windows of ``length`` latent frames, each its own stream (``stream_frames(length)`` frames, one
    every ``4 * length`` frames, at most ``limit`` per clip evenly spread): dicts with ``"latent"`` ``[C, T, h, w]``,
    ``"context"``, ``"frames"`` float 0..1 ``[F, H, W, 3]`` and ``"lr_latents"`` ``{rate: [C, Tm, h', w']}`` of the
    first ``lr_latent_frames`` latent frames (default all; the history part of a (history, segment) window)."""
    from .reproduce_config import windows

    n, items = stream_frames(length), []
    for c in clips:
        for s in windows(len(c), n, TIME_STRIDE * length, limit):
            frames = c[s: s + n]
            z = vae.encode(frames)[0]
            lr_t = lr_latent_frames or length
            lrs = vae.lr_latents(frames[: stream_frames(lr_t)], lr_t, rates)
            items.append({"latent": z, "context": context, "frames": frames.float() / 255.0, "lr_latents": lrs})
    return items


class ChunkWindows:
    """Windows of ``length`` latent frames inside the encoded chunks (:func:`encode_training_chunks`) every
    ``stride`` latent frames (``stride`` a multiple of :func:`time_unit` of the rates), as ``{"latent": [C, T, h, w],
    "context"}`` plus ``"lr_latent"`` ``[C, T // rt, h', w']`` of :attr:`lr_rate` when set (:meth:`with_lr`)."""

    def __init__(self, chunks: list[dict], length: int, stride: int, context, unit: int,
                 lr_rate: str | None = None) -> None:
        if stride % unit:
            raise ValueError(f"window stride {stride} is not a multiple of the memory time step {unit}")
        self.chunks, self.length, self.stride, self.context, self.unit = chunks, length, stride, context, unit
        self.lr_rate = lr_rate
        self.items = [(i, s) for i, ch in enumerate(chunks)
                      for s in range(0, (ch["latent"].shape[1] // unit) * unit - length + 1, stride)]

    def with_lr(self, rate: str | None) -> "ChunkWindows":
        """The same windows carrying the LR latent of ``rate`` (None: none)."""
        return ChunkWindows(self.chunks, self.length, self.stride, self.context, self.unit, rate)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict:
        from ..memory.config import EncoderConfig

        i, s = self.items[k]
        ch = self.chunks[i]
        out = {"latent": ch["latent"][:, s: s + self.length], "context": self.context}
        if self.lr_rate is not None:
            cfg = EncoderConfig(rate=self.lr_rate)
            rt = cfg.patch_size[0] * cfg.rate[2]
            out["lr_latent"] = ch["lr"][cfg.rate_str][:, s // rt: (s + self.length) // rt]
        return out


__all__ = ["LabVideoVAE", "ChunkWindows", "encode_training_chunks", "encode_heldout", "chunk_starts",
           "stream_frames", "latent_video_frames", "time_unit", "LAB_VAE_FILE"]
