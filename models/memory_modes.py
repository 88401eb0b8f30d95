"""The memory modes of the Storyboard and Apply Memory: what a segment attends to, per mode.

=====================  ===============================================================================================
``frame_preservation``  arXiv 2512.23851: every compressed history token (Fig. 2 encoder), plus its add-ons.
``pack_forcing``        PackForcing (Mao et al.): sink + top-K compressed mid blocks + recent frames, RoPE re-packed
                        per forward (:mod:`memory.packing`); the compressor is our Fig. 2 encoder.
``video_ssm``           VideoSSM (arXiv 2512.04519): sink + recent frames uncompressed (local memory) and a gated
                        delta-rule state per DiT block that absorbs the frames leaving the window (global memory,
                        :mod:`memory.state_memory`), read out by the video tokens through a position-aware router.
``sliding_window``      the last :data:`SLIDING_WINDOW_FRAMES` latent frames uncompressed, nothing else (the baseline).
``off``                 no memory.
=====================  ===============================================================================================

The settings of PackForcing / VideoSSM come from the encoder file (``EncoderConfig.memory_type`` and its fields); an
encoder made for another design runs them with :data:`PACK_DEFAULTS` / :data:`SSM_DEFAULTS` where that is possible
(:func:`mode_config`). The memory reaches the model as conds (``models/conds.py``) so the stock KSampler path works.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

import comfy.model_management

from ..memory import packing
from ..memory.config import EncoderConfig
from ..memory.history import HistoryBuffer, PartKey
from . import families
from .conds import BLOCKS_KEY, PACK_KEY, STATE_KEY, attended_tokens
from .cross_attention import memory_hidden
from .encoding import next_memory
from .memory_plan import load_for_absorb

MEMORY_MODES = ("frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off")
ENCODED_MODES = ("frame_preservation", "pack_forcing")  # modes that need the Fig. 2 encoder's tokens
SLIDING_WINDOW_FRAMES = 3
ABSORB_FRAMES = 1  # VideoSSM: latent frames absorbed per call (absorbing in parts equals absorbing at once)  # arXiv 2512.23851's sliding-window baseline: 3 latent frames
# PackForcing paper: sink 8 frames (2 Wan latent frames), recent 4 (we take 2 latent frames = 8 frames), top-K 16
PACK_DEFAULTS = {"sink_latent_frames": 2, "overlap_latent_frames": 2, "top_k": 16}
SSM_DEFAULTS = {"sink_latent_frames": 1, "overlap_latent_frames": 3}


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
        return attended_tokens(self.count, self.extra.get(BLOCKS_KEY), self.extra.get(PACK_KEY))


def check_mode(mode: str) -> str:
    """Return ``mode``; raise ValueError unless it is one of :data:`MEMORY_MODES`."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory_mode must be one of {list(MEMORY_MODES)}, got {mode!r}")
    return mode


def mode_config(encoder, model, mode: str) -> EncoderConfig:
    """The encoder's config resolved for ``model`` (:meth:`MemoryEncoder.check`) and ``mode``.

    Raises:
        ValueError: ``mode`` unknown; a combination of encoders outside frame_preservation; a VideoSSM file in a mode
        that needs a compressor; a weighted non-VideoSSM file in mode video_ssm (it has no state modules).
    """
    check_mode(mode)
    parts = encoder.parts
    if len(parts) > 1 and mode in ("pack_forcing", "video_ssm"):
        raise ValueError(f"memory_mode {mode} takes one encoder, not a combination ({encoder.name})")
    cfg = parts[0].check(model)
    families.check_memory_mode(cfg.family, mode)  # the family's hooks (its MEMORY_MODES)
    if mode in ENCODED_MODES and cfg.memory_type == "video_ssm":
        raise ValueError(f"memory encoder '{encoder.name}' is a VideoSSM state memory (no compressor): set memory_mode "
                         f"to video_ssm, or load a frame_preservation / pack_forcing encoder for {mode}")
    if mode == "pack_forcing" and cfg.memory_type != "pack_forcing":
        return dataclasses.replace(cfg, memory_type="pack_forcing", **PACK_DEFAULTS)
    if mode == "video_ssm" and cfg.memory_type != "video_ssm":
        if parts[0].state_dict is not None:
            raise ValueError(f"memory encoder '{encoder.name}' is a {cfg.memory_type} encoder with no VideoSSM state "
                             "modules: load a video_ssm file (e.g. framememory_lab_wan21_videossm.safetensors) or the "
                             "untrained encoder (local window only)")
        return dataclasses.replace(cfg, memory_type="video_ssm", ssm_heads=0, **SSM_DEFAULTS)
    if mode == "sliding_window":
        return dataclasses.replace(cfg, overlap_latent_frames=SLIDING_WINDOW_FRAMES)
    return cfg


def latent_range(model, history: HistoryBuffer):
    """``(start, end) -> [1, C, n, h, w]`` model-space latent frames of ``history`` (None when empty)."""

    def get(start: int, end: int):
        lat = history.latents(start, end)
        return None if lat is None else model.model.process_latent_in(lat[None].float())

    return get


def _embed(model):
    return lambda z: families.patch_embed(model, z)


def memory_inputs(model, encoder, history: HistoryBuffer, expert: int, mode: str) -> MemoryInputs:
    """What the segment after ``history`` attends to in ``mode`` (module docstring); ``model`` is the ``expert``-th
    DiT of the schedule. Empty for mode "off" or an empty history. Raises like :func:`mode_config`."""
    cfg = mode_config(encoder, model, mode)
    frames = history.latent_frames
    if mode == "off" or frames == 0:
        return MemoryInputs()
    if mode == "frame_preservation":
        tokens, positions = next_memory(model, encoder, history, expert)
        return MemoryInputs(tokens, positions, memory_hidden(model, encoder, history))
    if mode == "sliding_window":
        r = min(frames, cfg.overlap_latent_frames)
        window = packing.uncompressed(_embed(model), latent_range(model, history)(frames - r, frames), -float(r), cfg)
        return MemoryInputs(window[0][0], window[1].float())
    if mode == "pack_forcing":
        compressed = history.memory(key=PartKey(0, expert))
        tokens, positions, blocks, pack = packing.pack_inputs(_embed(model), latent_range(model, history), frames,
                                                              compressed, cfg)
        return MemoryInputs(tokens[0] if tokens.ndim == 3 else tokens, positions.float(), None,
                            {BLOCKS_KEY: blocks, PACK_KEY: pack})
    return ssm_inputs(model, encoder, history, expert, cfg)


def ssm_inputs(model, encoder, history: HistoryBuffer, expert: int, cfg: EncoderConfig) -> MemoryInputs:
    """VideoSSM's local memory (sink + recent, uncompressed) and, with trained state modules, the state of every
    block after absorbing the frames between sink and window (incrementally: the history caches the state per expert
    and absorbs only frames that left the window since)."""
    frames = history.latent_frames
    sink, recent, s, r = packing.local_context(_embed(model), latent_range(model, history), frames, cfg)
    tokens, positions, _ = packing.assemble(sink, None, recent)
    extra = {PACK_KEY: torch.tensor([0, 1, s, r], dtype=torch.long)}
    net = encoder.parts[0].state_network(model)  # None without trained state modules: local window only
    if net is not None:
        patcher = encoder.parts[0].patcher(model)
        extra[STATE_KEY] = absorbed_state(model, net, history, expert, s, frames - r, patcher)[0]
    return MemoryInputs(tokens[0], positions.float(), None, extra)


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


__all__ = ["MEMORY_MODES", "ENCODED_MODES", "SLIDING_WINDOW_FRAMES", "PACK_DEFAULTS", "SSM_DEFAULTS", "MemoryInputs",
           "check_mode", "mode_config", "latent_range", "memory_inputs", "ssm_inputs", "absorbed_state"]
