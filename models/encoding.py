"""The history encoder under ComfyUI's memory management, and encoding of history segments.

- :class:`MemoryEncoder` is what the ``MEMORY_ENCODER`` socket carries: a config plus weights (or none, for the
  untrained LR-branch-only encoder). Its HR branch is built from ``comfy.ops.manual_cast`` layers and wrapped
  in a model patcher, so ComfyUI loads and offloads it like any model.
- :func:`encode_pending` encodes the new segments of a :class:`~memory.history.HistoryBuffer`:
  LR branch = pixel downsample -> the DiT's own VAE -> the DiT's own ``patch_embedding``;
  HR branch = the encoder's convolutions on the full-resolution latent; summed (arXiv 2512.23851 Sec. 3).
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
from ..memory.encoder import HistoryEncoder, combine_branches, lr_frames
from ..memory.grid import memory_grid
from ..memory.history import HistoryBuffer, HistorySegment
from ..memory.io import load_encoder_file
from . import families

log = logging.getLogger("FrameMemory")
UNTRAINED = "untrained (LR branch only)"


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

    @classmethod
    def from_file(cls, path: str) -> "MemoryEncoder":
        sd, cfg = load_encoder_file(path)
        return cls(cfg, sd, os.path.basename(path))

    @classmethod
    def untrained(cls, rate: str = "4x4x2") -> "MemoryEncoder":
        return cls(EncoderConfig(dim=0, rate=rate, use_hr=False))

    def check(self, model) -> EncoderConfig:
        """Return the config resolved for ``model`` (an untrained encoder takes the model's family, width and
        latent geometry). Raises ValueError naming every field that does not match the model."""
        adapter = families.adapter_for(model)
        width = families.model_width(model)
        expect = {"family": adapter.FAMILY, "dim": width, "latent_channels": adapter.LATENT_CHANNELS,
                  "vae_stride": tuple(adapter.VAE_STRIDE), "patch_size": tuple(adapter.PATCH_SIZE)}
        if self.cfg.dim == 0:
            return dataclasses.replace(self.cfg, **expect)
        wrong = [f"{k} {getattr(self.cfg, k)} (model: {v})" for k, v in expect.items() if getattr(self.cfg, k) != v]
        if wrong:
            raise ValueError(
                f"memory encoder '{self.name}' does not fit this model: " + "; ".join(wrong) + ". Load the encoder "
                "trained for this model (width 1536 = Wan 2.1 1.3B, 5120 = Wan 2.1 14B, 3072 = Wan 2.2 5B and HunyuanVideo).")
        return self.cfg

    def patcher(self, model):
        """The encoder as a ComfyUI model patcher (CoreModelPatcher when present), built once per width."""
        cfg = self.check(model)
        if cfg.dim not in self._patchers:
            net = HistoryEncoder(cfg, ops=comfy.ops.manual_cast)
            if self.state_dict is not None:
                missing, unexpected = net.load_state_dict(self.state_dict, strict=False)
                if missing or unexpected:
                    raise ValueError(
                        f"memory encoder '{self.name}' does not fit its own config: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
            net.eval().requires_grad_(False)
            cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
            self._patchers[cfg.dim] = cls(
                net, load_device=comfy.model_management.get_torch_device(),
                offload_device=comfy.model_management.unet_offload_device())
        return self._patchers[cfg.dim]


def encode_segment(model, vae, encoder: MemoryEncoder, seg: HistorySegment) -> tuple[torch.Tensor, torch.Tensor]:
    """Memory tokens of one history segment.

    Returns:
        tokens ``[M, D]`` float32 CPU, positions ``[M, 3]`` float32 (t relative to the segment's first latent).
    Raises:
        ValueError: encoder/DiT width mismatch or a segment too small for one memory token.
    """
    from ..memory.grid import memory_positions

    cfg = encoder.check(model)
    patcher = encoder.patcher(model)
    latent_in = model.model.process_latent_in(seg.latent[None].float())  # [1, C, T, h, w] model space
    hr = lr = None
    if cfg.use_lr:
        pixels = lr_frames(seg.frames.float() / 255.0, seg.latent_frames, cfg)
        lr_latent = vae.encode(pixels)  # [1, C, T // rt, h', w']
        lr = families.patch_embed(model, model.model.process_latent_in(lr_latent.float().cpu()))
    if cfg.use_hr:
        comfy.model_management.load_models_gpu([patcher])
        net = patcher.model
        with torch.no_grad():
            hr = net(latent_in.to(patcher.load_device)).float().cpu()
    tokens = combine_branches(hr, lr)[0]
    grid = memory_grid(tuple(seg.latent.shape[1:]), cfg)
    if tokens.shape[0] != grid[0] * grid[1] * grid[2]:
        raise RuntimeError(f"LR branch grid does not match the memory grid {grid}: got {tokens.shape[0]} tokens")
    return tokens, memory_positions(grid, cfg, t_start=0.0)


def encode_pending(model, vae, encoder: MemoryEncoder, history: HistoryBuffer) -> int:
    """Encode the segments of ``history`` that have no memory tokens yet (in place). Returns how many."""
    unit = encoder.check(model).rate[2]
    return history.encode_pending(lambda seg: encode_segment(model, vae, encoder, seg), unit=unit)


def next_memory(model, encoder: MemoryEncoder, history: HistoryBuffer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Memory for the segment that follows ``history``: ``(tokens [M, D], positions [M, 3])``, time relative to the
    end of the history, or ``(None, None)``.

    The encoded history tokens, plus, with the add-on ``overlap_latent_frames = N`` (arXiv 2512.23851's sliding
    window of 3 latent frames), the last N latent frames uncompressed: the DiT's own patch embedding of their
    model-space latent at rate 1x1x1, at their original times -N .. -1.
    """
    from ..memory.grid import memory_positions

    tokens, positions = history.memory()
    cfg = encoder.check(model)
    n = cfg.overlap_latent_frames
    last = history.last_latents(n) if n else None
    if last is None:
        return tokens, positions
    emb = families.patch_embed(model, model.model.process_latent_in(last[None].float()))  # [1, D, n, Ht, Wt]
    window = emb[0].flatten(1).T  # [n * Ht * Wt, D]
    grid = tuple(emb.shape[2:])
    pos = memory_positions(grid, dataclasses.replace(cfg, rate=(1, 1, 1)), t_start=-float(last.shape[1]))
    if tokens is None:
        return window, pos
    return torch.cat([tokens, window], dim=0), torch.cat([positions, pos], dim=0)
