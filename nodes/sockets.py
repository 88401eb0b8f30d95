"""Socket types of the pack (V3 custom types)."""
from comfy_api.latest import io

MemoryEncoderType = io.Custom("FRAMEMEMORY_ENCODER")
MemoryType = io.Custom("FRAMEMEMORY_MEMORY")
CATEGORY = "FrameMemory"
