"""The history encoder under ComfyUI's memory management, and encoding of history segments.

- :class:`MemoryEncoder` is what the ``MEMORY_ENCODER`` socket carries: a config plus weights (or none, for the
  untrained LR-branch-only encoder). Its :class:`~memory.encoder.HistoryEncoder` (Fig. 2 of arXiv 2512.23851, the
  one module training uses too) is built from ``comfy.ops.manual_cast`` layers and wrapped in a model patcher, so
  ComfyUI loads and offloads it like any model.
- :func:`encode_pending` encodes the new segments of a :class:`~memory.history.HistoryBuffer`: the LR latent
  (:func:`memory.encoder.lr_clip` of the frames through the DiT's own VAE, continuing the history's LR stream:
  :class:`models.vae_stream.VideoStream`), then Fig. 2 with the DiT's own patch embedding as the LR branch's first
  projection.

Add-ons of arXiv 2512.23851, all off by default, all trained by ``training/`` like the encoder itself:

- **Several encoders concatenated** (e.g. 4x4x2 + 2x2x8): :class:`MultiEncoder` combines encoders; the history
  latents are shared, each encoder caches its own tokens under its own :class:`~memory.history.PartKey` and groups
  segments by its own time rate; the memory is the concatenation of every encoder's tokens, each at its own
  positions. Code takes ``encoder.parts`` (``[self]`` for a single encoder).
- **Overlap window** (``EncoderConfig.overlap_latent_frames``): :func:`next_memory` adds the last latent frames
  uncompressed (:func:`memory.encoder.overlap_window`).
- **Cross-attention**: :mod:`models.cross_attention`.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops

from ..memory.config import EncoderConfig
from ..memory.encoder import HistoryEncoder, lr_clip, overlap_window
from ..memory.grid import memory_positions
from ..memory.history import HistoryBuffer, PartKey
from ..memory.io import load_encoder_file
from ..memory.designs import design, network_class
from ..memory.designs.video_ssm import StateMemory
from . import families
from .vae_stream import VideoStream

log = logging.getLogger("FrameMemory")
UNTRAINED = "untrained (LR branch only)"
# Families with the cross-attention add-on -> the number of DiT blocks that get a layer (EncoderConfig.dit_blocks)
CROSS_ATTENTION_FAMILIES = {name: fam.cross_blocks for name, fam in families.FAMILIES.items()}
BLOCKS_HINT = "dit_blocks counts the DiT blocks: Wan every block, HunyuanVideo double + single blocks (13B: 20 + 40 = 60)"


class MemoryEncoder:
    """A history encoder ready for one DiT.

    Args:
        cfg: encoder config (``dim == 0``: take the DiT's width; only for weight-less encoders).
        state_dict: HR-branch weights, or None (HR branch zero-initialised: adds nothing).
        name: shown in messages.
    """

    def __init__(self, cfg: EncoderConfig, state_dict: dict | None = None, name: str = UNTRAINED) -> None:
        self.cfg, self.state_dict, self.name = cfg, state_dict, name
        self._patchers: dict[int, object] = {}

    @property
    def parts(self) -> list["MemoryEncoder"]:
        """The encoders whose tokens make up the memory: ``[self]`` (see :class:`MultiEncoder`)."""
        return [self]

    @classmethod
    def from_file(cls, path: str) -> "MemoryEncoder":
        sd, cfg = load_encoder_file(path)
        return cls(cfg, sd, os.path.basename(path))

    @classmethod
    def untrained(cls, rate: str = "4x4x2") -> "MemoryEncoder":
        return cls(EncoderConfig(dim=0, rate=rate, use_hr=False))

    def check(self, model) -> EncoderConfig:
        """Return the config resolved for ``model`` (an untrained encoder takes the model's family, width and
        latent geometry; with the cross-attention add-on ``dit_blocks`` must equal the family's block count, see
        CROSS_ATTENTION_FAMILIES).

        Raises:
            ValueError: naming every field that does not match the model.
            NotImplementedError: the add-on is on and the model's family has no cross-attention patches.
        """
        adapter = families.family_for(model)
        width = families.model_width(model)
        expect = {"family": adapter.FAMILY, "dim": width, "latent_channels": adapter.LATENT_CHANNELS,
                  "vae_stride": tuple(adapter.VAE_STRIDE), "patch_size": tuple(adapter.PATCH_SIZE)}
        if self.cfg.memory_timestep not in adapter.MEMORY_TIMESTEPS:
            raise ValueError(f"memory encoder '{self.name}' gives its memory tokens the {self.cfg.memory_timestep!r} "
                             f"timestep, which only Wan 2.1 supports; {adapter.FAMILY} needs 'zero'")
        if self.cfg.dim == 0:
            return dataclasses.replace(self.cfg, **expect)
        if design(self.cfg.memory_type).PER_BLOCK_STATE and self.cfg.ssm_heads:
            expect["dit_blocks"] = len(families.diffusion_model(model).blocks)
        if self.cfg.cross_attention:
            blocks = CROSS_ATTENTION_FAMILIES.get(adapter.FAMILY)
            if blocks is None:
                raise NotImplementedError(
                    f"memory encoder '{self.name}' has the cross-attention add-on, which is implemented for "
                    f"{', '.join(CROSS_ATTENTION_FAMILIES)} only, not {adapter.FAMILY}")
            expect["dit_blocks"] = blocks(families.diffusion_model(model))
        wrong = [k for k, v in expect.items() if getattr(self.cfg, k) != v]
        if wrong:
            hint = f" ({BLOCKS_HINT})" if "dit_blocks" in wrong else ""
            raise ValueError(
                f"memory encoder '{self.name}' does not fit this model: "
                + "; ".join(f"{k} {getattr(self.cfg, k)} (model: {expect[k]})" for k in wrong) + f"{hint}. Load the encoder "
                "trained for this model (width 1536 = Wan 2.1 1.3B, 5120 = Wan 2.1 14B, 3072 = Wan 2.2 5B and HunyuanVideo).")
        return self.cfg

    def network(self, model) -> tuple[HistoryEncoder | StateMemory, object | None]:
        """``(net, patcher)``: the Fig. 2 encoder for ``model`` (for a video_ssm file: its
        :class:`~memory.designs.video_ssm.StateMemory`; the class is the file's design's,
        :func:`memory.designs.network_class`) and its model patcher (CoreModelPatcher when present), built once per
        width; ``patcher`` is None for an encoder without weights (LR branch only)."""
        cfg = self.check(model)
        if cfg.dim not in self._patchers:
            net = network_class(cfg.memory_type)(cfg, ops=comfy.ops.manual_cast)
            if self.state_dict is not None:
                missing, unexpected = net.load_state_dict(self.state_dict, strict=False)
                if missing or unexpected:
                    raise ValueError(
                        f"memory encoder '{self.name}' does not fit its own config: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
            net.eval().requires_grad_(False)
            patcher = None
            if any(True for _ in net.parameters()):
                cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
                patcher = cls(net, load_device=comfy.model_management.get_torch_device(),
                              offload_device=comfy.model_management.unet_offload_device())
            self._patchers[cfg.dim] = (net, patcher)
        return self._patchers[cfg.dim]

    def state_network(self, model) -> StateMemory | None:
        """The VideoSSM state modules of a video_ssm file with weights, loaded to the compute device (ComfyUI's
        ``load_models_gpu``), or None (no state modules: local window only)."""
        if not design(self.cfg.memory_type).PER_BLOCK_STATE or self.state_dict is None:
            return None
        net, patcher = self.network(model)
        if patcher is not None:
            comfy.model_management.load_models_gpu([patcher])
        return net

    def patcher(self, model):
        """The encoder's model patcher for ``model`` (None without weights); see :meth:`network`."""
        return self.network(model)[1]


class HRCache:
    """HR-branch outputs (:meth:`~memory.encoder.HistoryEncoder.hr_branch`) of the spans encoded during one pass over
    the DiTs of a sampling schedule (``experts.encode_pending_experts``): the HR branch is the same function of a
    span's latent for every expert (only the LR branch's patch embedding is the expert's own), so the second expert
    reuses the first one's. Looked up by encoder network and exact equality of the HR branch's input (the model-space
    latent), so a reuse is always the output that a fresh run would give; lives for one pass (the entries hold inputs
    and outputs on the encoder's device)."""

    def __init__(self) -> None:
        self._entries: dict = {}  # (id(net), shape, sum) -> [(net, latent [1, C, T, h, w], hr_out), ...]

    def get(self, net, latent: torch.Tensor, compute):
        """``compute()`` once per (``net``, latent content); later calls with an equal latent return the same output."""
        bucket = self._entries.setdefault((id(net), tuple(latent.shape), float(latent.sum())), [])
        for owner, seen, out in bucket:
            if owner is net and torch.equal(seen, latent):
                return out
        out = compute()
        bucket.append((net, latent, out))
        return out


def encode_segment(model, encoder: MemoryEncoder, latent: torch.Tensor, lr_latent: torch.Tensor | None,
                   hr_cache: HRCache | None = None) -> tuple[torch.Tensor, ...]:
    """Memory tokens of one span of history: Fig. 2 (:class:`~memory.encoder.HistoryEncoder`) with the DiT's own
    patch embedding (``families.patch_embed``, LoRAs applied) as the LR branch's first projection.

    Args:
        latent: ``[C, T, h, w]`` VAE-space latent of the span (T a multiple of the encoder's ``rt``).
        lr_latent: ``[C, Tm, h', w']`` VAE-space LR latent of the span (:func:`lr_encoder`), or None without an LR
            branch.
        hr_cache: reuse the HR branch of an equal span encoded before for another DiT of the schedule (same
            encoder), or None (always run it). The result is the same either way.
    Returns:
        tokens ``[M, D]`` float32 CPU, positions ``[M, 3]`` float32 (t relative to the span's first latent), and
        with the cross-attention add-on the HR branch's last hidden states ``[M, hr_channels[-1]]`` float32 CPU.
    Raises:
        ValueError: encoder/DiT width mismatch, a span too small for one memory token, or a missing LR latent.
    """
    cfg = encoder.check(model)
    net, patcher = encoder.network(model)
    to_model = model.model.process_latent_in
    lr_in = to_model(lr_latent[None].float()) if cfg.use_lr and lr_latent is not None else None
    device = torch.device("cpu")
    if patcher is not None:
        comfy.model_management.load_models_gpu([patcher])
        device = patcher.load_device
    with torch.no_grad():
        x = to_model(latent[None].float()).to(device)  # [1, C, T, h, w] model space
        hr_out = net.hr_branch(x) if hr_cache is None else hr_cache.get(net, x, lambda: net.hr_branch(x))
        tokens, hidden = net(x, lr_in, embed=lambda z: families.patch_embed(model, z),
                             hr_out=hr_out)  # [1, M, D], [1, M, Ch] or None
    grid = net.grid(latent[None])
    positions = memory_positions(grid, cfg, t_start=0.0)
    out = (tokens[0].float().cpu(), positions)
    return out + (hidden[0].float().cpu(),) if cfg.cross_attention else out


def lr_encoder(vae, cfg: EncoderConfig, stream: VideoStream):
    """``(frames [F, H, W, 3] 0..1, stream_start) -> LR latent [C, Tm, h', w']`` (VAE space, CPU): the LR branch's
    pixel downsample (:func:`memory.encoder.lr_clip`) through the DiT's VAE as the next part of ``stream`` (restarted
    at a span that starts a new VAE stream).

    Raises (when called): ValueError when a span continues a stream that never started (spans out of order)."""

    def encode(frames: torch.Tensor, stream_start: bool) -> torch.Tensor:
        if stream_start:
            stream.reset()
        elif not stream.started:
            raise ValueError("the LR stream is out of step with the history (a span continues a stream never started)")
        return stream.encode(lr_clip(frames, cfg, stream_start))[0]

    return encode


class MultiEncoder:
    """Several history encoders used together (arXiv 2512.23851 add-on, e.g. 4x4x2 + 2x2x8): the memory is the
    concatenation of every encoder's tokens, each with its own positions (module docstring).

    Args:
        encoders: MemoryEncoder or MultiEncoder objects (nested combinations are flattened), at least two.
        name: shown in messages (default: the names joined with " + ").
    Raises:
        ValueError: fewer than two encoders, or more than one with the cross-attention add-on.
    """

    def __init__(self, encoders: list, name: str | None = None) -> None:
        parts = [p for e in encoders for p in e.parts]
        if len(parts) < 2:
            raise ValueError(f"a combination needs at least two encoders, got {len(parts)}")
        if sum(p.cfg.cross_attention for p in parts) > 1:
            raise ValueError("at most one encoder of a combination may have the cross-attention add-on")
        self._parts = parts
        self.name = name or " + ".join(p.name for p in parts)

    @property
    def parts(self) -> list[MemoryEncoder]:
        return list(self._parts)

    def check(self, model) -> list[EncoderConfig]:
        """The config of every encoder resolved for ``model`` (:meth:`MemoryEncoder.check`; same errors)."""
        return [p.check(model) for p in self._parts]


def rate_str(model, encoder) -> str:
    """The rates of an encoder or combination, e.g. ``"4x4x2"`` or ``"4x4x2+2x2x8"``."""
    return "+".join(p.check(model).rate_str for p in encoder.parts)


def time_unit(cfg: EncoderConfig) -> int:
    """Latent frames per memory time step (``pt * rt``): segments are encoded in groups of whole steps."""
    return cfg.patch_size[0] * cfg.rate[2]


def encode_pending(model, vae, encoder, history: HistoryBuffer, expert: int = 0, hr_cache: HRCache | None = None) -> int:
    """Encode the segments of ``history`` that have no memory tokens yet (in place), for every encoder of
    ``encoder`` (a MemoryEncoder or MultiEncoder), each grouped by its own time rate, under the keys of ``expert``
    (:class:`~memory.history.PartKey`): first the LR latents still missing (``vae``; continuing each encoder's LR
    stream; shared by every expert, so only the first expert to get here runs the VAE), then the tokens. Pixels
    are dropped once every encoder's LR latent covers them. ``hr_cache``: see :func:`encode_segment`. Returns how
    many segments the busiest encoder encoded.

    Raises:
        ValueError: like :meth:`HistoryBuffer.encode_lr_pending`, or LR latents are missing and ``vae`` is None.
    """
    n, with_lr = 0, []
    for i, part in enumerate(encoder.parts):
        cfg = part.check(model)
        if cfg.use_lr:
            with_lr.append(i)
            if vae is None and history.lr_streams.get(i) is None:
                raise ValueError("encoding history for the LR branch needs the VAE")
            if i not in history.lr_streams:  # the LR stream of this encoder starts with the history
                history.lr_streams[i] = VideoStream(vae, "encode", time_stride=cfg.vae_stride[0])
            history.encode_lr_pending(i, time_unit(cfg), lr_encoder(vae, cfg, history.lr_streams[i]))
        n = max(n, history.encode_pending(lambda lat, lr, p=part: encode_segment(model, p, lat, lr, hr_cache),
                                          unit=time_unit(cfg), key=PartKey(i, expert)))
    history.drop_frames(with_lr)
    return n


def next_memory(model, encoder, history: HistoryBuffer,
                expert: int = 0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Memory for the segment that follows ``history``: ``(tokens [M, D], positions [M, 3])``, time relative to the
    end of the history, or ``(None, None)``; ``model`` is the ``expert``-th DiT of the schedule.

    The encoded history tokens of every encoder of ``encoder`` (a MemoryEncoder or MultiEncoder, concatenated in
    order), plus, with the add-on ``overlap_latent_frames = N`` (arXiv 2512.23851's sliding window of 3 latent
    frames; the largest N of a combination, added once), the last N latent frames uncompressed
    (:func:`memory.encoder.overlap_window` through the DiT's own patch embedding, at times -N .. -1).
    """
    cfgs = [p.check(model) for p in encoder.parts]
    parts = [history.memory(key=PartKey(i, expert)) for i in range(len(cfgs))]
    parts = [p for p in parts if p[0] is not None]  # a slow encoder (e.g. 2x2x8) may have nothing yet
    tokens, positions = parts[0] if len(parts) == 1 else (None, None)  # one encoder: the cache view, no copy
    if len(parts) > 1:
        tokens, positions = (torch.cat(p) for p in zip(*parts))  # [M_1 + M_2 + ..., D], [M_1 + M_2 + ..., 3]
    cfg = max(cfgs, key=lambda c: c.overlap_latent_frames)  # one window, the longest asked for
    last = history.last_latents(cfg.overlap_latent_frames) if cfg.overlap_latent_frames else None
    if last is None:
        return tokens, positions
    window, pos = overlap_window(lambda z: families.patch_embed(model, z),
                                 model.model.process_latent_in(last[None].float()), cfg)  # [1, N*Ht*Wt, D]
    if tokens is None:
        return window[0], pos
    return torch.cat([tokens, window[0].to(tokens)], dim=0), torch.cat([positions, pos], dim=0)
