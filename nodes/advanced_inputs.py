"""The V3 schema's advanced input group, where the installed ComfyUI has one.

ComfyUI 0.33.0's ``comfy_api.latest.io`` inputs take ``advanced=True`` (sent to the frontend in the node's input spec;
frontend 1.48.7 folds such widgets behind the node's "Show advanced" toggle); 0.3.75's do not take the keyword at all.
The keyword is detected by feature (the installed ``io.Input.__init__`` signature), never by version number.
"""
from __future__ import annotations

import functools
import inspect


@functools.cache
def has_advanced_group() -> bool:
    """Whether this ComfyUI's V3 inputs take ``advanced`` (``comfy_api.latest.io.Input.__init__``)."""
    from comfy_api.latest import io

    return "advanced" in inspect.signature(io.Input.__init__).parameters


def advanced() -> dict:
    """Keyword arguments that put a V3 input in the advanced group: ``{"advanced": True}`` where supported, else
    ``{}`` (the input then shows with the others, as before)."""
    return {"advanced": True} if has_advanced_group() else {}


__all__ = ["has_advanced_group", "advanced"]
