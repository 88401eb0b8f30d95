"""One code path for every quality number of the project's evaluations (issue 22): the main job
(scripts/run_example.py), benchmarks/memory_modes.py, benchmarks/long_run.py and benchmarks/revisit.py.

A generated video is scored against the real frames it should match, beside **reference rows** that need no model:

* ``mean_colour``: a constant frame of the history's mean colour (per-channel mean over every history pixel);
* ``last_frame``: the history's last frame repeated (raw pixels);
* ``last_frame_vae``: the same frame as the model's VAE gives it back (the real history and its continuation encoded
  and decoded as one stream), repeated;
* ``vae_ceiling``: the VAE's own reconstruction of the real frames (that one-stream pass): no generator can beat it
  by much, since every generated frame comes out of the same decoder.

Scores (:func:`score`): PSNR and SSIM (torchmetrics, RGB in [0, 1], SSIM with its 11x11 Gaussian window) on full
frames and on **thumbnails** (8x area-downsampled: a blurry VAE cannot match detail, a thumbnail asks only for layout
and colour), averaged over frames; and, for a return after a cutaway, **scene retrieval** (:func:`retrieval`): the
candidate shots ranked by thumbnail distance to the generated frames, top-1 right when the returning shot A ranks
first (chance 1 / number of candidates).

``margin_db`` (:func:`margin`): a memory row's PSNR minus the best trivial row's (memory off, mean colour, last frame),
negative when it loses; :func:`losses` says so in plain words. Pure torch / numpy (+ torchmetrics): no ComfyUI.
"""
from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0  # identical frames give inf; JSON cannot hold it
THUMB = 8  # thumbnail downsampling factor (area)
TRIVIAL = ("mean_colour", "last_frame")  # the trivial rows a memory row's margin is taken over (with memory off)
REFERENCES = ("mean_colour", "last_frame", "last_frame_vae", "vae_ceiling")


def _float(frames) -> "torch.Tensor":
    """uint8 numpy / torch ``[F, H, W, 3]`` -> float ``[F, 3, H, W]`` in [0, 1]. Raises ValueError for other dtypes."""
    import torch

    x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
    if x.dtype != torch.uint8:
        raise ValueError(f"frames to score must be uint8 [F, H, W, 3], got {x.dtype}")
    return x.permute(0, 3, 1, 2).float() / 255.0


def frame_metrics(pred, real) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(PSNR dB [F], SSIM [F])`` of uint8 ``[F, H, W, 3]`` videos as RGB float in [0, 1] (torchmetrics,
    data_range 1.0; SSIM with its default 11x11 Gaussian window, sigma 1.5). PSNR is capped at PSNR_CAP_DB.
    Raises ValueError when the shapes differ."""
    if tuple(pred.shape) != tuple(real.shape):
        raise ValueError(f"frames to compare differ in shape: {tuple(pred.shape)} vs {tuple(real.shape)}")
    return _metrics(_float(pred), _float(real))


def _metrics(p, r) -> tuple[np.ndarray, np.ndarray]:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr = peak_signal_noise_ratio(p, r, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=PSNR_CAP_DB)
    kernel = min(11, (min(p.shape[-2:]) - 1) // 2 * 2 + 1)  # tiny thumbnails: the largest odd window that fits
    sigma = 1.5 if kernel == 11 else max(kernel // 2, 1) / 3.5  # torchmetrics sizes its Gaussian window from sigma
    ssim = structural_similarity_index_measure(p, r, data_range=1.0, reduction="none", kernel_size=kernel, sigma=sigma)
    return psnr.numpy(), ssim.numpy()


def thumbnails(frames, factor: int = THUMB) -> "torch.Tensor":
    """8x (``factor``) area-downsampled frames: float ``[F, 3, H // factor, W // factor]`` in [0, 1] from uint8
    ``[F, H, W, 3]`` (``torch.nn.functional.avg_pool2d``: each thumbnail pixel is the mean of a factor x factor
    block). Raises ValueError for frames smaller than ``factor``."""
    import torch.nn.functional as F

    x = _float(frames)
    if min(x.shape[-2:]) < factor:
        raise ValueError(f"frames of {tuple(x.shape[-2:])} pixels are smaller than the {factor}x thumbnail")
    return F.avg_pool2d(x, factor)


def score(pred, real) -> dict:
    """``{"psnr_db", "ssim", "thumb_psnr_db", "thumb_ssim", "per_frame_psnr_db"}`` of ``pred`` against ``real``
    (uint8 ``[F, H, W, 3]`` each, same shape): per-frame values averaged (module docstring)."""
    psnr, ssim = frame_metrics(pred, real)
    tp, ts = _metrics(thumbnails(pred), thumbnails(real))
    return {"psnr_db": round(float(psnr.mean()), 3), "ssim": round(float(ssim.mean()), 4),
            "thumb_psnr_db": round(float(tp.mean()), 3), "thumb_ssim": round(float(ts.mean()), 4),
            "per_frame_psnr_db": [round(float(v), 2) for v in psnr]}


# ---- reference rows -----------------------------------------------------------------------------------------------
def mean_colour(history, frames: int) -> np.ndarray:
    """``frames`` copies of a constant frame of the history's mean colour: uint8 ``[frames, H, W, 3]`` from the
    history uint8 ``[N, H, W, 3]`` (the mean over every pixel of every frame, per channel, rounded)."""
    h = np.asarray(history)
    colour = np.rint(h.reshape(-1, 3).astype(np.float64).mean(0)).astype(np.uint8)
    return np.broadcast_to(colour, (frames, *h.shape[1:])).copy()


def reference_frames(history, frames: int, vae_pass=None) -> dict[str, np.ndarray]:
    """The reference rows' frames for a continuation of ``frames`` frames after ``history`` (uint8 ``[N, H, W, 3]``):
    ``mean_colour``, ``last_frame`` and, when ``vae_pass`` is given (uint8 ``[N + frames, H, W, 3]``: the real
    history followed by the real frames to score, encoded and decoded by the VAE as one stream), ``last_frame_vae``
    (its frame N - 1 repeated) and ``vae_ceiling`` (its last ``frames`` frames). Raises ValueError when
    ``vae_pass`` has another length."""
    h = np.asarray(history)
    refs = {"mean_colour": mean_colour(h, frames), "last_frame": np.repeat(h[-1:], frames, axis=0)}
    if vae_pass is not None:
        v = np.asarray(vae_pass)
        if len(v) != len(h) + frames:
            raise ValueError(f"the VAE pass has {len(v)} frames, history + scored frames are {len(h) + frames}")
        refs["last_frame_vae"] = np.repeat(v[len(h) - 1:len(h)], frames, axis=0)
        refs["vae_ceiling"] = v[len(h):]
    return refs


# ---- scene retrieval ----------------------------------------------------------------------------------------------
def shot_distance(pred_thumbs, shot_thumbs) -> float:
    """Mean over the generated frames of the smallest thumbnail MSE to any frame of the shot (``[F, 3, h, w]`` and
    ``[S, 3, h, w]`` float)."""
    import torch

    d = torch.cdist(pred_thumbs.flatten(1).double(), shot_thumbs.flatten(1).double()) ** 2 / pred_thumbs[0].numel()
    return float(d.min(dim=1).values.mean())


def retrieval(pred, candidates: dict, target: str) -> dict:
    """Rank the candidate shots ``{name: uint8 [S, H, W, 3]}`` by :func:`shot_distance` of their thumbnails to those
    of ``pred`` (uint8 ``[F, H, W, 3]``, same size). Returns ``{"top1": 1.0 | 0.0, "rank": rank of target (1 =
    first), "ranking": names nearest first, "candidates": N, "chance": 1 / N}``. Raises KeyError for an unknown
    target."""
    if target not in candidates:
        raise KeyError(f"target shot {target!r} is not among the candidates {sorted(candidates)}")
    p = thumbnails(pred)
    dist = {name: shot_distance(p, thumbnails(frames)) for name, frames in candidates.items()}
    ranking = sorted(dist, key=dist.get)
    rank = ranking.index(target) + 1
    return {"top1": float(rank == 1), "rank": rank, "ranking": ranking, "candidates": len(candidates),
            "chance": round(1.0 / len(candidates), 4)}


def split_shots(frames, min_frames: int = 8, ratio: float = 4.0, floor: float = 0.08) -> list[tuple[int, int]]:
    """Shots of a clip (uint8 ``[F, H, W, 3]``) as ``[(start, end), ...]``: a cut where the mean absolute
    difference of consecutive thumbnails exceeds ``ratio`` x its median and ``floor`` (RGB in [0, 1]); pieces shorter
    than ``min_frames`` (flashes, dissolves) are dropped."""
    t = thumbnails(frames)
    if len(t) < 2:
        return [(0, len(t))]
    d = (t[1:] - t[:-1]).abs().mean(dim=(1, 2, 3)).numpy()
    cuts = [i + 1 for i, v in enumerate(d) if v > max(ratio * float(np.median(d)), floor)]
    bounds = [0, *cuts, len(t)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b - a >= min_frames]


# ---- rows, margins, plain words -----------------------------------------------------------------------------------
def row(pred, real, candidates: dict | None = None, target: str | None = None) -> dict:
    """:func:`score` plus ``retrieval_top1`` (and ``retrieval_rank``) when ``candidates`` are given."""
    out = score(pred, real)
    if candidates:
        r = retrieval(pred, candidates, target)
        out.update(retrieval_top1=r["top1"], retrieval_rank=r["rank"])
    return out


def margin(rows: dict, memory: str, off: str = "memory_off") -> float | None:
    """``rows[memory]["psnr_db"]`` minus the best of ``rows[off]`` and the trivial references (:data:`TRIVIAL`)
    present in ``rows``; None when the memory row is missing."""
    if memory not in rows:
        return None
    best = max(rows[k]["psnr_db"] for k in (off, *TRIVIAL) if k in rows)
    return round(rows[memory]["psnr_db"] - best, 3)


def losses(rows: dict, memory: list[str], against: tuple = (*TRIVIAL, "last_frame_vae"), key: str = "psnr_db",
           names: dict | None = None) -> list[str]:
    """Plain sentences, one per memory row that scores below (or ties) a reference row of ``against`` or the shuffled
    control (``"shuffled"`` in ``rows``) on ``key``: "memory on (11.88 dB) loses to mean colour (13.55 dB)",
    "... does not beat the shuffled-memory control (...)" for a tie."""
    names = names or {}
    name = lambda k: names.get(k, k.replace("_", " "))  # noqa: E731
    unit = " dB" if key.endswith("_db") else ""
    out = []
    for m in memory:
        if m not in rows:
            continue
        v = rows[m][key]
        beaten = [k for k in (*against, "shuffled") if k in rows and k != m and rows[k][key] >= v]
        for k in beaten:
            verb = "loses to" if rows[k][key] > v else "does not beat"
            what = "the shuffled-memory control" if k == "shuffled" else name(k)
            out.append(f"{name(m)} ({v:.2f}{unit}) {verb} {what} ({rows[k][key]:.2f}{unit})")
    return out


__all__ = ["PSNR_CAP_DB", "REFERENCES", "THUMB", "TRIVIAL", "frame_metrics", "losses", "margin", "mean_colour",
           "reference_frames", "retrieval", "row", "score", "shot_distance", "split_shots", "thumbnails"]
