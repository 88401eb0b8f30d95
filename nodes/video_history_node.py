"""Load Video as History: a video file streamed into memory in bounded RAM (models/video_history.py)."""
from __future__ import annotations

import json
import os

import folder_paths
from comfy_api.latest import io

from ..memory.designs import MEMORY_MODES
from ..models.input_checks import check_memory_mode
from ..models import families
from ..models.video_history import history_from_video
from ..models.video_reader import FrameSelection
from . import tooltips
from .advanced_inputs import advanced
from .history_settings import SHARED_SETTINGS, settings_conflict
from .progress_ui import NodeDisplay, reading_text
from .sockets import CATEGORY, MemoryEncoderType, MemoryType


def input_videos() -> list[str]:
    """Video files in ComfyUI's input folder (the stock LoadVideo's list), sorted."""
    folder = folder_paths.get_input_directory()
    files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["video"]))


class LoadVideoAsHistory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryLoadVideoHistory",
            display_name="Load Video as History (Memory)",
            category=CATEGORY,
            description="Reads a video file as history without loading it whole: one segment at a time is decoded, "
                        "resampled to fps, center-cropped and resized to width x height, VAE-encoded as one continuous "
                        "stream and into memory tokens, then dropped, so RAM does not grow with the clip's length "
                        "(stock Load Video decodes every frame as float32). The oldest frames that do not fill a "
                        "segment are dropped. Linked to a Storyboard's memory input, its width, height, fps, "
                        "segment_latent_frames and memory_mode are the Storyboard's (set them there).",
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],  # to find the Storyboards its memory feeds
            inputs=[
                io.Combo.Input("video", options=input_videos(), upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder (or upload one). Any file PyAV decodes."),
                io.Model.Input("model", tooltip=f"The model the memory is for. {tooltips.MODEL}"),
                io.Vae.Input("vae", tooltip=tooltips.VAE),
                MemoryEncoderType.Input("memory_encoder", tooltip="From Load Memory Encoder."),
                io.Int.Input("width", default=832, min=16, max=4096, step=16,
                             tooltip=f"Storyboard width in pixels, {tooltips.SIZE}: frames are center-cropped and "
                                     f"resized to it. {tooltips.FOLLOWS_STORYBOARD}"),
                io.Int.Input("height", default=480, min=16, max=4096, step=16,
                             tooltip=f"Storyboard height in pixels, {tooltips.SIZE}: frames are center-cropped and "
                                     f"resized to it. {tooltips.FOLLOWS_STORYBOARD}"),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0,
                               tooltip=f"The model's frame rate ({tooltips.FPS}): the video is resampled to it "
                                       f"(nearest frame in time). {tooltips.FOLLOWS_STORYBOARD}"),
                io.Int.Input("segment_latent_frames", default=4, min=1, max=64,
                             tooltip=f"Latent frames per history segment, as in the Storyboard: {tooltips.SEGMENT}. "
                                     f"{tooltips.FOLLOWS_STORYBOARD}"),
                io.Int.Input("frame_load_cap", default=0, min=0, max=10_000_000,
                             tooltip="At most this many frames (at fps, after select_every_nth) become history; 0 = no "
                                     "cap. 45 at 16 fps = 13 + 16 + 16: three segments, 2.8 s."),
                io.Float.Input("skip_first_seconds", default=0.0, min=0.0, max=1e6, step=0.1,
                               tooltip="Start time in the video, in seconds (the file is seeked, not decoded from the "
                                       "start)."),
                io.Int.Input("select_every_nth", default=1, min=1, max=1000,
                             tooltip="Keep every n-th frame (after resampling to fps); the history then plays n times "
                                     "faster. 1 = every frame."),
                io.Combo.Input("memory_mode", options=list(MEMORY_MODES), default="frame_preservation",
                               tooltip="The Storyboard's memory_mode, which needs its own encoder file and LoRA (see "
                                       "the Storyboard's tooltip). frame_preservation / pack_forcing: memory tokens "
                                       "are made while reading. off / sliding_window / video_ssm: only latents are "
                                       "kept (bounded RAM), which a Storyboard in an encoding mode cannot use. "
                                       f"{tooltips.FOLLOWS_STORYBOARD}"),
                MemoryType.Input("memory", optional=True, **advanced(),
                                 tooltip="Only to put this video after an existing memory (Load Memory, another "
                                         "history): it is not changed, a new one is returned. The video starts a new "
                                         "VAE stream after it; width and height must match it. Leave empty to start "
                                         "from the video alone."),
            ],
            outputs=[
                MemoryType.Output(display_name="memory", tooltip="The history with its memory tokens, for the "
                                                                  "Storyboard's memory input or Apply Memory."),
                io.String.Output(display_name="report", tooltip="JSON: source video, selection, frames read and dropped, "
                                                                "segments, memory tokens, seconds, peak RSS."),
            ],
        )

    @classmethod
    def execute(cls, video, model, vae, memory_encoder, width, height, fps, segment_latent_frames, frame_load_cap,
                skip_first_seconds, select_every_nth, memory_mode, memory=None) -> io.NodeOutput:
        hidden = getattr(cls, "hidden", None)  # None when called outside ComfyUI's executor (tests, scripts)
        values = dict(zip(SHARED_SETTINGS, (width, height, fps, segment_latent_frames, memory_mode)))
        conflict = settings_conflict(getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None), values)
        if conflict:  # before any frame is read
            raise ValueError(conflict)
        if memory is not None:
            check_memory_mode(memory, memory_mode, "this Load Video as History")
        selection = FrameSelection(fps, skip_first_seconds, select_every_nth, frame_load_cap)
        display = NodeDisplay()  # what the node shows while it reads (nodes/progress_ui.py)
        per_segment = families.family_for(model).VAE_STRIDE[0] * segment_latent_frames / fps  # s per segment
        mem, report = history_from_video(model, vae, memory_encoder, folder_paths.get_annotated_filepath(video),
                                         selection, width, height, segment_latent_frames, memory, memory_mode,
                                         on_segment=lambda k, n: display.show(reading_text(k, n, per_segment)))
        display.show(f"Read {report['history_frames']} frames ({report['history_frames'] / fps:.1f} s) of "
                     f"{report['file']} into {report['memory_tokens']} memory tokens in {report['seconds']:.0f} s")
        return io.NodeOutput(mem, json.dumps(report))

    @classmethod
    def fingerprint_inputs(cls, video, **kwargs):
        path = folder_paths.get_annotated_filepath(video)
        return os.path.getmtime(path) if os.path.isfile(path) else video  # the file's change re-runs the node

    @classmethod
    def validate_inputs(cls, video):  # only ``video``: the other inputs keep ComfyUI's own range checks
        if not folder_paths.exists_annotated_filepath(video):
            return (f"video: no file '{video}' in ComfyUI's input folder; put it there or use the node's upload "
                    "button")
        return True
