"""How memory tokens travel from a node to the diffusion model: two (three) ``CONDRegular`` entries in every
conditioning entry's ``model_conds`` (DESIGN.md section 2). ComfyUI batches them for cond/uncond like any
model cond, casts floats to the model dtype and passes them to the diffusion model's forward as keyword
arguments, where a family adapter's ``DIFFUSION_MODEL`` wrapper takes them out.

``memory_positions2`` holds *twice* the RoPE positions as int64: token centres are half-integers and int64 is
not cast to the model dtype (bf16 cannot hold e.g. -300.5 exactly). ``memory_hidden`` (float, cast like the tokens)
carries the encoder's last hidden states for the cross-attention add-on, only when it is on.
"""
from __future__ import annotations

import torch

import comfy.conds

TOKENS_KEY = "memory_tokens"
POSITIONS_KEY = "memory_positions2"
HIDDEN_KEY = "memory_hidden"
BLOCKS_KEY = "memory_blocks"  # PackForcing: [B, M] int64 partition labels (memory/packing.py)
PACK_KEY = "memory_pack"  # PackForcing: [B, 4] int64 (top_k, rt, sink frames S, recent frames R)
STATE_KEY = "memory_state"  # VideoSSM: [B, L, H, dv, dk] float, the state of every DiT block (memory/state_memory.py)
EXTRA_KEYS = (BLOCKS_KEY, PACK_KEY, STATE_KEY)
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
        mc.pop(HIDDEN_KEY, None)
        for key in EXTRA_KEYS:
            mc.pop(key, None)
        for key, value in (mode_conds or {}).items():
            if value is not None:
                mc[key] = comfy.conds.CONDRegular(value[None])
        if tokens is not None:
            mc[TOKENS_KEY] = comfy.conds.CONDRegular(tokens[None].float())
            mc[POSITIONS_KEY] = comfy.conds.CONDRegular((positions[None].double() * 2).round().long())
            if hidden is not None:
                mc[HIDDEN_KEY] = comfy.conds.CONDRegular(hidden[None].float())
        extra["model_conds"] = mc
        out.append([cond, extra])
    return out


def pop_memory(kwargs: dict, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Take the memory out of a diffusion model's forward kwargs: ``(tokens [B, M, D], positions [1, M, 3] float32)``
    or ``(None, None)`` when absent or empty. Raises ValueError when tokens come without positions."""
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
