"""Assertions and helpers shared by the adapter and model-compatibility tests."""
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


def sample_tiny_wan(model, memory, patch: bool = True) -> torch.Tensor:
    """Two euler steps at CFG 3 of a tiny Wan 2.1 MODEL through ``comfy.sample.sample`` (the stock KSampler path) on a
    fixed ``[1, 16, 2, 8, 8]`` latent with fixed random text conditions; ``memory``: ``(tokens [M, D], positions
    [M, 3])`` attached to both conditionings, or None; ``patch``: install memory attention first."""
    import comfy.sample
    from framememory.models.conds import attach_memory
    from framememory.models.families import install_memory

    g = torch.Generator().manual_seed(3)
    pos = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {}]]
    neg = [[torch.randn(1, 5, 4096, generator=g) * 0.1, {}]]
    latent = torch.zeros(1, 16, 2, 8, 8)
    if memory is not None:
        pos, neg = attach_memory(pos, *memory), attach_memory(neg, *memory)
    noise = comfy.sample.prepare_noise(latent, 1)
    m = install_memory(model) if patch else model
    return comfy.sample.sample(m, noise, 2, 3.0, "euler", "simple", pos, neg, latent, seed=1, disable_pbar=True)


def random_memory(dim: int = 128, count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random memory: tokens ``[count, dim]`` float32 and RoPE positions ``[count, 3]`` in the past."""
    g = torch.Generator().manual_seed(9)
    return torch.randn(count, dim, generator=g) * 0.5, torch.tensor([[-1.5, 1.5, 1.5 + i % 4] for i in range(count)])
