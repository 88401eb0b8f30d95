"""Save Memory and Load Memory: a MEMORY (history, memory tokens, encoder config, storyboard position) as one
safetensors file under ComfyUI's output folder (memory/memory_file.py), to continue a storyboard later."""
from __future__ import annotations

import json
import os

import folder_paths
from comfy_api.latest import io

from ..models.resume import load_memory_file, save_memory_file
from . import tooltips
from .sockets import CATEGORY, MemoryEncoderType, MemoryType

SUFFIX = ".safetensors"


def memory_path(name: str) -> str:
    """Absolute path of the memory file ``name``: relative to ComfyUI's output folder (``folder_paths``), or absolute
    inside it; ``.safetensors`` is added when missing. Raises ValueError for an empty name or a path outside the
    output folder (the server writes nowhere else)."""
    text = name.strip()
    if not text:
        raise ValueError("the memory file path is empty: give a name relative to ComfyUI's output folder, "
                         "e.g. 'framememory/my_story'")
    if not text.endswith(SUFFIX):
        text += SUFFIX
    out = os.path.abspath(folder_paths.get_output_directory())
    path = os.path.abspath(os.path.join(out, text))
    if os.path.commonpath([out, path]) != out:
        raise ValueError(f"memory file {name!r} is outside ComfyUI's output folder {out}: give a path relative to it, "
                         "e.g. 'framememory/my_story'")
    return path


def describe(memory) -> dict:
    """What a memory holds, for the UI and the info output (JSON-able)."""
    pos = memory.position
    return {"segments": len(memory.history.segments), "frames": memory.history.num_frames,
            "seconds": round(memory.history.num_frames / memory.fps, 3), "width": memory.width,
            "height": memory.height, "fps": memory.fps, "memory_mode": memory.mode,
            "memory_tokens": memory.history.num_tokens,
            "position": None if pos is None else {"next_segment": pos.next_segment, "total_segments": pos.total_segments,
                                                  "next_shot": pos.next_shot, "next_seed": pos.next_seed,
                                                  "elapsed_s": round(pos.elapsed_s, 3), "finished": pos.finished}}


class SaveMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemorySaveMemory",
            display_name="Save Memory",
            category=CATEGORY,
            description="Writes a memory (history latents, memory tokens, encoder config and, from a Storyboard, where "
                        "its run stands) to one safetensors file in ComfyUI's output folder, to continue it later "
                        "with Load Memory.",
            inputs=[
                MemoryType.Input("memory", tooltip="From Storyboard, Encode History or Load Memory."),
                io.String.Input("path", default="framememory/memory",
                                tooltip="File name relative to ComfyUI's output folder ('.safetensors' is added). "
                                        "An existing file is replaced (atomically)."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, memory, path: str) -> io.NodeOutput:
        full = memory_path(path)
        save_memory_file(full, memory)
        return io.NodeOutput(ui={"framememory_memory_file": [{"path": full, **describe(memory)}]})


class LoadMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryLoadMemory",
            display_name="Load Memory",
            category=CATEGORY,
            description="Reads a memory file (Save Memory, or a Storyboard's save_path). Into a Storyboard's memory input "
                        "with the same storyboard text, an unfinished run continues at its next segment with its own "
                        "seeds, giving the frames the uninterrupted run would have given.",
            inputs=[
                io.String.Input("path", default="framememory/memory",
                                tooltip="File name relative to ComfyUI's output folder ('.safetensors' is added)."),
                MemoryEncoderType.Input("memory_encoder", tooltip="The encoder the memory was made with (its config is "
                                                                  "checked against the file's)."),
                io.Vae.Input("vae", tooltip="The VAE the memory was made with (its LR-branch stream continues): "
                                            f"{tooltips.VAE_KINDS}."),
            ],
            outputs=[
                MemoryType.Output(display_name="memory", tooltip="The saved history, memory tokens and storyboard position."),
                io.String.Output(display_name="info", tooltip="JSON: segments, frames, seconds, size, memory tokens and "
                                                              "the storyboard position (next segment, seed, elapsed seconds)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, path: str, **kwargs):
        full = memory_path(path)
        return os.path.getmtime(full) if os.path.isfile(full) else ""  # a rewritten file is read again

    @classmethod
    def execute(cls, path: str, memory_encoder, vae) -> io.NodeOutput:
        memory = load_memory_file(memory_path(path), memory_encoder, vae)
        return io.NodeOutput(memory, json.dumps(describe(memory)))
