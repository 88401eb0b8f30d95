"""Drive ComfyUI from outside, headless: :mod:`.comfy_server` starts a real ComfyUI server with this pack installed
(``ComfyServer``) and talks to it over HTTP and its websocket (scripts/run_example.py, the end-to-end tests).

The names below are re-exported lazily (PEP 562), so importing this package loads nothing: ``requests`` and
``websocket-client`` are imported only when one of them is first used.
"""
from __future__ import annotations

_FROM_COMFY_SERVER = ("ComfyServer", "ServerError", "PromptError", "substitute_inputs")
__all__ = list(_FROM_COMFY_SERVER)


def __getattr__(name: str):
    if name in _FROM_COMFY_SERVER:
        from . import comfy_server

        return getattr(comfy_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
