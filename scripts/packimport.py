"""Load this repository as the importable package ``framememory`` for the stand-alone scripts (demo/, training/,
benchmarks/), without putting the repository root itself on ``sys.path``: its ``nodes/`` and ``models/`` would
shadow ComfyUI's ``nodes.py`` and ``models`` folder. Scripts reach this file with
``sys.path.insert(0, <repo>/scripts)``."""
from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_pack(name: str = "framememory"):
    """Import the repository as package ``name`` (once) and return it."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"), submodule_search_locations=[ROOT])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
