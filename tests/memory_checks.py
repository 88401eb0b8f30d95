"""Assertions shared by the per-family adapter tests."""
from __future__ import annotations

import torch


def check_identity_and_position_effect(dm, x, t, context, opts, mem, pos2) -> None:
    """Patched without memory (or with zero memory tokens) == unpatched, bit for bit; memory changes the output;
    moving the memory's RoPE positions (``pos2`` holds doubled positions) changes it again."""
    with torch.no_grad():
        plain = dm(x, t, context)
        patched_no_memory = dm(x, t, context, transformer_options=opts)
        empty = dm(x, t, context, transformer_options=opts, memory_tokens=mem[:, :0], memory_positions2=pos2[:, :0])
        a = dm(x, t, context, transformer_options=opts, memory_tokens=mem, memory_positions2=pos2)
        b = dm(x, t, context, transformer_options=opts, memory_tokens=mem, memory_positions2=pos2 - 20)
    assert torch.equal(plain, patched_no_memory) and torch.equal(plain, empty)
    assert (a - plain).abs().max() > 1e-3 and (a - b).abs().max() > 1e-5
