"""How memory tokens travel from a node to the diffusion model: two (three) ``CONDRegular`` entries in every
conditioning entry's ``model_conds`` (docs/design.md section 2). ComfyUI batches them for cond/uncond like any
model cond, casts floats to the model dtype and passes them to the diffusion model's forward as keyword
arguments, where a family adapter's ``DIFFUSION_MODEL`` wrapper takes them out.

Context windows (``comfy/context_windows.py``): ComfyUI 0.33.0 slices any model cond whose dim 2 has the latent's
length (``memory_positions2`` ``[B, M, 3]`` at 3 latent frames, a VideoSSM state with as many heads); the memory is
the whole past, never windowed, so :func:`exempt_from_context_windows` registers a ``RESIZE_COND_ITEM`` callback that
keeps every memory cond whole (where the handler has that hook; 0.3.75 slices only conds of ndim < dim, never ours).

``memory_positions2`` holds *twice* the RoPE positions as int64: token centres are half-integers and int64 is
not cast to the model dtype (bf16 cannot hold e.g. -300.5 exactly). ``memory_hidden`` (float, cast like the tokens)
carries the encoder's last hidden states for the cross-attention add-on, only when it is on.

``memory_attended`` ``[B, M', 0]`` (empty: no storage) declares the memory to ComfyUI's loader: its shape holds the
memory tokens each forward attends to (M' = M, or PackForcing's sink + top-K blocks + recent), which
:mod:`models.memory_plan` turns into the latent volume ComfyUI's ``memory_required`` counts.
"""
from __future__ import annotations

import torch

import comfy.conds

from ..memory.designs.pack_forcing import attended_tokens

TOKENS_KEY = "memory_tokens"
POSITIONS_KEY = "memory_positions2"
HIDDEN_KEY = "memory_hidden"
BLOCKS_KEY = "memory_blocks"  # PackForcing: [B, M] int64 partition labels (memory/designs/pack_forcing.py)
PACK_KEY = "memory_pack"  # PackForcing: [B, 4] int64 (top_k, rt, sink frames S, recent frames R)
STATE_KEY = "memory_state"  # VideoSSM: [B, L, H, dv, dk] float, the state of every DiT block (memory/designs/video_ssm.py)
PLAN_KEY = "memory_attended"  # [B, M', 0] empty: memory tokens attended per forward, counted by ComfyUI's estimate
EXTRA_KEYS = (BLOCKS_KEY, PACK_KEY, STATE_KEY)
MEMORY_KEYS = (TOKENS_KEY, POSITIONS_KEY, HIDDEN_KEY, PLAN_KEY, *EXTRA_KEYS)  # every model cond this pack adds
PATCH_KEY = "framememory"  # wrapper key and transformer_options key
CROSS_KEY = "framememory_cross"  # transformer_options key of the cross-attention layers; additional-models key


def attach_memory(conditioning: list, tokens: torch.Tensor | None, positions: torch.Tensor | None,
                  hidden: torch.Tensor | None = None, mode_conds: dict | None = None) -> list:
    """Return a copy of a CONDITIONING list with memory tokens in every entry's ``model_conds``.

    Args:
        conditioning: ComfyUI CONDITIONING, ``[[cond [1, L, C], dict], ...]`` (not modified).
        tokens: ``[M, D]`` float memory tokens, or None to remove memory.
        positions: ``[M, 3]`` float RoPE positions ``(t, h, w)`` in DiT-token units, t relative to the segment
            being generated (negative = past).
        hidden: ``[M_h, Ch]`` float hidden states of the cross-attention add-on, or None (add-on off).
        mode_conds: the memory modes' conds by key (:data:`EXTRA_KEYS`; without the batch dimension), or None.
    """
    out = []
    for cond, extra in conditioning:
        extra = extra.copy()
        mc = dict(extra.get("model_conds", {}))
        mc.pop(TOKENS_KEY, None)
        mc.pop(POSITIONS_KEY, None)
        for key in (HIDDEN_KEY, PLAN_KEY, *EXTRA_KEYS):
            mc.pop(key, None)
        for key, value in (mode_conds or {}).items():
            if value is not None:
                mc[key] = comfy.conds.CONDRegular(value[None])
        if tokens is not None:
            mc[TOKENS_KEY] = comfy.conds.CONDRegular(tokens[None].float())
            mc[POSITIONS_KEY] = comfy.conds.CONDRegular((positions[None].double() * 2).round().long())
            if hidden is not None:
                mc[HIDDEN_KEY] = comfy.conds.CONDRegular(hidden[None].float())
            mode = mode_conds or {}
            mc[PLAN_KEY] = comfy.conds.CONDRegular(torch.empty(1, attended_tokens(
                int(tokens.shape[0]), mode.get(BLOCKS_KEY), mode.get(PACK_KEY)), 0))
        extra["model_conds"] = mc
        out.append([cond, extra])
    return out


def pop_memory(kwargs: dict, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Take the memory out of a diffusion model's forward kwargs: ``(tokens [B, M, D], positions [1, M, 3] float32)``
    or ``(None, None)`` when absent or empty (the loader's declaration, ``memory_attended``, is dropped too). Raises
    ValueError when tokens come without positions."""
    kwargs.pop(PLAN_KEY, None)
    tokens = kwargs.pop(TOKENS_KEY, None)
    positions2 = kwargs.pop(POSITIONS_KEY, None)
    if tokens is None or tokens.shape[1] == 0:
        return None, None
    if positions2 is None:
        raise ValueError(f"conditioning has '{TOKENS_KEY}' but no '{POSITIONS_KEY}'")
    return tokens, positions2[:1].to(device=device, dtype=torch.float32) / 2.0


def pop_hidden(kwargs: dict) -> torch.Tensor | None:
    """Take the cross-attention add-on's hidden states ``[B, M_h, Ch]`` out of the forward kwargs (None when absent
    or empty)."""
    hidden = kwargs.pop(HIDDEN_KEY, None)
    return None if hidden is None or hidden.shape[1] == 0 else hidden


def _keep_memory_cond(cond_key, cond_value, window, x_in, device, cond_item):
    """``IndexListCallbacks.RESIZE_COND_ITEM`` callback: a memory cond stays whole in every context window (returned
    unchanged); None leaves every other cond to ComfyUI."""
    return cond_value if cond_key in MEMORY_KEYS else None


def exempt_memory_conds(handler) -> bool:
    """Register :func:`_keep_memory_cond` (once) on a context-window handler (``model_options["context_handler"]``,
    ``comfy.context_windows.IndexListContextHandler``). Returns True when registered or already there, False when
    there is no handler or it has no ``RESIZE_COND_ITEM`` hook (ComfyUI without cond-resize callbacks)."""
    if handler is None or not isinstance(getattr(handler, "callbacks", None), dict):
        return False
    import comfy.context_windows
    import comfy.patcher_extension

    call = getattr(comfy.context_windows.IndexListCallbacks, "RESIZE_COND_ITEM", None)
    if call is None:
        return False
    if not comfy.patcher_extension.get_callbacks_with_key(call, PATCH_KEY, handler.callbacks):
        comfy.patcher_extension.add_callback_with_key(call, PATCH_KEY, _keep_memory_cond, handler.callbacks)
    return True


def _outer_sample_wrapper(executor, *args, **kwargs):
    exempt_memory_conds(executor.class_obj.model_options.get("context_handler"))  # class_obj: the CFGGuider
    return executor(*args, **kwargs)


def exempt_from_context_windows(model) -> None:
    """Keep the memory conds whole under context windows for every sampling of ``model`` (a ModelPatcher clone): an
    ``OUTER_SAMPLE`` wrapper registers the callback on whatever context handler the sampled model carries, so it
    works whether the context-window node comes before or after the memory patch in the graph."""
    import comfy.patcher_extension

    kind = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    model.remove_wrappers_with_key(kind, PATCH_KEY)
    model.add_wrapper_with_key(kind, PATCH_KEY, _outer_sample_wrapper)
