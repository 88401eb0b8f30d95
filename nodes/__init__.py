"""Thin V3 nodes of ComfyUI-FrameMemory. Each ``execute`` converts units, calls one function from
``models/`` and wraps the result; loops, state and maths live in ``memory/`` and ``models/``."""
from __future__ import annotations

from .combine_node import CombineMemoryEncoders
from .memory_nodes import ApplyMemory, EncodeHistory, LoadMemoryEncoder
from .memory_file_nodes import LoadMemory, SaveMemory
from .storyboard_node import Storyboard
from .video_history_node import LoadVideoAsHistory

NODES = [LoadMemoryEncoder, EncodeHistory, ApplyMemory, Storyboard, CombineMemoryEncoders, SaveMemory, LoadMemory,
         LoadVideoAsHistory]
