"""The learning-rate schedule of every training run of this repository (training/loop.py's Stage I / II, the lab VAE,
the base DiT pretraining): PyTorch's own schedulers, a linear warm-up then a cosine decay, stepped once per optimizer
step."""
from __future__ import annotations

import torch


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup_steps: int, min_lr_frac: float):
    """PyTorch schedulers for ``steps`` optimizer steps: linear warm-up from ``1 / warmup_steps`` of each group's
    learning rate over ``warmup_steps`` steps (``LinearLR``), then a cosine decay to ``min_lr_frac`` of it
    (``CosineAnnealingLR``; ``min_lr_frac`` 1.0: constant), chained by ``SequentialLR``. Step it once per optimizer
    step. Raises ValueError for a decay over parameter groups of different learning rates (one ``eta_min``)."""
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

    warm = max(0, warmup_steps)
    parts = []
    if warm > 1:
        parts.append(LinearLR(opt, start_factor=1.0 / warm, end_factor=1.0, total_iters=warm - 1))
    if min_lr_frac < 1.0:
        bases = {g["initial_lr"] if "initial_lr" in g else g["lr"] for g in opt.param_groups}
        if len(bases) != 1:
            raise ValueError(f"a cosine decay needs one learning rate for every parameter group, got {sorted(bases)}")
        parts.append(CosineAnnealingLR(opt, T_max=max(1, steps - warm), eta_min=bases.pop() * min_lr_frac))
    if not parts:
        return ConstantLR(opt, factor=1.0, total_iters=0)
    return parts[0] if len(parts) == 1 else SequentialLR(opt, parts, milestones=[warm])
