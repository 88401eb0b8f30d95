"""Combine Memory Encoders: several history encoders at different rates, concatenated (arXiv 2512.23851 add-on)."""
from __future__ import annotations

from comfy_api.latest import io

from ..models.encoding import MultiEncoder
from .sockets import CATEGORY, MemoryEncoderType


class CombineMemoryEncoders(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryCombineEncoders",
            display_name="Combine Memory Encoders",
            category=CATEGORY,
            description="Uses two history encoders together (e.g. 4x4x2 for detail + 2x2x8 for a long reach): the memory "
                        "is the concatenation of both encoders' tokens, each at its own positions. The history is shared; "
                        "each encoder caches its own tokens.",
            inputs=[
                MemoryEncoderType.Input("encoder_a", tooltip="First history encoder (its tokens come first); may itself be a combination."),
                MemoryEncoderType.Input("encoder_b", tooltip="Second history encoder, e.g. at another rate; may itself be a combination."),
            ],
            outputs=[MemoryEncoderType.Output(display_name="memory_encoder",
                                              tooltip="Both encoders as one; use it wherever a memory encoder goes.")],
        )

    @classmethod
    def execute(cls, encoder_a, encoder_b) -> io.NodeOutput:
        return io.NodeOutput(MultiEncoder([encoder_a, encoder_b]))
