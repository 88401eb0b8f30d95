"""Thin V3 nodes of ComfyUI-FrameMemory. Each ``execute`` converts units, calls one function from
``models/`` and wraps the result; loops, state and maths live in ``memory/`` and ``models/``."""
from __future__ import annotations

from .combine_node import CombineMemoryEncoders
from .memory_nodes import ApplyMemory, EncodeHistory, LoadMemoryEncoder
from .storyboard_node import Storyboard

NODES = [LoadMemoryEncoder, EncodeHistory, ApplyMemory, Storyboard, CombineMemoryEncoders]
