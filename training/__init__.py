"""Training for ComfyUI-FrameMemory (arXiv 2512.23851): data preparation (``data``, ``prepare_data``) and the
Stage I / Stage II scripts. Nothing here imports ComfyUI at import time."""
