"""Held-out evaluation of the two training stages of arXiv 2512.23851 (used by ``training/reproduce.py``).

* :func:`frame_query_metrics`: the paper's frame-retrieval measure (v1 table: PSNR / SSIM of frames regenerated from
  the memory). For each held-out history ``H`` ``[1, C, T, h, w]`` random history positions Omega are drawn (seeded),
  the *clean* history is encoded (:func:`training.stages.encode_history`, memory at times ``0 .. T-1`` as in Stage I),
  and ``H[Omega]`` is sampled from noise by a deterministic Euler rectified-flow sampler with the DiT's video tokens
  at their original times Omega (:func:`training.stages.dit_forward` with ``frame_times``, as in
  :func:`training.stages.stage1_loss`). Generated frames are decoded by the (stand-in) VAE and compared, with
  torchmetrics (data_range 1), to the original frames when given (so a perfect latent scores the VAE's own
  reconstruction PSNR: the ceiling), else to the decoded ground-truth latent.
* :func:`frame_query_loss`: the Stage I velocity loss on the same held-out histories with their own (clean) memory or
  with another clip's (``shuffle_memory``): the gap measures how much the model reads its memory.
* :func:`next_segment_loss`: the Stage II loss on held-out (history, next segment) pairs on a fixed, seeded grid of
  diffusion times and noises, with memory or (encoder None) without.

Sampler: ``x_1 = eps``; for ``t_i = 1 - i / steps``: ``x_{t_{i+1}} = x_{t_i} - (t_i - t_{i+1}) v(x_{t_i}, t_i)``
(rectified flow ``X_t = (1 - t) X_0 + t eps``, velocity ``eps - X_0``; uniform steps, no shift).

Text condition: every function defaults to :func:`standin_context`, the stand-in text encoder's embedding of the
empty prompt ``[1, 1, 4096]`` (what ``training/prepare_data.py --stand-in-text`` stores for videos without captions,
and what ``training/reproduce.py`` trains with); a sample dict's own ``"context"`` wins.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch

from . import stages


def standin_context(device=None) -> torch.Tensor:
    """Fixed text condition ``[1, 1, 4096]`` float32: :class:`demo.text_encoder.StandInTextEncoder` of ``""``."""
    from ..demo.text_encoder import StandInTextEncoder

    enc = StandInTextEncoder()
    return enc.encode_from_tokens_scheduled(enc.tokenize(""))[0][0].float().to(device)


def _unpack(sample, device=None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(latent [1, C, T, h, w] float32 on ``device``, context [1, L, D] or None, frames [T, H, W, 3] or None) of a
    tensor or dict sample. Raises ValueError when the latent is not ``[C, T, h, w]`` / ``[1, C, T, h, w]``."""
    if isinstance(sample, dict):
        latent, ctx, frames = sample["latent"], sample.get("context"), sample.get("frames")
    else:
        latent, ctx, frames = sample, None, None
    if latent.ndim == 4:
        latent = latent[None]
    if latent.ndim != 5 or latent.shape[0] != 1:
        raise ValueError(f"expected a history latent [C, T, h, w] or [1, C, T, h, w], got {tuple(latent.shape)}")
    if ctx is not None and ctx.ndim == 2:
        ctx = ctx[None]
    return latent.float().to(device), ctx, frames


@contextlib.contextmanager
def _evaluating(dm, encoder, context: torch.Tensor | None) -> Iterator[tuple[torch.device, torch.Tensor]]:
    """Eval mode for ``dm`` and ``encoder`` (None skipped) inside the block, each one's training flag restored on
    exit (also when the block raises). Yields ``(device of dm's parameters, default text condition)``: ``context``
    as float32 on that device, or :func:`standin_context` when None."""
    mods = [m for m in (dm, encoder) if m is not None]
    flags = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        device = next(dm.parameters()).device
        yield device, (standin_context(device) if context is None else context.to(device).float())
    finally:
        for m, flag in zip(mods, flags):
            m.train(flag)


def _batch_context(default: torch.Tensor, ctx: torch.Tensor | None, batch: int) -> torch.Tensor:
    """A sample's own context ``[1, L, D]`` (when not None) or ``default``, float32 on ``default``'s device,
    expanded to ``[batch, L, D]``."""
    return (default if ctx is None else ctx.to(default.device).float()).expand(batch, -1, -1)


def _time_grid(n_t: int, device) -> torch.Tensor:
    """The fixed diffusion times ``t_j = (j + 0.5) / n_t``, ``[n_t]`` float32."""
    return ((torch.arange(n_t, dtype=torch.float32) + 0.5) / n_t).to(device)


def _lr_latent(encoder, lr_fn, latent: torch.Tensor, sample=None) -> torch.Tensor | None:
    """The LR branch's input for ``latent`` when the encoder has an LR branch: ``lr_fn(latent)`` when ``lr_fn`` is
    given, else the sample's own precomputed LR latent (a dict sample's ``"lr_latents"`` ``{rate: [C, Tm, h', w']}``,
    model space, keyed by ``EncoderConfig.rate_str``; e.g. a real VAE's latent of :func:`memory.encoder.lr_clip`),
    else None (``encode_history`` then raises for an encoder with an LR branch)."""
    if not encoder.cfg.use_lr:
        return None
    if lr_fn is not None:
        return lr_fn(latent)
    lr = sample.get("lr_latents", {}).get(encoder.cfg.rate_str) if isinstance(sample, dict) else None
    return None if lr is None else lr[None].float().to(latent.device).expand(latent.shape[0], -1, -1, -1, -1)


def _clean_memory(dm, encoder, history: torch.Tensor, lr_fn, batch: int, sample=None):
    """Memory of a clean history ``[1, C, T, h, w]`` at times ``0 .. T-1`` (as in Stage I), expanded to ``batch``
    (:func:`training.stages.encode_history`'s namespace), or None when ``encoder`` is None. ``sample``: the history's
    dict sample (its ``"lr_latents"`` when ``lr_fn`` is None, :func:`_lr_latent`)."""
    if encoder is None:
        return None
    mem = stages.encode_history(dm, encoder, history, t_start=0.0,
                                lr_latent=_lr_latent(encoder, lr_fn, history, sample))
    mem.tokens = mem.tokens.expand(batch, -1, -1)
    mem.positions2 = mem.positions2.expand(batch, -1, -1)
    if mem.hidden is not None:
        mem.hidden = mem.hidden.expand(batch, -1, -1)
    return mem


def _queries(history: torch.Tensor, seed: int, index: int, queries: int, k: int, device):
    """Seeded queries on history ``[1, C, T, h, w]`` (clip ``index``, generator ``seed * 100003 + index``):
    ``(omega [Q, k] int64, noise [Q, C, k, h, w] float32, ground truth H[omega] [Q, C, k, h, w])`` on ``device``."""
    _, c, t, h, w = history.shape
    g = torch.Generator().manual_seed(seed * 100003 + index)
    omega = _draw_omega(t, queries, k, g).to(device)
    noise = torch.randn((omega.shape[0], c, k, h, w), generator=g).to(device)
    gt = stages.gather_frames(history.expand(omega.shape[0], -1, -1, -1, -1), omega)
    return omega, noise, gt


def _as_unit_frames(frames, device) -> torch.Tensor:
    """Frames ``[T, H, W, 3]`` (float 0..1, or uint8 0..255) -> float32 0..1 on ``device``."""
    x = torch.as_tensor(frames)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.to(device)


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 steps: int) -> torch.Tensor:
    """Deterministic Euler sampler of the rectified flow from ``t = 1`` (``noise``) to ``t = 0``.

    Args:
        velocity: ``(x_t [B, ...], t [B] float32 in [0, 1]) -> v`` (the DiT's prediction of ``eps - X_0``).
        noise: ``x_1`` ``[B, ...]``. steps: number of uniform steps (>= 1).
    Returns:
        ``x_0`` estimate, same shape and dtype as ``noise``.
    Raises:
        ValueError: ``steps < 1``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x = noise
    for i in range(steps):
        t = torch.full((x.shape[0],), float(ts[i]), device=x.device, dtype=torch.float32)
        v = velocity(x, t)
        x = x - float(ts[i] - ts[i + 1]) * v.to(x.dtype)
    return x


def _draw_omega(frames: int, queries: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``[Q, k]`` sorted latent-frame indices; the Q queries' first indices are distinct while ``Q <= frames``."""
    rows = []
    order = torch.randperm(frames, generator=generator)
    for q in range(queries):
        first = int(order[q % frames])
        rest = [i for i in torch.randperm(frames, generator=generator).tolist() if i != first][: k - 1]
        rows.append(sorted([first, *rest]))
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def frame_query_metrics(dm, encoder, clips: Iterable, vae, *, seed: int, queries_per_clip: int, steps: int = 20,
                        lr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, omega_frames: int = 1,
                        context: torch.Tensor | None = None,
                        predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                        render: Callable | None = None) -> dict:
    """Frame-retrieval PSNR / SSIM of frames regenerated from the memory of clean held-out histories (module docstring).

    Args:
        dm: the Wan DiT (``WanModel`` with its Stage I LoRA). encoder: a :class:`memory.encoder.HistoryEncoder` or
            drop-in (``training.baselines.LargePatchifier``); None: no memory tokens (what the DiT guesses alone).
        clips: held-out histories: tensors ``[1, C, T, h, w]`` / ``[C, T, h, w]`` (model space) or dicts with
            ``"latent"`` and optional ``"context"`` ``[L, 4096]`` and ``"frames"`` ``[T, H, W, 3]`` (float 0..1 or
            uint8 0..255; the original frames, one per latent frame as with the stand-in VAE: the reference for the
            metrics when given).
        vae: decoder with ``decode(latent [B, C, T, h, w]) -> [B, T, H, W, 3]`` 0..1 (:class:`PatchPCAVAE`).
        seed: seeds Omega and the sampler's noise (clip ``i`` uses ``seed * 100003 + i``).
        queries_per_clip: queries Q per history, batched; query q regenerates ``omega_frames`` frames.
        steps: Euler steps. lr_fn: ``[B, C, T, h, w] -> LR latent`` for the encoder's LR branch (required when
            ``encoder.cfg.use_lr``: there is no stand-in LR branch).
        omega_frames: latent frames k per query (``1 <= k <= T``), drawn without repetition.
        context: text condition ``[1, L, 4096]`` (default :func:`standin_context`).
        predict: replaces encoding + sampling by ``predict(history [1, C, T, h, w], omega [Q, k]) -> [Q, C, k, h, w]``
            (references: a ground-truth passthrough scores the VAE ceiling).
        render: replaces the per-latent-frame decode for a VAE with temporal compression (e.g. Wan's causal VAE,
            ``training/reproduce.py --vae lab``): ``render(history [1, C, T, h, w], omega [Q, k], pred [Q, C, k, h, w])
            -> (images [N, 3, H, W], decoded ground truth [N, 3, H, W], frame index [N] int64)``, 0..1, the frame
            index into the sample's ``"frames"`` (which then need not have one frame per latent frame).
    Returns:
        ``{"psnr", "ssim"}`` means over regenerated frames (dB, SSIM in [-1, 1]), ``"psnr_vae", "ssim_vae"`` the same
        against the decoded ground-truth latent, ``"n"`` frames scored, ``"reference"`` ``"frames"`` when every
        clip had original frames else ``"vae"``.
    Raises:
        ValueError: a clip is not a 5-D single history, ``omega_frames`` exceeds its length, or its ``"frames"``
        do not have one frame per latent frame.
    """
    sums = {"psnr": 0.0, "ssim": 0.0, "psnr_vae": 0.0, "ssim_vae": 0.0}
    n, all_frames = 0, True
    with _evaluating(dm, encoder, context) as (device, base_ctx):
        for ci, sample in enumerate(clips):
            history, ctx, frames = _unpack(sample, device)
            t = history.shape[2]
            if not 1 <= omega_frames <= t:
                raise ValueError(f"omega_frames {omega_frames} must be in 1..{t}")
            if frames is not None and render is None and len(frames) != t:
                raise ValueError(f"clip {ci}: {len(frames)} frames for {t} latent frames (need one per latent frame)")
            omega, noise, gt = _queries(history, seed, ci, queries_per_clip, omega_frames, device)  # [Q, k], ...
            pred = (predict(history, omega).to(device).float() if predict is not None else _sample_queries(
                dm, encoder, sample, history, omega, noise, _batch_context(base_ctx, ctx, omega.shape[0]), lr_fn, steps))
            img, ref_vae, index = _query_images(vae, render, history, omega, pred, gt, device)
            if frames is not None:
                ref = _as_unit_frames(frames, device)[index].permute(0, 3, 1, 2)
            else:
                all_frames, ref = False, ref_vae
            _add_scores(sums, img, ref, ref_vae)
            n += img.shape[0]
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out.update(n=n, reference="frames" if all_frames and n else "vae")
    return out


def _sample_queries(dm, encoder, sample, history: torch.Tensor, omega: torch.Tensor, noise: torch.Tensor,
                    ctx_q: torch.Tensor, lr_fn, steps: int) -> torch.Tensor:
    """The frames ``omega`` ``[Q, k]`` regenerated from ``noise`` ``[Q, C, k, h, w]`` by ``steps`` Euler steps of the
    DiT reading the clean memory of ``history`` ``[1, C, T, h, w]`` (:func:`_clean_memory`; ``encoder`` None: no
    memory), text ``ctx_q`` ``[Q, L, 4096]``: float32 ``[Q, C, k, h, w]``."""
    memory = _clean_memory(dm, encoder, history, lr_fn, omega.shape[0], sample)

    def velocity(x, tt):
        return stages.dit_forward(dm, x, tt, ctx_q, memory, frame_times=omega).float()

    return euler_sample(velocity, noise, steps)


def _query_images(vae, render, history: torch.Tensor, omega: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor,
                  device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images [N, 3, H, W], decoded ground truth [N, 3, H, W], frame index [N] int64)`` of the predicted latent
    frames ``pred`` (0..1; ``render`` when given, else ``vae.decode`` per latent frame, ``N = Q * k``)."""
    if render is not None:
        img, ref_vae, index = (v.to(device) for v in render(history, omega, pred))
        return img, ref_vae, index
    img = vae.decode(pred).flatten(0, 1).permute(0, 3, 1, 2)  # [Q*k, 3, H, W]
    ref_vae = vae.decode(gt).flatten(0, 1).permute(0, 3, 1, 2)
    return img, ref_vae, omega.flatten()


def _add_scores(sums: dict, img: torch.Tensor, ref: torch.Tensor, ref_vae: torch.Tensor) -> None:
    """Add the per-image PSNR (dB) and SSIM of ``img`` against ``ref`` (keys ``psnr``, ``ssim``) and against
    ``ref_vae`` (``psnr_vae``, ``ssim_vae``) to ``sums``; images ``[N, 3, H, W]`` in 0..1."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    for key, r in (("", ref), ("_vae", ref_vae)):
        sums["psnr" + key] += peak_signal_noise_ratio(img, r, data_range=1.0, reduction="none",
                                                      dim=(1, 2, 3)).sum().item()
        sums["ssim" + key] += structural_similarity_index_measure(img, r, data_range=1.0,
                                                                  reduction="none").sum().item()


@torch.no_grad()
def frame_query_loss(dm, encoder, clips: Iterable, *, seed: int, n_t: int = 4,
                     lr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, shuffle_memory: bool = False,
                     context: torch.Tensor | None = None) -> float:
    """Held-out Stage I loss with the memory of the *clean* history (a less noisy signal than sampled PSNR): for clip
    ``i`` and each ``t_j = (j + 0.5) / n_t`` one query frame (seeded, as :func:`frame_query_metrics` draws them) and
    noise, MSE of the velocity prediction. ``shuffle_memory`` takes the memory from clip ``i + 1`` (cyclically)
    instead: the gap between the two is how much the model uses its memory.

    Args/raises: as :func:`frame_query_metrics` (``encoder`` None: no memory tokens); also ValueError when
    ``shuffle_memory`` is set with fewer than two clips. Returns the mean MSE (float, model-space velocity units).
    """
    clips = list(clips)
    if shuffle_memory and encoder is not None and len(clips) < 2:
        raise ValueError("shuffle_memory needs at least two clips (clip i takes clip i + 1's memory)")
    total = 0.0
    with _evaluating(dm, encoder, context) as (device, base_ctx):
        t_grid = _time_grid(n_t, device)
        for ci, sample in enumerate(clips):
            history, ctx, _ = _unpack(sample, device)
            omega, eps, x0 = _queries(history, seed, ci, n_t, 1, device)  # [n_t, 1], [n_t, C, 1, h, w] x 2
            x_t, target = stages.flow_pair(x0, t_grid, eps)
            mem, mem_sample = history, sample
            if shuffle_memory and encoder is not None:
                mem_sample = clips[(ci + 1) % len(clips)]
                mem = _unpack(mem_sample, device)[0]
            memory = _clean_memory(dm, encoder, mem, lr_fn, n_t, mem_sample)
            pred = stages.dit_forward(dm, x_t, t_grid, _batch_context(base_ctx, ctx, n_t), memory, frame_times=omega)
            total += torch.nn.functional.mse_loss(pred.float(), target.float()).item()
    return total / max(len(clips), 1)


@torch.no_grad()
def next_segment_loss(dm, encoder_or_none, samples: Iterable, *, seed: int, n_t: int = 8, segment_frames: int = 4,
                      lr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      context: torch.Tensor | None = None) -> float:
    """Held-out Stage II loss (:func:`training.stages.stage2_loss`) on a fixed grid.

    Each sample's latent ``[C, T, h, w]`` (or ``[1, C, T, h, w]``; dicts with ``"latent"`` and optional ``"context"``)
    is split into history ``[:, :T - segment_frames]`` and next segment ``[:, T - segment_frames:]``, and evaluated at
    the ``n_t`` diffusion times ``t_i = (i + 0.5) / n_t`` (one batch), with noises drawn from ``seed * 100003 + i``
    for sample ``i``. ``encoder_or_none`` None evaluates the DiT without memory tokens. ``lr_fn`` and ``context``:
    as :func:`frame_query_metrics`.

    Returns:
        the mean MSE (float, model-space velocity units) over samples and times.
    Raises:
        ValueError: a sample is not longer than ``segment_frames``.
    """
    total, count = 0.0, 0
    with _evaluating(dm, encoder_or_none, context) as (device, base_ctx):
        t_grid = _time_grid(n_t, device)
        for i, sample in enumerate(samples):
            latent, ctx, _ = _unpack(sample, device)
            if latent.shape[2] <= segment_frames:
                raise ValueError(f"sample of {latent.shape[2]} latent frames has no history before a "
                                 f"{segment_frames}-frame segment")
            history = latent[:, :, :-segment_frames].expand(n_t, -1, -1, -1, -1)
            target = latent[:, :, -segment_frames:].expand(n_t, -1, -1, -1, -1)
            g = torch.Generator().manual_seed(seed * 100003 + i)
            eps = torch.randn(target.shape, generator=g).to(device)
            lr_latent = None if encoder_or_none is None else _lr_latent(encoder_or_none, lr_fn, history, sample)
            loss, _ = stages.stage2_loss(dm, encoder_or_none, history, target, _batch_context(base_ctx, ctx, n_t),
                                         t=t_grid, eps=eps, lr_latent=lr_latent)
            total += loss.item()
            count += 1
    return total / max(count, 1)


__all__ = ["frame_query_metrics", "frame_query_loss", "next_segment_loss", "euler_sample", "standin_context"]
