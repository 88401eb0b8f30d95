"""Attention backend choice: sageattention on CUDA when installed, otherwise PyTorch SDPA, with a one-line notice.

ComfyUI picks its attention at start-up (``--use-sage-attention``) and exits when that flag is given without the
``sageattention`` package; on a machine without CUDA sageattention (Triton kernels) fails on every call. These
helpers decide before start-up (for the launch scripts) and per call (``optimized_attention_override`` in
``transformer_options``, honoured by ComfyUI's ``wrap_attn``; used by the benchmarks).
"""
from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger("FrameMemory")
BACKENDS = ("auto", "sage", "sdpa")


def resolve_attention(requested: str = "auto") -> tuple[str, str | None]:
    """Return ``(backend, notice)``: backend is ``"sage"`` or ``"sdpa"``; notice is a one-line reason when the
    request could not be honoured (None otherwise).

    ``auto`` means sage when CUDA and sageattention are both present, else SDPA (no notice).
    Raises ValueError for an unknown name.
    """
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r} is not one of {BACKENDS}")
    if requested == "sdpa":
        return "sdpa", None
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA device")
    if importlib.util.find_spec("sageattention") is None:
        missing.append("sageattention is not installed (pip install sageattention)")
    if not missing:
        return "sage", None
    if requested == "auto":
        return "sdpa", None
    return "sdpa", f"FrameMemory: sage attention unavailable ({'; '.join(missing)}); using PyTorch SDPA"


def attention_override(backend: str):
    """An ``optimized_attention_override`` for ``transformer_options`` that runs ComfyUI's sage or PyTorch
    attention function regardless of the start-up choice."""
    import comfy.ldm.modules.attention as attn

    func = attn.attention_sage if backend == "sage" else attn.attention_pytorch

    def override(_default, *args, **kwargs):
        return func(*args, **kwargs)

    return override
