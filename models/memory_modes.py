"""The memory modes of the Storyboard and Apply Memory at inference: what a segment attends to, per mode.

Each mode is a memory design (:mod:`memory.designs`, one module per design, looked up by mode name): its
``encoder_config`` resolves the encoder file's settings (:func:`mode_config`), its ``context`` builds what the segment
attends to from a :class:`memory.designs.HistoryView` of the :class:`memory.history.HistoryBuffer`
(:func:`memory_inputs`); Stage II training builds the same context from its batch (``training/stages.py``).

The settings of PackForcing / VideoSSM come from the encoder file (``EncoderConfig.memory_type`` and its fields); an
encoder made for another design runs them with :data:`memory.designs.pack_forcing.DEFAULTS` /
:data:`memory.designs.video_ssm.DEFAULTS` where that is possible.
The memory reaches the model as conds (``models/conds.py``) so the stock KSampler path works.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import comfy.model_management

from ..memory import designs
from ..memory.config import EncoderConfig
from ..memory.designs import Context, HistoryView, pack_forcing
from ..memory.history import HistoryBuffer, PartKey
from . import families
from .conds import BLOCKS_KEY, PACK_KEY, STATE_KEY
from .cross_attention import memory_hidden
from .memory_plan import load_for_absorb

SLIDING_WINDOW_FRAMES = designs.sliding_window.SlidingWindowConfig().latent_frames  # the baseline: 3 latent frames
ABSORB_FRAMES = 1  # VideoSSM: latent frames absorbed per call (absorbing in parts equals absorbing at once)
_CONTEXT_KEYS = {"blocks": BLOCKS_KEY, "pack": PACK_KEY, "state": STATE_KEY}  # Context field -> model cond key


@dataclass
class MemoryInputs:
    """What one segment attends to: ``tokens [M, D]`` and ``positions [M, 3]`` (or None), the cross-attention add-on's
    ``hidden [M_h, Ch]`` (or None), and the modes' extra conds by key (``models.conds.EXTRA_KEYS``)."""

    tokens: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def count(self) -> int:
        """Memory tokens carried (before PackForcing's per-forward selection)."""
        return 0 if self.tokens is None else int(self.tokens.shape[0])

    @property
    def attended(self) -> int:
        """Memory tokens each forward attends to: :attr:`count`, except in PackForcing, where only the sink, the
        recent window and the kept mid blocks count (the per-forward top-K keeps ``top_k`` blocks;
        blocks of one rate have equal sizes, so the bound is exact)."""
        return pack_forcing.attended_tokens(self.count, self.extra.get(BLOCKS_KEY), self.extra.get(PACK_KEY))


def check_mode(mode: str) -> str:
    """Return ``mode``; raise ValueError unless it is one of :data:`memory.designs.MEMORY_MODES`."""
    designs.design(mode)
    return mode


def mode_config(encoder, model, mode: str) -> EncoderConfig:
    """The encoder's config resolved for ``model`` (:meth:`MemoryEncoder.check`) and ``mode`` (the design's
    ``encoder_config``).

    Raises:
        ValueError: ``mode`` unknown; a combination of encoders in a design that takes one; a family without the
        design's hooks (``families.check_memory_mode``); a VideoSSM file in a mode that needs a compressor; a weighted non-VideoSSM file in mode
        video_ssm (it has no state modules).
    """
    design = designs.design(mode)
    parts = encoder.parts
    if len(parts) > 1 and design.SINGLE_ENCODER:
        raise ValueError(f"memory_mode {mode} takes one encoder, not a combination ({encoder.name})")
    cfg = parts[0].check(model)
    families.check_memory_mode(cfg.family, mode)  # the family's hooks (its MEMORY_MODES)
    return design.encoder_config(cfg, encoder.name, parts[0].state_dict is not None)


def latent_range(model, history: HistoryBuffer):
    """``(start, end) -> [1, C, n, h, w]`` model-space latent frames of ``history`` (None when empty)."""

    def get(start: int, end: int):
        lat = history.latents(start, end)
        return None if lat is None else model.model.process_latent_in(lat[None].float())

    return get


def _embed(model):
    return lambda z: families.patch_embed(model, z)


def history_view(model, encoder, history: HistoryBuffer, expert: int) -> HistoryView:
    """:class:`memory.designs.HistoryView` of ``history`` for the ``expert``-th DiT ``model``: the cached Fig. 2 tokens
    of every encoder part (``[1, M, D]``, concatenated in order), the cross-attention add-on's hidden states and
    VideoSSM's cached, incrementally absorbed state (:func:`absorbed_state`)."""

    def compressed():
        parts = [history.memory(key=PartKey(i, expert)) for i in range(len(encoder.parts))]
        parts = [p for p in parts if p[0] is not None]  # a slow encoder (e.g. 2x2x8) may have nothing yet
        if not parts:
            return None, None
        tokens, positions = parts[0] if len(parts) == 1 else (torch.cat(p) for p in zip(*parts))  # one: the cache view
        return tokens[None], positions

    def absorb(start: int, end: int):
        net = encoder.parts[0].state_network(model)  # None without trained state modules: local window only
        if net is None:
            return None
        return absorbed_state(model, net, history, expert, start, end, encoder.parts[0].patcher(model))

    return HistoryView(history.latent_frames, _embed(model), latent_range(model, history), compressed,
                       lambda: memory_hidden(model, encoder, history), absorb)


def memory_inputs(model, encoder, history: HistoryBuffer, expert: int, mode: str) -> MemoryInputs:
    """What the segment after ``history`` attends to in ``mode`` (the design's ``context``); ``model`` is the
    ``expert``-th DiT of the schedule. Empty for an empty history. Raises like :func:`mode_config`."""
    cfg = mode_config(encoder, model, mode)
    if history.latent_frames == 0:
        return MemoryInputs()
    design = designs.design(mode)
    cfgs = [cfg] + ([p.check(model) for p in encoder.parts[1:]] if design.ENCODED else [])  # a combination's parts
    return _inputs(design.context(history_view(model, encoder, history, expert), design.config(cfgs)))


def _inputs(context: Context) -> MemoryInputs:
    """A design's context of batch 1 as :class:`MemoryInputs` (positions float32, extras by cond key)."""
    tokens = context.tokens
    if tokens is not None and tokens.ndim == 3:
        tokens = tokens[0]
    positions = None if context.positions is None else context.positions.float()
    extra = {_CONTEXT_KEYS[k]: v[0] if k == "state" else v for k, v in context.extras().items()}
    return MemoryInputs(tokens, positions, context.hidden, extra)


def absorbed_state(model, net, history: HistoryBuffer, expert: int, start: int, end: int,
                   patcher=None) -> torch.Tensor:
    """The state ``[1, L, H, dv, dk]`` float32 CPU after absorbing latent frames ``start .. end - 1`` of ``history``
    (patch-embedded tokens in (t, h, w) order), continuing the cached state of ``expert`` when it covers a prefix.
    ``patcher``: the state modules' model patcher; each absorb is declared to ComfyUI's loader through it
    (:func:`models.memory_plan.load_for_absorb`)."""
    done, state = history.states.get(expert, (start, None))
    if done > end:  # the cache is ahead of this history (should not happen: histories only grow)
        done, state = start, None
    device = comfy.model_management.get_torch_device()  # the layers cast their weights to the input's device
    for lo in range(done, end, ABSORB_FRAMES):  # a few latent frames at a time: bounded activations at any size
        hi = min(lo + ABSORB_FRAMES, end)
        emb = families.patch_embed(model, latent_range(model, history)(lo, hi))  # [1, D, n, Ht, Wt]
        load_for_absorb(patcher, net.cfg, emb[0, 0].numel())  # ComfyUI frees the absorb's activations first
        with torch.no_grad():
            state = net.absorb(emb.flatten(2).transpose(1, 2).to(device),
                               None if state is None else state.to(device)).float().cpu()
        history.states[expert] = (hi, state)
    if state is None:
        shape = (1, net.cfg.dit_blocks, net.cfg.ssm_heads, net.cfg.dim // net.cfg.ssm_heads, net.cfg.ssm_key_dim)
        state = torch.zeros(shape)
    return state


__all__ = ["SLIDING_WINDOW_FRAMES", "MemoryInputs", "check_mode", "mode_config", "latent_range", "history_view",
           "memory_inputs", "absorbed_state"]
