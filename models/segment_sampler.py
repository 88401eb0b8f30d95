"""Sampling one segment with memory (arXiv 2512.23851 Sec. 4): the DiTs patched for memory attention, the history's
memory in both conditionings, the stock ``comfy.sample.sample`` over the schedule's steps.

A segment is sampled over :class:`StepRange` s: one for one model; for a Wan 2.2 A14B pair, the high-noise expert's
steps then the low-noise expert's, chained as the stock template's two KSamplerAdvanced nodes, each expert attending
to memory tokens of its own patch embedding (:mod:`models.experts`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

import comfy.sample
import comfy.utils

from . import families
from .conds import attach_memory
from .cross_attention import install_cross_attention
from .experts import BoundEncoder
from .input_checks import check_latent_finite
from .state_readout import install_state_readout

if TYPE_CHECKING:
    from .memory_value import Memory


@dataclass(frozen=True)
class SamplerSettings:
    """What the stock KSampler takes: steps, cfg, sampler and scheduler names, base seed; plus, for a Wan 2.2 A14B
    expert pair, the step where the low-noise expert takes over (ignored with one model)."""

    steps: int = 20
    cfg: float = 5.0
    sampler_name: str = "uni_pc"
    scheduler: str = "simple"
    seed: int = 0
    switch_step: int = 0  # first step of the low-noise expert; 0: half the steps, rounded up (stock A14B: 10 of 20)

    def switch(self) -> int:
        """The step where the second expert starts, in 1..steps (``steps``: the second expert never runs)."""
        return min(self.switch_step or (self.steps + 1) // 2, self.steps)


@dataclass(frozen=True)
class StepRange:
    """One DiT's share of every segment's sampling: steps ``[start, end)`` of the schedule, as one KSamplerAdvanced
    of the stock Wan 2.2 A14B workflow runs them."""

    model: object  # the MODEL as given: its patch embedding makes this expert's LR-branch memory tokens
    patched: object  # the model with memory attention (memory_model)
    expert: int  # index of its memory tokens in the history (PartKey.expert); 0: the only or first model
    start: int
    end: int


def memory_model(model, encoder):
    """Clone ``model`` with memory attention installed (``families.install_memory``; memory tokens at the timestep their
    config names, ``EncoderConfig.memory_timestep``) plus the encoder's cross-attention layers when it has that
    add-on. Raises like :meth:`MemoryEncoder.check`, and ValueError when a combination mixes timestep rules."""
    rules = {p.check(model).memory_timestep for p in encoder.parts}
    if len(rules) > 1:
        raise ValueError(f"the encoders of a combination give their memory tokens different timesteps {sorted(rules)}")
    patched = families.install_memory(model, memory_t0=rules.pop() == "zero")
    install_cross_attention(patched, encoder)
    install_state_readout(patched, encoder)
    return patched


def step_ranges(bound: BoundEncoder, sampler: SamplerSettings) -> list[StepRange]:
    """One :class:`StepRange` per DiT of ``bound.models``: ``[0, steps)`` for one model, ``[0, switch)`` and
    ``[switch, steps)`` for a pair (``sampler.switch()``). Every model is patched for memory attention with
    ``bound.encoder``; raises like :func:`memory_model`."""
    models = bound.models
    bounds = [0, sampler.steps] if len(models) == 1 else [0, sampler.switch(), sampler.steps]
    return [StepRange(m, memory_model(m, bound.encoder), e, bounds[e], bounds[e + 1]) for e, m in enumerate(models)]


def sample_steps(stage: StepRange, mem: Memory, positive: list, negative: list, latent: torch.Tensor, noise: torch.Tensor,
                 sampler: SamplerSettings, seed: int, first: bool, last: bool,
                 on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, int]:
    """Sample one stage's steps of ``latent`` ``[1, C, T, h, w]`` with this expert's memory in both conditionings,
    through ``comfy.sample.sample`` as KSamplerAdvanced does: the first stage adds ``noise`` at step 0, a later one
    continues from the leftover noise (``noise`` zeros, ``disable_noise``) at its ``start``; every stage but the last
    stops at its ``end`` with the leftover noise (return_with_leftover_noise), the last runs to the end of the
    schedule. A single stage is exactly the stock KSampler call. ``on_step(n)``, if given, is called after each step
    with the steps of the whole schedule done so far (1..steps); it then replaces the stock progress bar and latent
    previews (:func:`_progress_callback`). Returns ``(samples [1, C, T, h, w] CPU, M)``, M the
    memory tokens the expert attended to."""
    inp = mem.conds(stage.model, stage.expert)
    pos = attach_memory(positive, inp.tokens, inp.positions, inp.hidden, inp.extra)
    neg = attach_memory(negative, inp.tokens, inp.positions, inp.hidden, inp.extra)
    whole = None if first and last else stage.start  # progress over the whole schedule when sampling in stages
    samples = comfy.sample.sample(
        stage.patched, noise, sampler.steps, sampler.cfg, sampler.sampler_name, sampler.scheduler, pos, neg, latent,
        denoise=1.0, disable_noise=not first, start_step=None if first else stage.start,
        last_step=None if last else stage.end, force_full_denoise=False,
        callback=_progress_callback(stage.patched, sampler.steps, whole, on_step),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.cpu(), inp.attended


def sample_segment(stages: list[StepRange], mem: Memory, positive: list, negative: list, latent: torch.Tensor,
                   sampler: SamplerSettings, seed: int, on_step: Callable[[int], None] | None = None
                   ) -> tuple[torch.Tensor, int]:
    """Sample one segment from the empty ``latent`` ``[1, C, T, h, w]`` through every stage with steps
    (:func:`sample_steps`; a pair is the stock A14B chain of two KSamplerAdvanced nodes), noise from ``seed``;
    ``on_step`` as in :func:`sample_steps`.
    Returns ``(samples [1, C, T, h, w] float CPU, memory tokens of the first stage)``; raises ValueError when the
    samples hold NaN / inf (:func:`models.input_checks.check_latent_finite`)."""
    noise = comfy.sample.prepare_noise(latent, seed)
    run = [s for s in stages if s.start < s.end]  # a switch at ``steps`` leaves the low-noise expert nothing to do
    counts = []
    for k, stage in enumerate(run):
        first = k == 0
        step_noise = noise if first else torch.zeros(latent.shape, dtype=latent.dtype)
        latent, m = sample_steps(stage, mem, positive, negative, latent, step_noise, sampler, seed, first,
                                 k == len(run) - 1, on_step)
        counts.append(m)
    return check_latent_finite(latent, seed), counts[0]


def _progress_callback(model, steps: int, offset: int | None = None, on_step: Callable[[int], None] | None = None):
    """The sampler's per-step callback. Without ``on_step``: the stock progress bar + latent previews
    (``latent_preview.prepare_callback``) when running in a server (None outside one: tests import comfy only).
    With ``on_step``: only ``on_step(n)`` after each step, ``n`` the schedule's steps done (``offset + step + 1``;
    ``offset``: the first step of a stage when a segment is sampled in stages); the caller then owns the progress
    display (the Storyboard's run-wide bar with each finished segment's decoded frames, nodes/progress_ui.py)."""
    if on_step is None:
        try:
            import latent_preview
            return latent_preview.prepare_callback(model, steps)
        except ImportError:
            return None

    def callback(step, x0, x, total_steps):
        on_step((offset or 0) + step + 1)
    return callback


__all__ = ["SamplerSettings", "StepRange", "memory_model", "step_ranges", "sample_steps", "sample_segment"]
