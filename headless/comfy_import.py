"""The one way a script of this repository (benchmarks/, training/, scripts/, demo/, tests) imports ComfyUI in-process.

ComfyUI is not an installed package: its ``comfy`` and ``comfy_extras`` packages are importable once its folder is on
``sys.path``. This pack's own code is the installed package ``framememory`` (``pip install -e .``, scripts/setup.sh);
the repository root must stay off ``sys.path``, where our ``nodes/`` and ``models/`` would shadow ComfyUI's ``nodes.py``
and ``models/``. ComfyUI reads its command-line settings (``comfy.cli_args.args``) when ``comfy.model_management`` is
first imported, so the settings below are made before that import.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMFYUI_DIR = REPO_ROOT / ".cache" / "ComfyUI"  # scripts/setup.sh's bundled ComfyUI


def comfyui_dir(path: str | os.PathLike | None = None) -> Path:
    """The ComfyUI folder to use: ``path``, else ``$COMFYUI_DIR``, else ``.cache/ComfyUI`` (scripts/setup.sh).

    Raises SystemExit (naming the folder and the fix) where it holds no ``comfy`` package."""
    folder = Path(path or os.environ.get("COMFYUI_DIR") or DEFAULT_COMFYUI_DIR).resolve()
    if not (folder / "comfy").is_dir():
        raise SystemExit(f"no ComfyUI at {folder}: run `bash scripts/setup.sh` or set COMFYUI_DIR (or --comfyui-dir) "
                         "to a ComfyUI checkout")
    return folder


def import_comfyui(path: str | os.PathLike | None = None, *, cpu: bool = False, sdpa: bool = False) -> Path:
    """Make ``import comfy`` work in this process; returns the ComfyUI folder used (see :func:`comfyui_dir`).

    ``cpu``: ComfyUI's ``--cpu`` (everything on the CPU). ``sdpa``: ``--use-pytorch-cross-attention`` (PyTorch's
    SDPA), set only while ``comfy.model_management`` is not yet imported (ComfyUI reads it at that import; a test
    session that imported it first keeps its choice). Idempotent. Raises SystemExit where there is no ComfyUI."""
    folder = comfyui_dir(path)
    sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != REPO_ROOT]
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import comfy.cli_args

    if cpu:
        comfy.cli_args.args.cpu = True
    if sdpa and "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.use_pytorch_cross_attention = True
    return folder
