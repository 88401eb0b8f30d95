"""Memory tokens in ComfyUI's Wan 2.1 DiT (``comfy.ldm.wan.model.WanModel``), arXiv 2512.23851 Sec. 3.

Mechanism (DESIGN.md section 2), with no re-implementation of ComfyUI's forward:

- The memory travels in each conditioning entry's ``model_conds`` as two ``CONDRegular`` tensors:
  ``memory_tokens`` ``[B, M, D]`` and ``memory_positions2`` ``[B, M, 3]`` int64 holding *twice* the RoPE
  positions (centres are half-integers; int64 survives ComfyUI's cast of conds to the model dtype exactly).
- A ``DIFFUSION_MODEL`` wrapper takes them out of the forward's kwargs, embeds the positions with the model's
  own ``rope_embedder`` and puts both into ``transformer_options["framememory"]``.
- ``patches_replace["dit"][("double_block", i)]`` on every block: block 0 appends the memory tokens to the video
  tokens, every block extends ``pe`` with the memory RoPE, the last block drops the memory tokens again, so
  the head and ``unpatchify`` see only the video tokens. Memory tokens thus pass through every block as clean
  context that the video tokens attend to in self-attention.
"""
from __future__ import annotations

import torch

import comfy.patcher_extension

from .conds import PATCH_KEY, pop_memory

FAMILY = "wan21"
LATENT_CHANNELS = 16
VAE_STRIDE = (4, 8, 8)
PATCH_SIZE = (1, 2, 2)


def matches(dm) -> bool:
    """True for ComfyUI's Wan 2.1 ``WanModel`` (T2V; subclasses with other conds are not supported yet)."""
    import comfy.ldm.wan.model as wan_model

    return type(dm) is wan_model.WanModel and getattr(dm, "patch_embedding").in_channels == LATENT_CHANNELS


def width(dm) -> int:
    """Inner width D of the DiT (1536 for Wan 2.1 1.3B, 5120 for 14B)."""
    return int(dm.dim)


def patch_embed(dm, latent: torch.Tensor) -> torch.Tensor:
    """The DiT's own first projection (``patch_embedding``, Conv3d k=s=(1,2,2)) applied to a model-space latent.

    Args:
        latent: ``[B, C, T, h, w]`` float (after ``process_latent_in``).
    Returns:
        ``[B, D, T, h // 2, w // 2]`` float32 on the CPU.
    """
    with torch.no_grad():  # Wan keeps patch_embedding in fp32 and feeds it x.float() (WanModel.forward_orig)
        y = dm.patch_embedding(latent.float())
    return y.float().cpu()


def _block_patch(index: int, count: int):
    def patch(args: dict, extra: dict) -> dict:
        mem = args["transformer_options"].get(PATCH_KEY)
        if mem is None:
            return extra["original_block"](args)
        x, vec = args["img"], args["vec"]
        if vec.ndim == 4 and vec.shape[1] > 1:
            raise NotImplementedError(
                "this Wan model uses per-token timesteps (Wan 2.2 TI2V); FrameMemory supports Wan 2.1 so far")
        m = mem["tokens"].shape[1]
        if index == 0:
            x = torch.cat([x, mem["tokens"].to(device=x.device, dtype=x.dtype)], dim=1)
        pe = torch.cat([args["pe"], mem["freqs"].to(device=args["pe"].device, dtype=args["pe"].dtype)], dim=1)
        out = extra["original_block"]({**args, "img": x, "pe": pe})
        if index == count - 1:
            out = {**out, "img": out["img"][:, : out["img"].shape[1] - m]}
        return out

    return patch


def _diffusion_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
    tokens, ids = pop_memory(kwargs, x.device)  # [B, M, D], [1, M, 3]
    if tokens is not None:
        dm = executor.class_obj
        freqs = dm.rope_embedder(ids).movedim(1, 2)  # [1, M, 1, d/2, 2, 2], like WanModel.rope_encode
        transformer_options = {**transformer_options, PATCH_KEY: {"tokens": tokens, "freqs": freqs}}
    return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)


def install(model, dm) -> None:
    """Install the memory wrapper and per-block patches on ``model`` (a clone; replaces earlier ones)."""
    model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY, _diffusion_wrapper)
    count = len(dm.blocks)
    for i in range(count):
        model.set_model_patch_replace(_block_patch(i, count), "dit", "double_block", i)
