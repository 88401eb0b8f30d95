"""Which model family a ComfyUI MODEL belongs to, and the one entry point to patch it for memory tokens.

Each family module (``wan.py`` Wan 2.1 T2V/I2V, ``wan22.py`` Wan 2.2 TI2V 5B, ``hunyuan.py`` HunyuanVideo) provides: ``FAMILY``, ``LATENT_CHANNELS``,
``VAE_STRIDE``, ``PATCH_SIZE``, ``matches(dm)``, ``width(dm)``, ``patch_embed(dm, latent)`` and
``install(model_patcher, dm, memory_t0)``.
"""
from __future__ import annotations

import math

from . import hunyuan, wan, wan22
from .conds import exempt_from_context_windows
from .memory_plan import declare_memory

ADAPTERS = [wan, wan22, hunyuan]  # disjoint matches: wan = 16 latent channels, wan22 = 48


def diffusion_model(model):
    return getattr(getattr(model, "model", None), "diffusion_model", None)


def adapter_for(model):
    """The family module for a ComfyUI MODEL (ModelPatcher). Raises TypeError naming the supported families."""
    dm = diffusion_model(model)
    for adapter in ADAPTERS:
        if dm is not None and adapter.matches(dm):
            return adapter
    raise TypeError(
        f"FrameMemory supports {', '.join(a.FAMILY for a in ADAPTERS)} so far; this MODEL is {type(dm).__name__}. "
        "Load a Wan 2.1 / Wan 2.2 TI2V 5B / HunyuanVideo T2V diffusion model with the stock 'Load Diffusion Model' node.")


def model_width(model) -> int:
    """Inner width D of the MODEL's DiT."""
    return adapter_for(model).width(diffusion_model(model))


def patch_embed(model, latent):
    """The DiT's own first projection of a model-space latent ``[B, C, T, h, w]`` -> ``[B, D, T', Ht, Wt]`` (CPU fp32).

    The model is loaded through ComfyUI's model management first, so weight patches (LoRAs from the stock
    loaders) apply and low-VRAM partial loading casts the projection's weights to the load device on the fly."""
    import comfy.model_management

    adapter = adapter_for(model)
    comfy.model_management.load_models_gpu([model])
    return adapter.patch_embed(diffusion_model(model), latent.to(model.load_device))


def patch_model(model, memory_t0: bool = True):
    """Clone a MODEL and install memory attention (idempotent). Without memory in the conditioning the
    model's output is unchanged. ``memory_t0``: memory tokens at timestep 0 (``EncoderConfig.memory_timestep``).
    Raises TypeError for unsupported families, ValueError for ``memory_t0`` False outside Wan 2.1."""
    adapter = adapter_for(model)
    m = model.clone()
    adapter.install(m, diffusion_model(model), memory_t0=memory_t0)
    exempt_from_context_windows(m)  # the memory is the whole past: never sliced into context windows
    declare_memory(m, math.prod(adapter.PATCH_SIZE))  # ComfyUI's loader plans for the memory tokens' activations
    return m
