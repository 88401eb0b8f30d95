"""A reduced-width Wan 2.1 VAE (ComfyUI's own ``comfy.ldm.wan.vae.WanVAE``) trained as an autoencoder on real clips.

The lab model's VAE (:mod:`training.lab`). Same architecture as Wan 2.1's VAE (causal 3D convolutions, 8x8 spatial and
4x temporal compression, 16 latent channels, the first frame alone) at base width ``dim`` (Wan 2.1: 96), so the stock
**Load VAE** detects it from its weights (``comfy.sd.VAE``: width from ``decoder.head.0.gamma``).

Training (:func:`train_vae`): random crops ``[B, 3, frames, crop, crop]`` of the clips in ``[-1, 1]`` (what ComfyUI's
VAE wrapper feeds the module), ``mu = encode(x)``, ``z = mu + noise * std_c * eps`` (noise in the Wan 2.1 latent
scale, so the decoder tolerates the DiT's imperfect latents), ``loss = L1(decode(z), x) + MSE(decode(z), x)`` plus a
moment loss that keeps every latent channel near ComfyUI's Wan 2.1 latent statistics (``comfy.latent_formats.Wan21``
``latents_mean`` / ``latents_std``): in model space ``(mu - mean) / std`` has per-channel mean 0 and std 1, which is
what the DiT (and its ``process_in``) assume. Crops of a fully convolutional model generalise to whole frames; in
time they do only when a crop holds at least two 4-frame chunks after the first frame (``frames`` >= 9): the causal
cache that carries a chunk into the next is otherwise never trained, and longer streams fall apart (5-frame crops:
20.4 dB on 5 held-out frames, 12.1 dB on 17, issue 23).

**Burn-in** (``burn_in``): longer crops do not fix that by themselves (9-frame crops: 18.8 dB on 9 held-out frames,
16.2 on 17, 12.7 on 49): every layer is a causal convolution whose cache holds its last 2 input frames, so a stream's
state depends on the last few dozen frames only (perturbing frame 0 of a trained lab VAE changes the reconstruction by
< 1 % of its first-frame change after 32 frames, < 0.1 % after 44), and a crop that starts at frame 0 never trains the
steady state where every cache at every depth holds real earlier frames. So each batch first runs the encoder and the
decoder *without gradient* over ``b`` frames (the first frame + ``b / 4`` chunks; ``b`` drawn per batch from
0, 4, ..., ``burn_in``), then trains on the next ``frames - 1`` frames with the caches carried (:func:`stream_loss`);
``b = 0`` trains the stream's start (``frames`` frames from frame 0). The stock ``WanVAE.encode`` / ``decode`` loops
run with the stream's caches kept between the two parts (:func:`encode_chunks`, :func:`decode_chunks`), through
``models.vae_stream.streamed``, the same code that streams the history at inference (on ComfyUI 0.3.75 and 0.33.0).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .lr_schedule import warmup_cosine

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
    min_lr_frac: float = 0.1   # cosine decay ends at this fraction of lr (training.lr_schedule.warmup_cosine)
    latent_noise: float = 0.1  # decoder input noise, in units of the Wan 2.1 latent std
    moment_weight: float = 0.05
    burn_in: int = 0         # most frames (multiple of 4) streamed without gradient before the trained ones; 0: none
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming the setting when ``frames`` is not 4k+1 (k >= 1) or ``burn_in`` not a multiple of 4."""
        if self.frames < 5 or (self.frames - 1) % 4:
            raise ValueError(f"VAETraining.frames must be 4k+1 with k >= 1 (whole 4-frame chunks), got {self.frames}")
        if self.burn_in < 0 or self.burn_in % 4:
            raise ValueError(f"VAETraining.burn_in must be a multiple of 4 frames (whole chunks), got {self.burn_in}")


def make_vae(dim: int, seed: int = 0) -> torch.nn.Module:
    """``WanVAE`` of base width ``dim``, every tensor set by :func:`demo.tiny_models.init_weights` (ComfyUI's layers
    skip init); fp32, train mode."""
    from comfy.ldm.wan.vae import WanVAE

    from ..demo.tiny_models import init_weights

    return init_weights(WanVAE(dim=dim, **WAN21_VAE), seed).train()


def random_crops(clips: list[torch.Tensor], s: VAETraining, g: torch.Generator, frames: int | None = None
                 ) -> torch.Tensor:
    """``[B, 3, frames, crop, crop]`` float32 in ``[-1, 1]`` from uint8 clips ``[F, H, W, 3]`` (clip picked in
    proportion to its length; clips shorter than ``frames`` (default ``s.frames``) are never picked). Raises ValueError
    when none is long enough or frames are smaller than the crop."""
    n = frames or s.frames
    usable = [c for c in clips if c.shape[0] >= n]
    if not usable or min(min(c.shape[1:3]) for c in usable) < s.crop:
        raise ValueError(f"no clip has {n} frames of at least {s.crop}x{s.crop} pixels")
    weights = torch.tensor([float(c.shape[0] - n + 1) for c in usable])
    out = []
    for i in torch.multinomial(weights, s.batch_size, replacement=True, generator=g).tolist():
        c = usable[i]
        t = int(torch.randint(0, c.shape[0] - n + 1, (1,), generator=g))
        y = int(torch.randint(0, c.shape[1] - s.crop + 1, (1,), generator=g))
        x = int(torch.randint(0, c.shape[2] - s.crop + 1, (1,), generator=g))
        out.append(c[t:t + n, y:y + s.crop, x:x + s.crop])
    return torch.stack(out).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def _latent_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's Wan 2.1 latent mean / std, ``[1, 16, 1, 1, 1]`` each."""
    from comfy.latent_formats import Wan21

    fmt = Wan21()
    return fmt.latents_mean.reshape(1, -1, 1, 1, 1).float(), fmt.latents_std.reshape(1, -1, 1, 1, 1).float()


def stream_caches(vae) -> tuple[list, list]:
    """Fresh causal caches ``(encoder, decoder)`` of a ``WanVAE``, as long as ``WanVAE.encode`` / ``decode`` allocate
    them on the installed ComfyUI (``models.vae_stream.cache_slots``: per causal conv its last input frames, and on
    ComfyUI >= 0.18 one deferred-output slot per temporal downsample)."""
    from ..models.vae_stream import cache_slots

    return [None] * cache_slots(vae, vae.encoder), [None] * cache_slots(vae, vae.decoder)


def encode_chunks(vae, x: torch.Tensor, cache: list, first: bool) -> torch.Tensor:
    """``mu`` ``[B, 16, T', H / 8, W / 8]`` of ``x`` ``[B, 3, T, H, W]`` continuing the stream whose encoder caches are
    ``cache`` (updated in place): with ``first`` the stream's start (T = 4k+1, T' = k + 1), else a continuation (T =
    4k, T' = k). The stock ``WanVAE.encode`` loop runs with the stream's cache (``models.vae_stream.streamed``, the
    inference stream's code), with gradients; raises ValueError for a T that is not whole chunks."""
    from ..models.vae_stream import streamed

    if (x.shape[2] - int(first)) % 4 or x.shape[2] < int(first):
        raise ValueError(f"encode_chunks needs {'1 + ' if first else ''}4k frames, got {x.shape[2]}")
    with streamed(vae, "encoder", cache, skip_first=not first):
        return vae.encode(x if first else torch.cat([x[:, :, :1], x], 2))


def decode_chunks(vae, z: torch.Tensor, cache: list) -> torch.Tensor:
    """Frames ``[B, 3, T, H, W]`` of latents ``z`` ``[B, 16, T', h, w]`` continuing the stream whose decoder caches
    are ``cache`` (updated in place; fresh caches: T = 4T' - 3, else 4T'): the stock ``WanVAE.decode`` loop with the
    stream's cache (``models.vae_stream.streamed``), with gradients."""
    from ..models.vae_stream import streamed

    with streamed(vae, "decoder", cache):
        return vae.decode(z)


def stream_loss(vae, x: torch.Tensor, burn: int, s: VAETraining, g: torch.Generator
                ) -> tuple[torch.Tensor, dict]:
    """The autoencoder loss (module docstring) of ``x`` ``[B, 3, 1 + burn + (frames - 1), H, W]`` in ``[-1, 1]``:
    its first ``1 + burn`` frames streamed through encoder and decoder without gradient (``burn`` = 0: none), the
    loss on the rest (``burn`` = 0: every frame) with the caches carried. Returns ``(loss, {"l1", "moment"})``."""
    mean, std = _latent_stats()
    enc, dec = stream_caches(vae)
    noise = lambda m: m + s.latent_noise * std * torch.randn(m.shape, generator=g)  # noqa: E731
    head = 1 + burn if burn else 0
    if burn:
        with torch.no_grad():
            decode_chunks(vae, noise(encode_chunks(vae, x[:, :, :head], enc, True)), dec)
    x = x[:, :, head:]
    mu = encode_chunks(vae, x, enc, not burn)                   # [B, 16, T', H / 8, W / 8]
    y = decode_chunks(vae, noise(mu), dec)                      # [B, 3, T, H, W]
    l1 = (y - x).abs().mean()
    m = (mu - mean) / std                                       # model space
    dims = (0, 2, 3, 4)
    moment = (m.mean(dims) ** 2).mean() + ((m.std(dims) - 1.0) ** 2).mean()
    loss = l1 + torch.nn.functional.mse_loss(y, x) + s.moment_weight * moment
    return loss, {"l1": l1.item(), "moment": moment.item()}


def vae_loss(vae, x: torch.Tensor, s: VAETraining, g: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The autoencoder loss of one batch ``x`` ``[B, 3, T, H, W]`` (T = 4k+1) in ``[-1, 1]`` from the stream's start
    (:func:`stream_loss` without burn-in). Returns ``(loss, {"l1", "moment"})``."""
    return stream_loss(vae, x, 0, s, g)


class Checkpoint:
    """A resumable training state in one folder: ``weights.safetensors`` (the module's state dict) plus
    ``state.pt`` (optimizer, scheduler, generator, step and history lists: tensors and numbers only, read with
    ``torch.load(weights_only=True)``). Both are written to temporary names and renamed, state last."""

    def __init__(self, folder) -> None:
        from pathlib import Path

        self.folder = Path(folder)

    def exists(self) -> bool:
        return (self.folder / "state.pt").is_file() and (self.folder / "weights.safetensors").is_file()

    def save(self, module, opt, sched, g: torch.Generator, step: int, extra: dict) -> None:
        import os

        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "weights.safetensors.tmp"
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        os.replace(tmp, self.folder / "weights.safetensors")
        tmp = self.folder / "state.pt.tmp"
        torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), "rng": g.get_state(), "step": step,
                    "extra": extra}, tmp)
        os.replace(tmp, self.folder / "state.pt")

    def load(self, module, opt, sched, g: torch.Generator) -> tuple[int, dict]:
        """Restore everything in place; returns ``(step, extra)``."""
        from safetensors.torch import load_file

        module.load_state_dict(load_file(str(self.folder / "weights.safetensors")))
        st = torch.load(self.folder / "state.pt", weights_only=True)
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["rng"])
        return int(st["step"]), st["extra"]


def train_vae(clips: list[torch.Tensor], s: VAETraining, log: Callable[[str], None] = print, checkpoint_dir=None,
              save_every: int = 250, evaluate: Callable[[torch.nn.Module], dict] | None = None,
              eval_every: int = 0) -> tuple[torch.nn.Module, dict]:
    """Train a :func:`make_vae` on random crops of ``clips`` (uint8 ``[F, H, W, 3]``) with AdamW and
    :func:`training.lr_schedule.warmup_cosine` (decay to ``s.min_lr_frac``). With ``checkpoint_dir`` the state is
    saved every ``save_every`` steps (:class:`Checkpoint`) and a rerun continues from it (the same next step). ``evaluate(vae)``
    (e.g. held-out PSNR) runs every ``eval_every`` steps in eval mode, its results logged and kept.
    Each batch is streamed after a burn-in of ``0..s.burn_in`` frames (:func:`stream_loss`). Raises ValueError for
    settings :meth:`VAETraining.check` refuses. Returns ``(vae in eval mode, {"losses", "seconds", "final_l1",
    "evals"})``."""
    s.check()
    vae = make_vae(s.dim, s.seed)
    g = torch.Generator().manual_seed(s.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, s.steps, s.warmup_steps, s.min_lr_frac)
    ckpt = Checkpoint(checkpoint_dir) if checkpoint_dir else None
    start, hist = 0, {"losses": [], "l1s": [], "evals": [], "seconds": 0.0}
    if ckpt is not None and ckpt.exists():
        start, hist = ckpt.load(vae, opt, sched, g)
        log(f"vae: resumed at step {start}/{s.steps} from {ckpt.folder}")
    t0 = time.perf_counter() - hist["seconds"]
    for step in range(start, s.steps):
        burn = 4 * int(torch.randint(0, s.burn_in // 4 + 1, (1,), generator=g)) if s.burn_in else 0
        loss, parts = stream_loss(vae, random_crops(clips, s, g, s.frames + burn), burn, s, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        hist["losses"].append(loss.item())
        hist["l1s"].append(parts["l1"])
        done = step + 1
        if done % 25 == 0 or done == s.steps:
            tail = hist["l1s"][-25:]
            log(f"vae step {done}/{s.steps} loss {sum(hist['losses'][-25:]) / len(tail):.4f} "
                f"l1 {sum(tail) / len(tail):.4f} moment {parts['moment']:.3f} lr {sched.get_last_lr()[0]:.2e}")
        if evaluate is not None and eval_every and (done % eval_every == 0 or done == s.steps):
            vae.eval()
            with torch.no_grad():
                hist["evals"].append({"step": done, **evaluate(vae)})
            vae.train()
            log(f"vae step {done}: held-out {hist['evals'][-1]}")
        if ckpt is not None and (done % save_every == 0 or done == s.steps):
            hist["seconds"] = time.perf_counter() - t0
            ckpt.save(vae, opt, sched, g, done, hist)
    vae.eval()
    for prm in vae.parameters():
        prm.requires_grad_(False)
    tail = hist["l1s"][-20:]
    return vae, {"losses": hist["losses"], "seconds": time.perf_counter() - t0, "evals": hist["evals"],
                 "final_l1": sum(tail) / max(1, len(tail))}


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
