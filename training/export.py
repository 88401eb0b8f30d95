"""Export a trained memory encoder and LoRA in the formats the nodes and ComfyUI's stock loaders read.

* Encoder: :func:`memory.io.save_encoder` (safetensors, :class:`memory.config.EncoderConfig` JSON in the metadata),
  loaded by the node "FrameMemory Load Memory Encoder" from ``models/memory_encoders/``.
* LoRA: ComfyUI's diffusers-style LoRA keys, which ``comfy.lora.load_lora`` maps onto ``diffusion_model.*`` weights
  and the stock node ``LoraLoaderModelOnly`` applies::

      diffusion_model.blocks.0.self_attn.q.lora_A.weight   [r, in]   (peft: blocks.0.self_attn.q.lora_A.default.weight)
      diffusion_model.blocks.0.self_attn.q.lora_B.weight   [out, r]
      diffusion_model.blocks.0.self_attn.q.alpha           []        peft lora_alpha; ComfyUI scales by alpha / r

  HunyuanVideo the same way, e.g. ``diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`` and
  ``diffusion_model.single_blocks.0.linear1.lora_B.weight``: ``comfy.lora.model_lora_keys_unet`` maps every
  ``diffusion_model.<module>`` weight of any model, so one format serves every training family.

  ComfyUI computes ``W + strength * (alpha / r) * B @ A``, peft ``W + (lora_alpha / r) * B @ A``: the same model at
  strength 1.0. Put the file in ``models/loras/``.
"""
from __future__ import annotations

import re

import torch

from ..memory.io import save_encoder

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_WRAPPER_PREFIX = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")


def comfy_lora_state_dict(dm: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None,
                          adapter: str = "default") -> dict[str, torch.Tensor]:
    """The peft LoRA of ``dm`` (an unwrapped DiT with :func:`training.stages.add_lora` applied) under ComfyUI keys
    (module docstring), float32 on the CPU. ``state_dict``: ``dm``'s full state dict when its parameters are
    sharded (FSDP: ``accelerator.get_state_dict``); default ``dm.state_dict()``.
    Raises ValueError when ``dm`` has no LoRA of that adapter name."""
    out: dict[str, torch.Tensor] = {}
    # FSDP (v1) wraps blocks in place: named_modules() says blocks.0._fsdp_wrapped_module.self_attn.q, while its
    # state dicts use the original names
    modules = {_WRAPPER_PREFIX.sub("", n): m for n, m in dm.named_modules()}
    for key, value in (dm.state_dict() if state_dict is None else state_dict).items():
        m = _PEFT_KEY.match(key)
        if m is None or m["adapter"] != adapter:
            continue
        name = m["module"]
        out[f"diffusion_model.{name}.lora_{m['ab']}.weight"] = value.detach().float().cpu().contiguous()
        alpha = modules[name].lora_alpha[adapter]
        out[f"diffusion_model.{name}.alpha"] = torch.tensor(float(alpha))
    if not out:
        raise ValueError(f"the model has no LoRA adapter {adapter!r} to export (was training.stages.add_lora applied?)")
    return out


def save_lora(path: str, dm: torch.nn.Module, metadata: dict[str, str] | None = None,
              state_dict: dict[str, torch.Tensor] | None = None) -> int:
    """Write :func:`comfy_lora_state_dict` of ``dm`` to ``path`` atomically (:func:`memory.io.save_safetensors_atomic`).
    Returns the number of LoRA-wrapped modules."""
    from ..memory.io import save_safetensors_atomic

    sd = comfy_lora_state_dict(dm, state_dict)
    save_safetensors_atomic(path, sd, metadata or {})
    return sum(1 for k in sd if k.endswith(".alpha"))


def export_encoder(path: str, encoder: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> bool:
    """Save a :class:`memory.encoder.HistoryEncoder` or a VideoSSM :class:`memory.designs.video_ssm.StateMemory`
    (``state_dict``: its full state dict, default its own) with its config for Load Memory Encoder. Returns False
    (writes nothing) for encoders the nodes cannot load (baselines such as ``training.baselines.LargePatchifier``)."""
    from ..memory.encoder import HistoryEncoder
    from ..memory.designs.video_ssm import StateMemory

    if type(encoder) not in (HistoryEncoder, StateMemory):
        return False
    save_encoder(path, encoder.state_dict() if state_dict is None else state_dict, encoder.cfg)
    return True


__all__ = ["comfy_lora_state_dict", "save_lora", "export_encoder"]
