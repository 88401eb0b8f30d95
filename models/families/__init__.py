"""The model families FrameMemory supports, by name, and the one function that installs memory on a DiT.

One module per family holds everything family-specific: ``wan21.py`` (Wan 2.1 T2V / I2V, also the Wan 2.2 A14B
experts; the mechanism the Wan families share), ``wan22.py`` (Wan 2.2 TI2V 5B), ``hunyuan_video.py`` (HunyuanVideo T2V
1.0). Each provides

* data: ``FAMILY`` (the name in ``EncoderConfig.family``), ``LATENT_CHANNELS``, ``VAE_STRIDE`` ``(t, h, w)`` video
  frames / pixels per latent cell, ``PATCH_SIZE`` ``(t, h, w)`` latent cells per DiT token, ``FPS`` (the frame rate
  the family was trained at), ``MEMORY_TIMESTEPS`` (the ``EncoderConfig.memory_timestep`` rules it supports),
  ``MEMORY_MODES`` (the memory modes its hooks run);
* functions: ``latent_format()``, ``matches(dm)``, ``width(dm)``, ``token_grid(dm, x)``, ``patch_embed(dm, latent,
  device)``, ``cross_blocks(dm)`` and the hooks ``install(model_patcher, dm, memory_t0)``.

:func:`install_memory` installs the memory patches on a ComfyUI MODEL (a patched clone, for the nodes) or on a bare
DiT (``transformer_options`` for a direct call, for training, benchmarks and tests): the same wrapper and block
patches either way.
"""
from __future__ import annotations

import math

import torch

from ..conds import CROSS_KEY, exempt_from_context_windows
from ..memory_plan import declare_memory
from ..state_readout import STATE_MODULE_KEY
from . import hunyuan_video, wan21, wan22

# by name; their matches are disjoint (wan21: 16 latent channels, wan22: 48, hunyuan_video: another DiT class)
FAMILIES = {f.FAMILY: f for f in (wan21, wan22, hunyuan_video)}


def family(name: str):
    """The family module named ``name`` (``EncoderConfig.family``). Raises ValueError naming the known families."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def diffusion_model(model):
    """The DiT module (``model.model.diffusion_model``) of a ComfyUI MODEL, or None."""
    return getattr(getattr(model, "model", None), "diffusion_model", None)


def _dit(model):
    return model if isinstance(model, torch.nn.Module) else diffusion_model(model)


def family_for(model):
    """The family module of a ComfyUI MODEL (ModelPatcher) or of a bare DiT (``diffusion_model`` module).
    Raises TypeError naming the supported families."""
    dm = _dit(model)
    for fam in FAMILIES.values():
        if dm is not None and fam.matches(dm):
            return fam
    raise TypeError(
        f"FrameMemory supports {', '.join(FAMILIES)} so far; this MODEL is {type(dm).__name__}. "
        "Load a Wan 2.1 / Wan 2.2 TI2V 5B / HunyuanVideo T2V diffusion model with the stock 'Load Diffusion Model' node.")


def check_memory_mode(name: str, mode: str) -> None:
    """Raise ValueError when family ``name`` has no hooks for memory mode ``mode`` (its ``MEMORY_MODES``), naming the
    family, the mode and the modes that work on it. Unknown family names pass (checked elsewhere)."""
    fam = FAMILIES.get(name)
    if fam is not None and mode not in fam.MEMORY_MODES:
        raise ValueError(f"memory_mode {mode} is not implemented for {name} models (only for "
                         f"{', '.join(f.FAMILY for f in FAMILIES.values() if mode in f.MEMORY_MODES)}): use "
                         f"{', '.join(fam.MEMORY_MODES[:-1])} or {fam.MEMORY_MODES[-1]}")


def model_width(model) -> int:
    """Inner width D of the MODEL's DiT."""
    return family_for(model).width(diffusion_model(model))


def patch_embed(model, latent):
    """The DiT's own first projection of a model-space latent ``[B, C, T, h, w]`` -> ``[B, D, T', Ht, Wt]`` (CPU fp32).

    The model is loaded through ComfyUI's model management first, so weight patches (LoRAs from the stock
    loaders) apply and low-VRAM partial loading casts the projection's weights to the load device on the fly."""
    import comfy.model_management

    fam = family_for(model)
    comfy.model_management.load_models_gpu([model])
    return fam.patch_embed(diffusion_model(model), latent.to(model.load_device))


class _OptionsRecorder:
    """Stands in for the ``ModelPatcher`` that a family's ``install(model, dm)`` expects and collects what it
    registers (the ``DIFFUSION_MODEL`` wrapper and the block replace patches) as ``transformer_options`` for a direct
    call of the DiT."""

    def __init__(self) -> None:
        self.options: dict = {"patches_replace": {}, "wrappers": {}}

    def remove_wrappers_with_key(self, wrapper_type, key) -> None:
        self.options["wrappers"].get(wrapper_type, {}).pop(key, None)

    def add_wrapper_with_key(self, wrapper_type, key, fn) -> None:
        self.options["wrappers"].setdefault(wrapper_type, {}).setdefault(key, []).append(fn)

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None) -> None:
        self.options["patches_replace"].setdefault(name, {})[(block_name, number)] = patch


def install_memory(model, memory_t0: bool = True, *, cross=None, readout=None):
    """Install memory attention (the family's wrapper and block patches) on a DiT. Without memory in the
    conditioning (or in the forward's kwargs) the output is unchanged, bit for bit.

    Args:
        model: a ComfyUI MODEL (ModelPatcher): it is cloned, the clone patched (idempotent), its memory exempted from
            context windows and declared to ComfyUI's loader (``memory_plan.declare_memory``); or a bare DiT
            (``diffusion_model`` module, peft LoRA allowed).
        memory_t0: memory tokens at timestep 0 (``EncoderConfig.memory_timestep`` "zero"); False: the "shared"
            ablation, Wan 2.1 only.
        cross: the encoder's cross-attention layers (``HistoryEncoder.cross``, one per ``cross_blocks`` block) or None.
        readout: VideoSSM's read-out modules (``models.state_readout``) or None.
    Returns:
        The patched clone for a MODEL; for a bare DiT the ``transformer_options`` dict (``patches_replace``,
        ``wrappers`` and the add-ons' layers) for ``dm(x, t, context, transformer_options=..., memory_tokens=...,
        memory_positions2=...)``.
    Raises:
        TypeError: unsupported family. ValueError: ``memory_t0`` False outside Wan 2.1.
    """
    dm, fam = _dit(model), family_for(model)
    addons = {key: v for key, v in ((CROSS_KEY, cross), (STATE_MODULE_KEY, readout)) if v is not None}
    if isinstance(model, torch.nn.Module):
        rec = _OptionsRecorder()
        fam.install(rec, dm, memory_t0=memory_t0)
        return {**rec.options, **addons}
    patched = model.clone()
    fam.install(patched, dm, memory_t0=memory_t0)
    exempt_from_context_windows(patched)  # the memory is the whole past: never sliced into context windows
    declare_memory(patched, math.prod(fam.PATCH_SIZE))  # ComfyUI's loader plans for the memory tokens' activations
    if addons:
        patched.model_options.setdefault("transformer_options", {}).update(addons)
    return patched


__all__ = ["FAMILIES", "family", "family_for", "check_memory_mode", "diffusion_model", "model_width", "patch_embed",
           "install_memory"]
