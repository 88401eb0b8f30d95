"""Safetensors files of history encoders: weights + config JSON in the metadata (never pickle)."""
from __future__ import annotations

import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import EncoderConfig

CONFIG_KEY = "framememory_config"
FORMAT_KEY = "framememory_format"
FORMAT = "history_encoder/1"


def save_encoder(path: str, state_dict: dict[str, torch.Tensor], cfg: EncoderConfig) -> None:
    """Write ``state_dict`` and ``cfg`` atomically (temp file + rename: never a half-written file)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors.tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={CONFIG_KEY: cfg.to_json(), FORMAT_KEY: FORMAT})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_encoder_file(path: str) -> tuple[dict[str, torch.Tensor], EncoderConfig]:
    """Read an encoder file written by :func:`save_encoder`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, or no/invalid ``framememory_config`` metadata.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"memory encoder file not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    if CONFIG_KEY not in meta:
        raise ValueError(
            f"{path} has no '{CONFIG_KEY}' metadata: it is not a ComfyUI-FrameMemory history encoder "
            "(train one with training/ or pick the 'untrained (LR branch only)' entry)")
    return tensors, EncoderConfig.from_json(meta[CONFIG_KEY])
