"""Stand-in text encoders. ``LAB_NODES`` (the Wan stand-in the lab model was trained with) are always registered: the
no-download lab templates need them. ``DEMO_NODES`` (the HunyuanVideo stand-in of the tiny test models) only with
``FRAMEMEMORY_DEMO=1``."""
from __future__ import annotations

from comfy_api.latest import io

from .text_encoder import StandInTextEncoder


class DemoTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryDemoTextEncoder",
            display_name="Lab Text Encoder (stand-in for umt5, lab model only)",
            category="FrameMemory/lab",
            description="The weightless stand-in for umt5-xxl that the lab model (lab_model/) was trained with, so "
                        "the lab templates, the tests and the embedded default run without downloading a text "
                        "encoder. Prompts change the conditioning but carry no meaning. With real Wan weights use "
                        "Load CLIP (umt5_xxl, type wan) instead.",
            inputs=[io.Int.Input("width", default=4096, min=8, max=8192, tooltip="Conditioning width (4096 = Wan's umt5-xxl).")],
            outputs=[io.Clip.Output(display_name="clip", tooltip="A stand-in CLIP usable by CLIPTextEncode and Storyboard.")],
        )

    @classmethod
    def execute(cls, width: int) -> io.NodeOutput:
        return io.NodeOutput(StandInTextEncoder(width))


class DemoHunyuanTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryDemoTextEncoderHunyuanVideo",
            display_name="Demo Text Encoder for HunyuanVideo (stand-in, not LLaVA/CLIP-L)",
            category="FrameMemory/demo",
            description="DEMO ONLY: a weightless stand-in for HunyuanVideo's text encoders (a 4096-wide sequence plus "
                        "the 768-wide pooled vector HunyuanVideo needs). Prompts carry no meaning.",
            inputs=[io.Int.Input("width", default=4096, min=8, max=8192, tooltip="Sequence width (4096 = HunyuanVideo's LLaVA-Llama-3)."),
                    io.Int.Input("pooled_width", default=768, min=1, max=8192, tooltip="Pooled vector width (768 = CLIP-L).")],
            outputs=[io.Clip.Output(display_name="clip", tooltip="A stand-in CLIP usable by CLIPTextEncode and Storyboard.")],
        )

    @classmethod
    def execute(cls, width: int, pooled_width: int) -> io.NodeOutput:
        return io.NodeOutput(StandInTextEncoder(width, pooled_dim=pooled_width))


LAB_NODES = [DemoTextEncoder]
DEMO_NODES = [DemoHunyuanTextEncoder]
