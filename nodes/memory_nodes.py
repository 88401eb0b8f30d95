"""Load Memory Encoder, Encode History and Apply Memory (arXiv 2512.23851 memory tokens for the stock KSampler)."""
from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..models.encoding import UNTRAINED, MemoryEncoder
from ..models.input_checks import (check_fps, check_frame_size, check_frames, check_memory_matches, load_naming_file,
                                   size_multiple)
from ..models.history_writer import history_from_frames
from ..models.memory_value import Memory
from . import tooltips
from .sockets import CATEGORY, MemoryEncoderType, MemoryType

FOLDER = "memory_encoders"
EXPERTS = ("high noise / only model", "low noise (Wan 2.2 A14B)")  # index = memory.history.PartKey.expert


class LoadMemoryEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryLoadEncoder",
            display_name="Load Memory Encoder",
            category=CATEGORY,
            description="Loads a history encoder (safetensors with its config in the metadata) from "
                        "models/memory_encoders. It compresses the video history into memory tokens in the DiT's width.",
            inputs=[
                io.Combo.Input("encoder_name", options=[UNTRAINED] + folder_paths.get_filename_list(FOLDER),
                               tooltip="Encoder file in models/memory_encoders. 'untrained (LR branch only)' needs no file: "
                                       "memory tokens come from the DiT's own VAE and patch embedding of a 4x4x2 "
                                       "downsampled history (no learned compression). A file holds one memory design "
                                       "(frame_preservation, pack_forcing or video_ssm, in its metadata); Encode History "
                                       "uses that design, the Storyboard's memory_mode must agree with it."),
            ],
            outputs=[MemoryEncoderType.Output(display_name="memory_encoder",
                                              tooltip="The history encoder; its width is checked against the model it is used with.")],
        )

    @classmethod
    def execute(cls, encoder_name: str) -> io.NodeOutput:
        if encoder_name == UNTRAINED:
            return io.NodeOutput(MemoryEncoder.untrained())
        path = folder_paths.get_full_path_or_raise(FOLDER, encoder_name)
        return io.NodeOutput(load_naming_file(path, MemoryEncoder.from_file))


class EncodeHistory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryEncodeHistory",
            display_name="Encode History",
            category=CATEGORY,
            description="Turns video frames into history and encodes it into memory tokens. Frames are center-cropped to "
                        "a multiple of the model's token size (16 px; 32 px for Wan 2.2 TI2V 5B) and cut into the segments "
                        "of one continuous video; the oldest frames that do not fill a segment are dropped.",
            inputs=[
                io.Model.Input("model", tooltip=f"The model the memory is for. {tooltips.MODEL}"),
                io.Vae.Input("vae", tooltip=tooltips.VAE),
                MemoryEncoderType.Input("memory_encoder", tooltip="From Load Memory Encoder."),
                io.Image.Input("images", optional=True, tooltip="History frames [F, H, W, 3], oldest first."),
                io.Latent.Input("latent", optional=True, tooltip="History as a video latent (decoded to frames first); used when no images are given."),
                MemoryType.Input("memory", optional=True, tooltip="Existing memory to append to (it is not changed; a new one is returned)."),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip=f"Frame rate of the history in frames per second: the model's, {tooltips.FPS}."),
                io.Int.Input("segment_latent_frames", default=4, min=1, max=64,
                             tooltip=f"Latent frames per history segment, a multiple of the encoder's time rate: "
                                     f"{tooltips.SEGMENT}."),
            ],
            outputs=[MemoryType.Output(display_name="memory", tooltip="History plus its memory tokens.")],
        )

    @classmethod
    def execute(cls, model, vae, memory_encoder, fps, segment_latent_frames, images=None, latent=None, memory=None) -> io.NodeOutput:
        check_fps(fps)
        if images is None:
            if latent is None:
                raise ValueError("Encode History needs either images or a latent")
            images = vae.decode(latent["samples"])
            images = images.reshape(-1, *images.shape[-3:])
        images = check_frames("images", images)  # RGBA -> RGB; NaN / inf refused
        if memory is not None:
            width, height = memory.width, memory.height
        else:
            mw, mh = size_multiple(model)  # 16 px (Wan 2.1, HunyuanVideo) or 32 px (Wan 2.2 5B)
            width, height = images.shape[2] // mw * mw, images.shape[1] // mh * mh
        mode = memory.mode if memory is not None else memory_encoder.parts[0].cfg.memory_type  # the file's design
        mem, _ = history_from_frames(model, vae, memory_encoder, images, segment_latent_frames, fps, width, height,
                                     memory, mode=mode)
        return io.NodeOutput(mem)


class ApplyMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryApplyMemory",
            display_name="Apply Memory",
            category=CATEGORY,
            description="Lets the model attend to memory tokens of the history while it generates the next segment. "
                        "Connect the outputs to the stock KSampler; every sampler and scheduler works.",
            inputs=[
                io.Model.Input("model", tooltip=f"The model that samples the next segment: {tooltips.FAMILIES} "
                                                "(the one the memory was encoded for)."),
                MemoryType.Input("memory", tooltip="From Encode History or Storyboard."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning of the next segment."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (gets the same memory so CFG batches cond and uncond)."),
                io.Combo.Input("expert", options=list(EXPERTS), default=EXPERTS[0], optional=True,
                               tooltip="Which DiT of the schedule this model is. Wan 2.2 A14B: use one Apply Memory per "
                                       "expert, 'low noise' for the model of the second KSamplerAdvanced (its memory "
                                       "tokens come from its own patch embedding)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Optional: the model's VAE. Used only if the memory has history whose LR-branch "
                                     "latent is not encoded yet; memories from Encode History and Storyboard never "
                                     f"need it. {tooltips.VAE_KINDS}."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with memory attention installed."),
                io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning carrying the memory tokens."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning carrying the memory tokens."),
            ],
        )

    @classmethod
    def execute(cls, model, memory: Memory, positive, negative, expert: str = EXPERTS[0], vae=None) -> io.NodeOutput:
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {list(EXPERTS)}, got {expert!r}")
        check_frame_size(model, memory.width, memory.height, memory.encoder, memory.mode)  # as the Storyboard does
        # a memory of another family, VAE or DiT width (e.g. from Load Memory) fails here, naming the fix
        check_memory_matches(memory, model, memory.width, memory.height, memory.fps)
        return io.NodeOutput(*memory.apply(model, positive, negative, EXPERTS.index(expert), vae))
