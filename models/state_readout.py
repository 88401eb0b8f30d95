"""VideoSSM's global-memory read-out inside the DiT blocks (arXiv 2512.04519), shared by training and inference.

The state of every block (``memory_state`` cond ``[B, L, H, dv, dk]``, :mod:`memory.designs.video_ssm`) travels with the
conditioning; the read-out modules (:class:`memory.designs.video_ssm.StateMemory`, from a video_ssm encoder file) are handed
to the block patches in ``transformer_options[STATE_MODULE_KEY]`` by :func:`install_state_readout` (as the
cross-attention add-on's layers are). After block ``i``, the video tokens get ``StateMemory.read(i, ...)`` added:
``W_o (g * S q)`` with a position-aware router gate ``g``; ``W_o`` is zero-initialised, so an untrained module adds
nothing.
"""
from __future__ import annotations

import torch

STATE_MODULE_KEY = "framememory_state"  # transformer_options key and additional-models key


def token_distance(grid: tuple[int, int, int], recent: int, device) -> torch.Tensor:
    """``[n]`` float32: latent frames between each video token (``(t, h, w)`` order on ``grid`` = ``(T, Ht, Wt)``) and
    the newest absorbed frame, which lies just before the ``recent`` frames of the local window."""
    t, ht, wt = grid
    frame = torch.arange(t, dtype=torch.float32, device=device).repeat_interleave(ht * wt)
    return frame + recent + 1


def state_read(mem: dict, index: int, x: torch.Tensor, n: int) -> torch.Tensor:
    """Add block ``index``'s global-memory read-out to the first ``n`` tokens (the video tokens) of the block output
    ``x`` ``[B, n + R, D]``; the other tokens are returned unchanged.

    Raises:
        ValueError: the conditioning carries a state but the model has no read-out modules (not patched by the
        Storyboard / Apply Memory), or their block count does not match the state.
    """
    module, state = mem.get("readout"), mem["state"]
    if module is None:
        raise ValueError("the conditioning carries a VideoSSM state but the model has no read-out modules: patch it "
                         "with the Storyboard or Apply Memory node and a video_ssm memory encoder")
    if state.shape[1] != module.cfg.dit_blocks:
        raise ValueError(f"VideoSSM state has {state.shape[1]} blocks, the read-out modules {module.cfg.dit_blocks}")
    distance = token_distance(mem["grid"], mem.get("recent", 0), x.device)[:n]
    read = module.read(index, x[:, :n], state[:, index].to(x.device), distance)
    return torch.cat([x[:, :n] + read.to(x.dtype), x[:, n:]], dim=1)


def install_state_readout(patched, encoder) -> None:
    """Hand the read-out modules of a video_ssm encoder with weights to the block patches of ``patched`` (its
    ``transformer_options``) and load/offload them with the DiT (``set_additional_models``). No-op otherwise."""
    parts = encoder.parts
    if len(parts) != 1 or parts[0].cfg.memory_type != "video_ssm" or parts[0].state_dict is None:
        return
    net, patcher = parts[0].network(patched)
    if patcher is not None:
        patched.set_additional_models(STATE_MODULE_KEY, [patcher])
    patched.model_options.setdefault("transformer_options", {})[STATE_MODULE_KEY] = net


__all__ = ["STATE_MODULE_KEY", "token_distance", "state_read", "install_state_readout"]
