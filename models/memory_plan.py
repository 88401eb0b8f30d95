"""Declare the memory to ComfyUI's loader (issue 25), so that it keeps room on the card for the memory tokens'
activations instead of filling it with weights.

ComfyUI plans a sampling run from the model's own estimate, ``BaseModel.memory_required(input_shape, cond_shapes)``
(``comfy/model_base.py``, 0.3.75 and 0.33.0): the activations of the latent volume ``B x T x h x w`` plus the conds
the model names in ``memory_usage_factor_conds`` (e.g. Wan 2.2 S2V's reference latents), times the model's
``memory_usage_factor``. It is called at two places, both reached here without replacing any ComfyUI function:

* ``sampler_helpers._prepare_sampling`` -> ``estimate_memory(model, noise_shape, conds)`` -> ``load_models_gpu(...,
  memory_required, minimum_memory_required)``: how many weights stay on the card. Its conds are counted through
  ``extra_conds_shapes``, which Wan and HunyuanVideo leave empty, so a ``PREPARE_SAMPLING`` wrapper
  (``comfy.patcher_extension.WrappersMP``, a documented hook) hands ``_prepare_sampling`` the noise shape with the
  memory's latent volume added to its time axis (:func:`planned_shape`); ``noise_shape`` is used for nothing else
  there (both versions).
* ``samplers._calc_cond_batch``: cond and uncond in one batch while ``1.5 x memory_required`` fits the free memory. Its
  cond shapes are every model cond, ours included: the patched model names :data:`~models.conds.PLAN_KEY` in
  ``memory_usage_factor_conds`` and maps its shape ``[B, M', 0]`` to the latent volume ``[B, 1, M' x patch volume]``
  through ``memory_usage_shape_process`` (:func:`plan_volume`), as ``ModelPatcher.add_object_patch``es: ComfyUI sets
  them while the patched model is loaded and restores the originals when it is unloaded.

A memory token is counted as the latent volume of one video token (``prod(PATCH_SIZE)`` latent cells): in every
family each memory token runs through every block as a video token does, so ComfyUI's own per-token factor applies
(it covers the measured activations of every mode and family at real size: benchmarks/vram_estimate.py).
VideoSSM's state absorb runs outside sampling, in the pack's own code; :func:`load_for_absorb` declares it to
``load_models_gpu`` as its ``memory_required``.
"""
from __future__ import annotations

import functools
import math

from .conds import PATCH_KEY, PLAN_KEY

ABSORB_CHUNK = 64  # memory.designs.video_ssm.gated_delta_rule's torch chunk (a remainder chunk is padded)
ABSORB_FACTOR = 6.5  # VideoSSM absorb peak / its padded float32 projection: 5.7-6.0 measured (fake tensors, real sizes)
ABSORB_STATES = 6  # plus this many float32 states per block and head (the chunk loop's temporaries; small histories)


def plan_volume(patch_volume: int, shape) -> list:
    """``memory_usage_shape_process`` entry of :data:`PLAN_KEY`: ``[B, M', 0]`` -> ``[B, 1, M' x patch_volume]``, the
    latent volume (``B x prod(shape[2:])`` cells) of ``M'`` tokens of ``patch_volume`` latent cells each."""
    return [shape[0], 1, shape[1] * patch_volume]


def attended_memory(conds: dict) -> int:
    """Memory tokens one forward attends to: the largest :data:`PLAN_KEY` ``[B, M', 0]`` over the entries of ``conds``
    (``{"positive": [cond dict, ...], ...}``, as ``_prepare_sampling`` gets them); 0 without memory."""
    attended = 0
    for entries in conds.values():
        for cond in entries:
            plan = cond.get("model_conds", {}).get(PLAN_KEY)
            if plan is not None:
                attended = max(attended, int(plan.cond.shape[1]))
    return attended


def planned_shape(noise_shape, attended: int, patch_volume: int) -> list:
    """``noise_shape`` ``[B, C, T, h, w]`` with ``attended`` memory tokens of ``patch_volume`` latent cells added to its
    time axis (``T + attended x patch_volume / (h x w)``, fractional), so that ``memory_required`` (linear in
    ``B x T x h x w``) counts ``B`` x the tokens at batch 1 and ``2B`` x them for cond + uncond, as
    ``_calc_cond_batch`` counts :data:`PLAN_KEY` in every batched conditioning."""
    shape = list(noise_shape)
    if attended <= 0 or len(shape) < 4:
        return shape
    shape[2] = shape[2] + attended * patch_volume / math.prod(shape[3:])
    return shape


def _prepare_sampling(patch_volume: int, executor, model, noise_shape, conds, *args, **kwargs):
    """``PREPARE_SAMPLING`` wrapper: ``_prepare_sampling`` with :func:`planned_shape`."""
    shape = planned_shape(noise_shape, attended_memory(conds), patch_volume)
    return executor(model, shape, conds, *args, **kwargs)


def declare_memory(model, patch_volume: int) -> None:
    """Make ComfyUI's loader count the memory tokens of every sampling of ``model`` (a ModelPatcher clone patched for
    memory; module docstring): a ``PREPARE_SAMPLING`` wrapper and object patches of ``memory_usage_factor_conds`` /
    ``memory_usage_shape_process``. ``patch_volume``: latent cells per DiT token (``prod(adapter.PATCH_SIZE)``).
    Without memory in the conditioning the plan is unchanged. Idempotent."""
    import comfy.patcher_extension

    kind = comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING
    model.remove_wrappers_with_key(kind, PATCH_KEY)
    model.add_wrapper_with_key(kind, PATCH_KEY, functools.partial(_prepare_sampling, patch_volume))
    counted = tuple(model.get_model_object("memory_usage_factor_conds"))
    model.add_object_patch("memory_usage_factor_conds", tuple(dict.fromkeys((*counted, PLAN_KEY))))
    process = dict(model.get_model_object("memory_usage_shape_process"))
    model.add_object_patch("memory_usage_shape_process",
                           {**process, PLAN_KEY: functools.partial(plan_volume, patch_volume)})


def declared_bytes(model, noise_shape, attended: int, patch_volume: int, batch: int = 2) -> float:
    """What ComfyUI's estimate (``model.model.memory_required``, this machine's attention branch) adds for
    ``attended`` memory tokens when sampling ``noise_shape`` ``[B, C, T, h, w]``, ``batch`` 2 (cond + uncond, the
    plan's ``memory_required``) or 1 (``minimum_memory_required``), bytes."""
    base = [noise_shape[0] * batch, *noise_shape[1:]]
    full = [noise_shape[0] * batch, *planned_shape(noise_shape, attended, patch_volume)[1:]]
    return model.model.memory_required(full) - model.model.memory_required(base)


def absorb_bytes(cfg, tokens: int) -> int:
    """Bytes of VideoSSM's ``StateMemory.absorb`` of ``tokens`` history tokens (torch path), its inputs included: per
    block and head (``cfg``: the video_ssm ``EncoderConfig``, L blocks, H heads), :data:`ABSORB_FACTOR` x its float32
    projection ``[tokens, dk + dv + 2]`` at the gated delta rule's padded length (``tokens`` rounded up to
    :data:`ABSORB_CHUNK`) plus :data:`ABSORB_STATES` float32 states ``[dv, dk]``."""
    heads = max(cfg.ssm_heads, 1)
    dk, dv = cfg.ssm_key_dim, cfg.dim // heads
    padded = tokens if tokens <= ABSORB_CHUNK else -(-tokens // ABSORB_CHUNK) * ABSORB_CHUNK
    return int(4 * cfg.dit_blocks * heads * (ABSORB_FACTOR * padded * (dk + dv + 2) + ABSORB_STATES * dv * dk))


def load_for_absorb(patcher, cfg, tokens: int) -> None:
    """Load VideoSSM's state modules (``patcher``, None: nothing) through ``comfy.model_management.load_models_gpu``
    with the absorb of ``tokens`` tokens declared as its ``memory_required``, so ComfyUI frees that room (unloading
    other models in part or whole) before :meth:`StateMemory.absorb` runs on the compute device."""
    if patcher is None:
        return
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], memory_required=absorb_bytes(cfg, tokens))
