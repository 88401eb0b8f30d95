"""ComfyUI-FrameMemory: long, consistent video with a learned, compressed memory of everything generated so far
(arXiv 2512.23851). ComfyUI-only code is imported lazily inside :func:`comfy_entrypoint` so the package can be
imported (and its ``memory/`` core tested) without ComfyUI."""
from __future__ import annotations

import os

__version__ = "0.1.0"
# Frontend extension (web/framememory.js: run-wide progress, the storyboard box's height, the report on the node);
# ComfyUI reads this before calling comfy_entrypoint.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """V3 entry point called by ComfyUI when it loads the pack. Registers ``models/memory_encoders`` with
    ``folder_paths`` and the prompt handler of nodes/history_settings.py, and returns the extension. The lab model's
    stand-in text encoder (demo/nodes.py ``LAB_NODES``) is always registered; the HunyuanVideo stand-in of the tiny
    test models only when the environment variable ``FRAMEMEMORY_DEMO=1`` is set."""
    import folder_paths
    from comfy_api.latest import ComfyExtension

    path = os.path.join(folder_paths.models_dir, "memory_encoders")
    os.makedirs(path, exist_ok=True)
    folder_paths.add_model_folder_path("memory_encoders", path)
    folder_paths.folder_names_and_paths["memory_encoders"][1].update({".safetensors", ".sft"})

    from .nodes import NODES, history_settings

    history_settings.register()  # Load Video as History takes its shared settings from the Storyboard it feeds
    from .demo.nodes import DEMO_NODES, LAB_NODES

    node_list = list(NODES) + LAB_NODES  # the lab templates' stand-in text encoder: they run with no download
    if os.environ.get("FRAMEMEMORY_DEMO") == "1":
        node_list += DEMO_NODES

    class FrameMemoryExtension(ComfyExtension):
        async def get_node_list(self):
            return node_list

    return FrameMemoryExtension()
