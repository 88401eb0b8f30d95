"""Base pretraining of a DiT without memory: every weight trained as a video generator (rectified flow).

The stand-in for pretrained Wan weights in the lab model (:mod:`training.lab`) and the reproduction
(:mod:`training.reproduce`): ComfyUI's own ``WanModel`` learns to generate segments of real video (its latents in
model space) from the text condition alone, so that Stage I / Stage II spend their steps on memory. Same flow pair
and DiT call as the training stages (:func:`training.stages.flow_pair`, :func:`training.stages.dit_forward`,
no memory), diffusion time ``t ~ L(timestep_loc, 1)`` (:class:`training.stages.LogitNormal`).
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from . import stages

# next_batch(generator) -> (x0 [B, C, T, h, w] model-space latents, context [B, L, D] text condition)
BatchFn = Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def pretrain_dit(dm: torch.nn.Module, next_batch: BatchFn, *, steps: int, lr: float, warmup_steps: int = 0,
                 timestep_loc: float = 0.0, seed: int = 0, device=None, mixed_precision: str = "no",
                 log: Callable[[str], None] = print, log_every: int = 50, min_lr_frac: float = 1.0,
                 checkpoint_dir=None, save_every: int = 100) -> dict:
    """Train every weight of ``dm`` with AdamW (weight decay 0, gradient clipping 1.0) and PyTorch schedulers (linear
    warm-up, then cosine decay to ``min_lr_frac`` of ``lr``; 1.0: constant; :func:`training.lr_schedule.warmup_cosine`)
    on batches from ``next_batch`` for ``steps`` optimizer steps. With ``checkpoint_dir`` the state is saved every
    ``save_every`` steps (:class:`training.vae_train.Checkpoint`) and a rerun continues from it; ``next_batch`` draws
    from the saved generator, so the resumed run takes the same next step.

    Returns ``{"losses": [float per step], "seconds": float, "final_loss": mean of the last 20}``; ``dm`` is left
    frozen (``requires_grad False``) in eval mode on ``device``. Raises ValueError for ``steps < 0``.
    """
    from .lr_schedule import warmup_cosine
    from .vae_train import Checkpoint

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    device = torch.device(device or "cpu")
    g = torch.Generator().manual_seed(seed + 7)
    dm.to(device).train()
    for prm in dm.parameters():
        prm.requires_grad_(True)
    opt = torch.optim.AdamW(dm.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, max(1, steps), warmup_steps, min_lr_frac)
    times = stages.LogitNormal(timestep_loc, 1.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16")
    ckpt = Checkpoint(checkpoint_dir) if checkpoint_dir else None
    start, hist = 0, {"losses": [], "seconds": 0.0}
    if ckpt is not None and ckpt.exists():
        start, hist = ckpt.load(dm, opt, sched, g)
        log(f"base: resumed at step {start}/{steps} from {ckpt.folder}")
    losses, t0 = hist["losses"], time.perf_counter() - hist["seconds"]
    for step in range(start, steps):
        x0, ctx = next_batch(g)
        x0, ctx = x0.to(device), ctx.float().to(device)
        t = times.sample((x0.shape[0],), g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        x_t, target = stages.flow_pair(x0, t, eps)
        with autocast:
            pred = stages.dit_forward(dm, x_t, t, ctx, None, None)
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dm.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            tail = losses[-log_every:]
            log(f"base step {step + 1}/{steps} loss {sum(tail) / len(tail):.4f} lr {sched.get_last_lr()[0]:.2e}")
        if ckpt is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
            ckpt.save(dm, opt, sched, g, step + 1, {"losses": losses, "seconds": time.perf_counter() - t0})
    for prm in dm.parameters():
        prm.requires_grad_(False)
    dm.eval()
    tail = losses[-20:]
    return {"losses": losses, "seconds": time.perf_counter() - t0,
            "final_loss": sum(tail) / len(tail) if tail else float("nan")}
