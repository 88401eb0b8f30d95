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
FORMAT = "history_encoder/2"  # /2: HR branch weights under ``hr.layers.*`` / ``hr.proj.*`` (/1: ``hr.*`` / ``proj.*``)


def upgrade_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a ``history_encoder/1`` file (HR convolutions under ``hr.N.*``, output projection under ``proj.*``)
    renamed to the current layout (``hr.layers.N.*``, ``hr.proj.*``); current files are returned unchanged."""
    if any(k.startswith("hr.layers.") or k.startswith("hr.proj.") for k in tensors):
        return tensors
    out = {}
    for k, v in tensors.items():
        if k.startswith("proj."):
            k = "hr." + k
        elif k.startswith("hr."):
            k = "hr.layers." + k[len("hr."):]
        out[k] = v
    return out


def write_file_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace``, so a reader (or a crash) never sees half a file. The pack's writer for JSON and small files
    (training manifests, workflows, thumbnails); safetensors go through :func:`save_safetensors_atomic`."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # created with the usual permissions (umask), unlike tempfile.mkstemp's 0600
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_safetensors_atomic(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically: a temporary file in the same folder, then ``os.replace``, so a reader
    (or a crash) never sees half a file. Tensors are detached, moved to the CPU and made contiguous. The pack's one
    safetensors writer (encoder files, LoRA exports, training shards, stand-in VAE, lab models)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors.tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_encoder(path: str, state_dict: dict[str, torch.Tensor], cfg: EncoderConfig) -> None:
    """Write ``state_dict`` and ``cfg`` atomically (:func:`save_safetensors_atomic`)."""
    save_safetensors_atomic(path, state_dict, {CONFIG_KEY: cfg.to_json(), FORMAT_KEY: FORMAT})


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
    return upgrade_state_dict(tensors), EncoderConfig.from_json(meta[CONFIG_KEY])
