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

import comfy.conds
import comfy.patcher_extension

PATCH_KEY = "framememory"
TOKENS_KEY = "memory_tokens"
POSITIONS_KEY = "memory_positions2"


def diffusion_model_of(model):
    """The ``WanModel`` inside a ComfyUI MODEL (ModelPatcher). Raises TypeError for other families."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    import comfy.ldm.wan.model as wan_model

    if not isinstance(dm, wan_model.WanModel):
        raise TypeError(
            f"FrameMemory supports Wan 2.1 DiTs so far; this MODEL is {type(dm).__name__}. "
            "Load a Wan 2.1 diffusion model with the stock 'Load Diffusion Model' node.")
    return dm


def model_width(model) -> int:
    """Inner width D of the DiT (1536 for Wan 2.1 1.3B, 5120 for 14B)."""
    return int(diffusion_model_of(model).dim)


def patch_embed(model, latent: torch.Tensor) -> torch.Tensor:
    """The DiT's own first projection (``patch_embedding``, Conv3d k=s=(1,2,2)) applied to a model-space latent.

    Args:
        latent: ``[B, C, T, h, w]`` float (after ``process_latent_in``).
    Returns:
        ``[B, D, T, h // 2, w // 2]`` float32 on the CPU.
    """
    dm = diffusion_model_of(model)
    weight = dm.patch_embedding.weight
    with torch.no_grad():
        y = dm.patch_embedding(latent.to(weight.device).float())
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
    tokens = kwargs.pop(TOKENS_KEY, None)
    positions2 = kwargs.pop(POSITIONS_KEY, None)
    if tokens is not None and tokens.shape[1] > 0:
        if positions2 is None:
            raise ValueError(f"conditioning has '{TOKENS_KEY}' but no '{POSITIONS_KEY}'")
        dm = executor.class_obj
        ids = positions2[:1].to(device=x.device, dtype=torch.float32) / 2.0  # [1, M, 3]
        freqs = dm.rope_embedder(ids).movedim(1, 2)  # [1, M, 1, d/2, 2, 2], like WanModel.rope_encode
        transformer_options = {**transformer_options, PATCH_KEY: {"tokens": tokens, "freqs": freqs}}
    return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)


def patch_model(model):
    """Clone a Wan MODEL and install the memory wrapper and per-block patches (idempotent).

    Sampling with conditioning that carries no memory is unchanged by the patches.
    Raises TypeError for non-Wan models.
    """
    dm = diffusion_model_of(model)
    m = model.clone()
    m.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY, _diffusion_wrapper)
    count = len(dm.blocks)
    for i in range(count):
        m.set_model_patch_replace(_block_patch(i, count), "dit", "double_block", i)
    return m


def attach_memory(conditioning: list, tokens: torch.Tensor | None, positions: torch.Tensor | None) -> list:
    """Return a copy of a CONDITIONING list with memory tokens in every entry's ``model_conds``.

    Args:
        conditioning: ComfyUI CONDITIONING, ``[[cond [1, L, C], dict], ...]``.
        tokens: ``[M, D]`` float memory tokens, or None for no memory (entries are returned without memory).
        positions: ``[M, 3]`` float RoPE positions (t relative to the segment being generated, h, w).
    """
    out = []
    for cond, extra in conditioning:
        extra = extra.copy()
        mc = dict(extra.get("model_conds", {}))
        mc.pop(TOKENS_KEY, None)
        mc.pop(POSITIONS_KEY, None)
        if tokens is not None:
            mc[TOKENS_KEY] = comfy.conds.CONDRegular(tokens[None].float())
            mc[POSITIONS_KEY] = comfy.conds.CONDRegular((positions[None].double() * 2).round().long())
        extra["model_conds"] = mc
        out.append([cond, extra])
    return out
