"""Demo-only nodes (registered with FRAMEMEMORY_DEMO=1)."""
from __future__ import annotations

from comfy_api.latest import io

from .text_encoder import StandInTextEncoder


class DemoTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryDemoTextEncoder",
            display_name="Demo Text Encoder (stand-in, not T5)",
            category="FrameMemory/demo",
            description="DEMO ONLY: a weightless stand-in for umt5-xxl so tests and the embedded default run without "
                        "real weights. Prompts change the conditioning but carry no meaning.",
            inputs=[io.Int.Input("width", default=4096, min=8, max=8192, tooltip="Conditioning width (4096 = Wan's umt5-xxl).")],
            outputs=[io.Clip.Output(display_name="clip", tooltip="A stand-in CLIP usable by CLIPTextEncode and Storyboard.")],
        )

    @classmethod
    def execute(cls, width: int) -> io.NodeOutput:
        return io.NodeOutput(StandInTextEncoder(width))


DEMO_NODES = [DemoTextEncoder]
