"""A reduced-width Wan 2.1 VAE (ComfyUI's own ``comfy.ldm.wan.vae.WanVAE``) trained as an autoencoder on real clips.

The lab model's VAE (:mod:`training.lab`). Same architecture as Wan 2.1's VAE (causal 3D convolutions, 8x8 spatial and
4x temporal compression, 16 latent channels, the first frame alone) at base width ``dim`` (Wan 2.1: 96), so the stock
**Load VAE** detects it from its weights (``comfy.sd.VAE``: width from ``decoder.head.0.gamma``).

Training (:func:`train_vae`): random crops ``[B, 3, frames, crop, crop]`` of the clips in ``[-1, 1]`` (what ComfyUI's
VAE wrapper feeds the module), ``mu = encode(x)``, ``z = mu + noise * std_c * eps`` (noise in the Wan 2.1 latent
scale, so the decoder tolerates the DiT's imperfect latents), ``loss = L1(decode(z), x) + MSE(decode(z), x)`` plus a
moment loss that keeps every latent channel near ComfyUI's Wan 2.1 latent statistics (``comfy.latent_formats.Wan21``
``latents_mean`` / ``latents_std``): in model space ``(mu - mean) / std`` has per-channel mean 0 and std 1, which is
what the DiT (and its ``process_in``) assume. Crops of a fully convolutional model generalise to whole frames.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

WAN21_VAE = dict(z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)  # what comfy.sd.VAE builds for Wan 2.1


@dataclass(frozen=True)
class VAETraining:
    """Settings of :func:`train_vae`. Units: pixels, video frames (4k+1), optimizer steps."""

    dim: int = 12            # base width (Wan 2.1: 96)
    steps: int = 300
    batch_size: int = 4
    crop: int = 64           # square crop side, multiple of 8
    frames: int = 9          # frames per crop, 4k+1 (9 -> 3 latent frames)
    lr: float = 2e-3
    warmup_steps: int = 20
    latent_noise: float = 0.1  # decoder input noise, in units of the Wan 2.1 latent std
    moment_weight: float = 0.05
    seed: int = 0


def make_vae(dim: int, seed: int = 0) -> torch.nn.Module:
    """``WanVAE`` of base width ``dim``, every tensor set by :func:`demo.tiny_models.init_weights` (ComfyUI's layers
    skip init); fp32, train mode."""
    from comfy.ldm.wan.vae import WanVAE

    from ..demo.tiny_models import init_weights

    return init_weights(WanVAE(dim=dim, **WAN21_VAE), seed).train()


def random_crops(clips: list[torch.Tensor], s: VAETraining, g: torch.Generator) -> torch.Tensor:
    """``[B, 3, frames, crop, crop]`` float32 in ``[-1, 1]`` from uint8 clips ``[F, H, W, 3]`` (clip picked in
    proportion to its length; clips shorter than ``frames`` are never picked). Raises ValueError when none is long
    enough or frames are smaller than the crop."""
    usable = [c for c in clips if c.shape[0] >= s.frames]
    if not usable or min(min(c.shape[1:3]) for c in usable) < s.crop:
        raise ValueError(f"no clip has {s.frames} frames of at least {s.crop}x{s.crop} pixels")
    weights = torch.tensor([float(c.shape[0] - s.frames + 1) for c in usable])
    out = []
    for i in torch.multinomial(weights, s.batch_size, replacement=True, generator=g).tolist():
        c = usable[i]
        t = int(torch.randint(0, c.shape[0] - s.frames + 1, (1,), generator=g))
        y = int(torch.randint(0, c.shape[1] - s.crop + 1, (1,), generator=g))
        x = int(torch.randint(0, c.shape[2] - s.crop + 1, (1,), generator=g))
        out.append(c[t:t + s.frames, y:y + s.crop, x:x + s.crop])
    return torch.stack(out).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def _latent_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's Wan 2.1 latent mean / std, ``[1, 16, 1, 1, 1]`` each."""
    from comfy.latent_formats import Wan21

    fmt = Wan21()
    return fmt.latents_mean.reshape(1, -1, 1, 1, 1).float(), fmt.latents_std.reshape(1, -1, 1, 1, 1).float()


def vae_loss(vae, x: torch.Tensor, s: VAETraining, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The autoencoder loss of one batch ``x`` ``[B, 3, T, H, W]`` in ``[-1, 1]`` (module docstring). Returns
    ``(loss, {"l1", "moment"})``."""
    mean, std = _latent_stats()
    mu = vae.encode(x)                                          # [B, 16, 1 + (T - 1) / 4, H / 8, W / 8]
    z = mu + s.latent_noise * std * torch.randn(mu.shape, generator=g)
    y = vae.decode(z)                                           # [B, 3, T, H, W]
    l1 = (y - x).abs().mean()
    m = (mu - mean) / std                                       # model space
    dims = (0, 2, 3, 4)
    moment = (m.mean(dims) ** 2).mean() + ((m.std(dims) - 1.0) ** 2).mean()
    loss = l1 + torch.nn.functional.mse_loss(y, x) + s.moment_weight * moment
    return loss, {"l1": l1.item(), "moment": moment.item()}


def train_vae(clips: list[torch.Tensor], s: VAETraining, log: Callable[[str], None] = print) -> tuple[torch.nn.Module, dict]:
    """Train a :func:`make_vae` on random crops of ``clips`` (uint8 ``[F, H, W, 3]``) with AdamW (cosine decay to
    10 % after a linear warm-up). Returns ``(vae in eval mode, {"losses", "seconds", "final_l1"})``."""
    vae = make_vae(s.dim, s.seed)
    g = torch.Generator().manual_seed(s.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.lr, weight_decay=0.0)
    losses, l1s, t0 = [], [], time.perf_counter()
    for step in range(s.steps):
        warm = min(1.0, (step + 1) / max(1, s.warmup_steps))
        cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, s.steps)))
        for group in opt.param_groups:
            group["lr"] = s.lr * warm * cos
        loss, parts = vae_loss(vae, random_crops(clips, s, g), s, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        l1s.append(parts["l1"])
        if (step + 1) % 25 == 0 or step + 1 == s.steps:
            log(f"vae step {step + 1}/{s.steps} loss {sum(losses[-25:]) / len(losses[-25:]):.4f} "
                f"l1 {sum(l1s[-25:]) / len(l1s[-25:]):.4f} moment {parts['moment']:.3f}")
    vae.eval()
    for prm in vae.parameters():
        prm.requires_grad_(False)
    tail = l1s[-20:]
    return vae, {"losses": losses, "seconds": time.perf_counter() - t0, "final_l1": sum(tail) / max(1, len(tail))}


def reconstruction_metrics(vae, clips: dict[str, torch.Tensor]) -> dict:
    """PSNR (dB) / SSIM of ``vae`` (a ``comfy.sd.VAE``, as the stock Load VAE gives it) on each clip
    (uint8 ``[F, H, W, 3]``, F = 4k+1): encode, decode, compare in ``[0, 1]`` RGB (torchmetrics).
    Returns ``{"per_clip": {name: {"psnr_db", "ssim", "frames"}}, "psnr_db", "ssim"}`` (means over clips)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    per = {}
    for name, frames in clips.items():
        x = frames.float() / 255.0                              # [F, H, W, 3]
        y = vae.decode(vae.encode(x)).reshape(x.shape).clamp(0, 1).float()
        a, b = y.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2)
        per[name] = {"psnr_db": round(float(peak_signal_noise_ratio(a, b, data_range=1.0)), 3),
                     "ssim": round(float(structural_similarity_index_measure(a, b, data_range=1.0)), 4),
                     "frames": int(x.shape[0])}
    n = max(1, len(per))
    return {"per_clip": per, "psnr_db": round(sum(v["psnr_db"] for v in per.values()) / n, 3),
            "ssim": round(sum(v["ssim"] for v in per.values()) / n, 4)}
