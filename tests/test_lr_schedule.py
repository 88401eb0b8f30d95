"""The learning-rate schedule of training/loop.py is PyTorch's (training.lr_schedule.warmup_cosine: LinearLR, then
CosineAnnealingLR, chained by SequentialLR) and gives, at every optimizer step, the learning rate of the formulas it
replaced, written out here as the reference:

* the loop's hand schedule before issue 23 (``training.loop.lr_at``, set into every param group before each step):
  ``base * min(1, (step + 1) / warmup_steps)`` (``base`` without a warm-up): a linear warm-up, then constant;
* warm-up then cosine decay (``min_learning_rate_frac`` < 1): the warm-up above, then
  ``min + (base - min) * (1 + cos(pi * j / T)) / 2`` with ``min = base * frac``, ``j`` the steps since the warm-up
  ended (``warmup_steps > 1``; else since step 0) and ``T = max(1, steps - warmup_steps)``.
"""
from __future__ import annotations

import math

import pytest
import torch

from framememory.training.loop import TrainArgs
from framememory.training.lr_schedule import warmup_cosine


def old_warmup_constant(base: float, warmup_steps: int, step: int) -> float:
    """training/loop.py's hand formula (``lr_at``, git history before issue 23), the rate of optimizer step ``step``."""
    return base * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def warmup_then_cosine(base: float, steps: int, warmup_steps: int, frac: float, step: int) -> float:
    """Closed form of the warm-up + cosine decay (module docstring) at optimizer step ``step``."""
    warm = max(0, warmup_steps)
    if warm > 1 and step < warm:
        return old_warmup_constant(base, warm, step)
    j = step - warm if warm > 1 else step
    low = base * frac
    return low + (base - low) * (1 + math.cos(math.pi * j / max(1, steps - warm))) / 2


def scheduler_rates(bases: list[float], steps: int, warmup_steps: int, frac: float) -> list[list[float]]:
    """Per optimizer step, the learning rate of every param group under :func:`warmup_cosine`, stepped as
    ``training.loop`` steps it (after each optimizer step)."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in bases]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, warmup_steps, frac)
    rates = []
    for _ in range(steps):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("steps,warmup_steps", [(10, 0), (10, 1), (10, 4), (6, 6), (5, 9), (30, 7)])
def test_warmup_then_constant_equals_the_old_hand_formula(steps, warmup_steps):
    bases = [1e-4, 3e-4]  # the LoRA group and the encoder group (TrainArgs.encoder_learning_rate)
    got = scheduler_rates(bases, steps, warmup_steps, 1.0)
    for step, rates in enumerate(got):
        want = [old_warmup_constant(b, warmup_steps, step) for b in bases]
        assert rates == pytest.approx(want, rel=1e-12, abs=0.0), (step, rates, want)


@pytest.mark.parametrize("steps,warmup_steps,frac", [(12, 4, 0.1), (20, 0, 0.05), (20, 1, 0.5), (9, 3, 0.0),
                                                     (40, 10, 0.25)])
def test_warmup_then_cosine_equals_the_closed_form(steps, warmup_steps, frac):
    got = scheduler_rates([2e-3], steps, warmup_steps, frac)
    for step, (rate,) in enumerate(got):
        want = warmup_then_cosine(2e-3, steps, warmup_steps, frac, step)
        assert rate == pytest.approx(want, rel=1e-9, abs=1e-15), (step, rate, want)


def test_train_args_defaults_are_the_constant_schedule():
    """TrainArgs' defaults (no warm-up, ``min_learning_rate_frac`` 1.0) keep the learning rate constant."""
    a = TrainArgs()
    got = scheduler_rates([a.learning_rate], 5, a.warmup_steps, a.min_learning_rate_frac)
    assert got == [[a.learning_rate]] * 5
