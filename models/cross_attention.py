"""Cross-attention add-on of arXiv 2512.23851 ("cross-attention from the encoder's last hidden states into every DiT
block"), shared by the Wan (``models/families/wan21.py``: one layer per block) and HunyuanVideo
(``models/families/hunyuan_video.py``: one per double and per single block) adapters.

The encoder (``EncoderConfig.cross_attention``) owns one :class:`~memory.encoder.MemoryCrossAttention` per DiT block;
its hidden states (the HR branch's last hidden states of every encoded span) travel as a third model cond
(``models/conds.py``, ``memory_hidden``); :func:`install_cross_attention` hands the layers to the block patches
through ``transformer_options`` and :func:`cross_attend` runs layer ``i`` after block ``i`` on the video tokens.
Training reaches the same layers (``training/stages.py`` passes the hidden states and the layers to the same
patches), so the zero-initialised output projections learn in Stage I and II.
"""
from __future__ import annotations

import torch

from ..memory.history import HistoryBuffer, PartKey
from .conds import CROSS_KEY


def cross_layers(layers, hidden: torch.Tensor, blocks: int, width: int):
    """The encoder's cross-attention layers (from ``transformer_options[CROSS_KEY]``), checked against a DiT with
    ``blocks`` counted blocks (the family's ``cross_blocks``) of inner width ``width``, and its hidden states
    ``[B, M_h, Ch]``.

    Returns:
        ``layers`` (a sequence of ``blocks`` modules), unchanged.
    Raises:
        ValueError: no layers were installed, or their count, width or hidden width do not fit.
    """
    if layers is None:
        raise ValueError("the conditioning carries memory hidden states (cross-attention add-on) but the model has no "
                         "cross-attention layers: patch it with cross_attention.install_cross_attention (the Storyboard "
                         "and Apply Memory nodes do)")
    first = layers[0]
    dim, ctx = first.q.in_features, first.kv.in_features
    if len(layers) != blocks or dim != width or ctx != hidden.shape[-1]:
        raise ValueError(
            f"the memory encoder's cross-attention layers ({len(layers)} blocks, width {dim}, hidden width {ctx}) "
            f"do not fit this model ({blocks} blocks, width {width}) and hidden states ({hidden.shape[-1]})")
    return layers


def cross_attend(mem: dict, index: int, x: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """Cross-attention after DiT block ``index``: the ``n`` tokens from ``start`` of the block's output ``x``
    ``[B, n + R, D]`` (the video tokens; ``start`` > 0 where text comes first, HunyuanVideo on ComfyUI >= 0.14) go
    through layer ``mem["cross"][index]`` with keys/values from ``mem["hidden"]`` ``[B, M_h, Ch]`` (cast to ``x``'s
    device and dtype); the other ``R`` tokens (memory, text) are returned unchanged. Without ``mem["hidden"]``
    returns ``x`` itself.

    Returns:
        ``[B, n + R, D]``, ``x``'s dtype.
    """
    hidden = mem.get("hidden")
    if hidden is None:
        return x
    video = mem["cross"][index](x[:, start:start + n], hidden.to(device=x.device, dtype=x.dtype))  # [B, n, D]
    return torch.cat([x[:, :start], video, x[:, start + n:]], dim=1)


def cross_attention_part(encoder) -> tuple[int, object] | None:
    """``(index, encoder)`` of the encoder with the cross-attention add-on in ``encoder.parts``, or None."""
    for i, part in enumerate(encoder.parts):
        if part.cfg.cross_attention:
            return i, part
    return None


def memory_hidden(model, encoder, history: HistoryBuffer) -> torch.Tensor | None:
    """Keys of the add-on for the segment after ``history``: the HR branch's last hidden states of every encoded span,
    ``[M_h, hr_channels[-1]]`` float32 CPU (M_h = that encoder's memory tokens, without the overlap window; the same
    for every expert), or None without the add-on or before anything is encoded."""
    found = cross_attention_part(encoder)
    if found is None:
        return None
    found[1].check(model)
    parts = history.gather(PartKey(found[0]))
    return None if parts is None else parts[2]


def install_cross_attention(patched, encoder) -> None:
    """Hand the cross-attention layers of ``encoder`` (if it has the add-on) to the memory block patches of
    ``patched`` (a clone from ``families.install_memory``): they go into its ``transformer_options`` (``dit_blocks``
    modules, layer ``i`` after counted block ``i``) and the encoder's model patcher is loaded and offloaded with the
    DiT (``set_additional_models``). No-op without the add-on.

    Raises:
        NotImplementedError / ValueError: see ``MemoryEncoder.check``.
    """
    found = cross_attention_part(encoder)
    if found is None:
        return
    net, patcher = found[1].network(patched)
    patched.set_additional_models(CROSS_KEY, [patcher])
    patched.model_options.setdefault("transformer_options", {})[CROSS_KEY] = net.cross


__all__ = ["cross_layers", "cross_attend", "cross_attention_part", "memory_hidden", "install_cross_attention"]
