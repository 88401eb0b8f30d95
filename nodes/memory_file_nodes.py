"""Save Memory and Load Memory: a MEMORY (history, memory tokens, encoder config, storyboard position) as a memory
folder (``<name>.fmem``, memory/memory_file.py) under ComfyUI's output folder, to continue a storyboard later."""
from __future__ import annotations

import json
import os

import folder_paths
from comfy_api.latest import io

from ..memory.memory_file import find_memory, legacy_file, memory_folder
from ..models.resume import load_memory_file, save_memory_file
from . import tooltips
from .sockets import CATEGORY, MemoryEncoderType, MemoryType

def memory_path(name: str) -> str:
    """Absolute path of the memory folder ``name`` (memory/memory_file.py: ``<name>.fmem``; a ``.safetensors`` ending,
    the old single-file name, is read from that file when no folder exists yet) relative to ComfyUI's output folder
    (``folder_paths``), or absolute inside it.

    Raises:
        ValueError: an empty name, or a path outside the output folder, lexically or once symbolic links are resolved
        (the server reads and writes nowhere else).
    """
    text = name.strip()
    if not text:
        raise ValueError("the memory file path is empty: give a name relative to ComfyUI's output folder, "
                         "e.g. 'framememory/my_story'")
    out = os.path.abspath(folder_paths.get_output_directory())
    path = memory_folder(os.path.join(out, text))
    real_out = os.path.realpath(out)
    for candidate, root in ((path, out), (os.path.realpath(path), real_out),
                            (os.path.realpath(legacy_file(path)), real_out)):
        if os.path.commonpath([root, candidate]) != root:
            via = "" if candidate == path else f" (it leads to {candidate} through a symbolic link)"
            raise ValueError(f"memory file {name!r} is outside ComfyUI's output folder {out}{via}: give a path "
                             "relative to it, e.g. 'framememory/my_story', without links that lead elsewhere")
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
                        "its run stands) to a memory folder (<path>.fmem) in ComfyUI's output folder, to continue it "
                        "later with Load Memory.",
            inputs=[
                MemoryType.Input("memory", tooltip="From Storyboard, Encode History or Load Memory."),
                io.String.Input("path", default="framememory/memory",
                                tooltip="Name relative to ComfyUI's output folder ('.fmem' is added: a folder with "
                                        "one file per segment). An existing memory there is replaced, crash-safe."),
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
            description="Reads a memory (Save Memory, or a Storyboard's save_path). Into a Storyboard's memory input "
                        "with the same storyboard text, an unfinished run continues at its next segment with its own "
                        "seeds, giving the frames the uninterrupted run would have given.",
            inputs=[
                io.String.Input("path", default="framememory/memory",
                                tooltip="Name relative to ComfyUI's output folder: its '.fmem' memory folder, or an "
                                        "older single '.safetensors' memory file of that name."),
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
        found = find_memory(memory_path(path))
        if found is None:
            return ""
        return os.path.getmtime(os.path.join(found, "index.json") if os.path.isdir(found) else found)  # re-read on change

    @classmethod
    def execute(cls, path: str, memory_encoder, vae) -> io.NodeOutput:
        memory = load_memory_file(memory_path(path), memory_encoder, vae)
        return io.NodeOutput(memory, json.dumps(describe(memory)))
