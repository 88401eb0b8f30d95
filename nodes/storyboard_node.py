"""The Storyboard node: per-shot prompts and durations -> a long video generated segment by segment with memory."""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time

import folder_paths

import comfy.model_management
import comfy.samplers
import torch
from comfy_api.latest import io

from ..memory.storyboard import parse_storyboard
from ..models.input_checks import check_frames, check_memory_mode, check_run_inputs
from ..memory.designs import MEMORY_MODES
from ..models.segment_sampler import SamplerSettings
from ..models.storyboard import run_storyboard
from ..models.storyboard_start import storyboard_start
from ..models.video_history import video_history_frames
from . import tooltips
from .advanced_inputs import advanced
from .memory_file_nodes import memory_path
from .progress_ui import NodeDisplay
from .report_summary import report_summary
from .sockets import CATEGORY, MemoryEncoderType, MemoryType

log = logging.getLogger("FrameMemory")


INTERRUPTED_FOLDER = "framememory/interrupted"  # in ComfyUI's output folder
INTERRUPTED_KEEP = 5  # memory files of cancelled runs kept there; the oldest beyond that are removed


def interrupted_path() -> str:
    """Where an interrupted run without save_path keeps its finished segments: a new memory folder per run in
    ``output/framememory/interrupted/``, of which at most :data:`INTERRUPTED_KEEP` are kept (the oldest of the
    earlier ones are removed here, before the run, so the new one makes the cap; see :func:`prune_interrupted`)."""
    path = memory_path(f"{INTERRUPTED_FOLDER}/storyboard_{time.strftime('%Y%m%d-%H%M%S')}")
    prune_interrupted(os.path.dirname(path), INTERRUPTED_KEEP - 1)
    return path


def prune_interrupted(folder: str, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` (by modification time) ``storyboard_*.fmem`` memory folders of ``folder``
    (only those: nothing else there is touched). Returns the removed paths."""
    if not os.path.isdir(folder):
        return []
    runs = sorted((p for p in glob.glob(os.path.join(folder, "storyboard_*.fmem")) if os.path.isdir(p)),
                  key=os.path.getmtime, reverse=True)
    for old in runs[max(keep, 0):]:
        shutil.rmtree(old, ignore_errors=True)
    return runs[max(keep, 0):]


def cancel_text(finished: int, segments: int, saved_in: str | None, with_save_path: bool) -> str:
    """What the node shows after the user cancelled: how far the run got, where the finished segments are (a memory
    folder ``saved_in``, absolute, inside ComfyUI's output folder) and how to continue from them."""
    if not segments:
        return "Cancelled before the first segment: nothing was generated"
    head = f"Cancelled after segment {finished} of {segments}" if finished else \
        f"Cancelled during segment 1 of {segments}: nothing was finished or saved"
    if not finished or saved_in is None:
        return head
    name = os.path.relpath(saved_in, folder_paths.get_output_directory())
    how = ("To continue: switch resume on and Run again." if with_save_path else
           f"To continue: Load Memory with path {name[:-len('.fmem')]} -> this node's memory input, same "
           f"storyboard, Run. Only the newest {INTERRUPTED_KEEP} cancelled runs are kept there.")
    return f"{head}.\nThe finished segments are saved in output/{name}.\n{how}"


def history_output(include_history: bool, start_images, dropped: int, memory, width: int,
                   height: int) -> tuple[torch.Tensor | None, str]:
    """The history frames the Storyboard puts before the generated ones (include_history): the starting clip as the
    history holds it (``start_images`` past the ``dropped`` oldest, fitted to width x height), else the frames of a
    history read by Load Video as History, streamed again from its file (:func:`models.video_history.
    video_history_frames`). Returns ``(frames [F, height, width, 3] float32 0..1 or None, reason)``: the reason, for
    the report, says why nothing (or only part) is there; empty when all is."""
    if not include_history:
        return None, ""
    if start_images is not None:
        from ..memory.frames import fit_frames

        return fit_frames(start_images[dropped:], width, height).float().cpu(), ""
    if memory is None:
        return None, "no history: neither start_images nor memory is connected"
    return video_history_frames(memory, width, height)


EXAMPLE = "2.0 | a cyclist rides down a sunny city street\n2.0 | the cyclist passes parked cars, camera follows"


WIDTH_TIP = (f"Video width in pixels: {tooltips.SIZE}. Sizes whose frames, latents, VAE decode and attention would "
             "not fit in this machine's free memory are refused before anything runs, naming the largest size that "
             "fits.")
SEED_TIP = ("Seed of the first segment; segment k uses seed + k, which must stay below 2^64: a seed within "
            "(segments - 1) of the maximum is refused, not wrapped.")
START_IMAGES_TIP = ("Optional starting clip: frames (e.g. Load Video -> Get Video Components) that become the history "
                    "the storyboard continues, center-cropped and resized to width x height. Held in RAM as float32: "
                    "for a long clip use Load Video as History on the memory input instead. Leave empty to start from "
                    "nothing.")
MEMORY_TIP = ("History to continue from: Load Video as History (which then takes width, height, fps, "
              "segment_latent_frames and memory_mode from this node), Load Memory, or another Storyboard's memory "
              "output.")
SAVE_PATH_TIP = ("Memory folder (relative to ComfyUI's output folder, '.fmem' added) appended to after every segment, "
                 "crash-safe: history, memory tokens, encoder config and where the run stands. Checked before the "
                 "first segment (writable, free space). Empty: nothing is written while it runs, and an interrupt "
                 "writes the finished segments to output/framememory/interrupted/ instead of losing them.")
COLOUR_TIP = ("Colour-drift correction: match each new segment's colour (mean and spread per Lab channel) to the "
              "history's before it is appended, so tints do not build up over a long storyboard. Changes only the "
              "frames, not the sampled latents.")
DESCRIPTION = ("Generates a storyboard about 1 s at a time: each segment is sampled with memory tokens of everything "
               "before it (starting clip included), appended to the history, and only the new segment is encoded "
               "(arXiv 2512.23851).")


def model_inputs() -> list:
    """The models, the text encoder, the memory encoder and the negative prompt."""
    return [
        io.Model.Input("model", tooltip=f"{tooltips.MODEL} With model_low_noise: the Wan 2.2 A14B high-noise expert."),
        io.Vae.Input("vae", tooltip=tooltips.VAE),
        io.Clip.Input("clip", tooltip=tooltips.CLIP),
        MemoryEncoderType.Input("memory_encoder", tooltip="From Load Memory Encoder."),
        io.Conditioning.Input("negative", tooltip="Negative conditioning used for every segment."),
    ]


def video_inputs() -> list:
    """The storyboard text and the video's geometry."""
    return [
        io.String.Input("storyboard", multiline=True, default=EXAMPLE, tooltip=tooltips.STORYBOARD),
        io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip=WIDTH_TIP),
        io.Int.Input("height", default=480, min=16, max=4096, step=16,
                     tooltip=f"Video height in pixels: {tooltips.SIZE}; see width for the memory check."),
        io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip=f"Frames per second: {tooltips.FPS}."),
        io.Int.Input("segment_latent_frames", default=4, min=1, max=64,
                     tooltip=f"Latent frames generated per segment: {tooltips.SEGMENT}."),
    ]


def sampler_inputs() -> list:
    """What the stock KSampler takes."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=SEED_TIP),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps per segment."),
        io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="uni_pc", tooltip="Sampler, as in KSampler."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple", tooltip="Scheduler, as in KSampler."),
    ]


def optional_inputs() -> list:
    """The history, the A14B pair, the memory mode, the memory file and the colour correction (after include_history,
    the last required input)."""
    return [
        io.Image.Input("start_images", optional=True, tooltip=START_IMAGES_TIP),
        MemoryType.Input("memory", optional=True, tooltip=MEMORY_TIP),
        io.Model.Input("model_low_noise", optional=True, tooltip=tooltips.MODEL_LOW_NOISE, **advanced()),
        io.Int.Input("switch_step", default=0, min=0, max=10000, optional=True, tooltip=tooltips.SWITCH_STEP,
                     **advanced()),
        io.Combo.Input("memory_mode", options=list(MEMORY_MODES), default="frame_preservation", optional=True,
                       tooltip=tooltips.MEMORY_MODE),
        io.String.Input("save_path", default="", optional=True, tooltip=SAVE_PATH_TIP),
        io.Boolean.Input("resume", default=False, optional=True, tooltip=tooltips.RESUME, **advanced()),
        io.Combo.Input("colour_correction", options=["off", "on"], default="off", optional=True, tooltip=COLOUR_TIP),
        io.Float.Input("colour_strength", default=1.0, min=0.0, max=1.0, step=0.05, optional=True,
                       tooltip=tooltips.COLOUR_STRENGTH, **advanced()),
    ]


def with_history(frames: torch.Tensor, report: dict, include_history: bool, start_images, dropped: int, memory,
                 width: int, height: int) -> torch.Tensor:
    """The node's output frames: the history's (:func:`history_output`) before the generated ``frames``; ``report``
    gets how many frames came from where (and why the history is missing, when it is)."""
    report["start_frames_dropped"] = dropped
    history, reason = history_output(include_history, start_images, dropped, memory, width, height)
    report["history_frames_in_output"] = 0 if history is None else int(history.shape[0])
    if reason:
        report["history_frames_reason"] = reason
    if history is not None:
        frames = torch.cat([history, frames], dim=0)
    report["output_frames"] = int(frames.shape[0])
    return frames


class Storyboard(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FrameMemoryStoryboard",
            display_name="Storyboard (Memory)",
            category=CATEGORY,
            description=DESCRIPTION,
            inputs=[*model_inputs(), *video_inputs(), *sampler_inputs(),
                    io.Boolean.Input("include_history", default=True, tooltip=tooltips.INCLUDE_HISTORY),
                    *optional_inputs()],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Video frames [F, H, W, 3]."),
                MemoryType.Output(display_name="memory", tooltip="The final history with every segment encoded (memory_mode "
                                                                   "off: kept, not encoded), for chaining."),
                io.String.Output(display_name="report", tooltip="JSON: segments, memory tokens per segment, colour drift, "
                                                                "seams, seconds, peak RSS. A summary shows on the node."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, clip, memory_encoder, negative, storyboard, width, height, fps, segment_latent_frames,
                seed, steps, cfg, sampler_name, scheduler, include_history, start_images=None, memory=None,
                model_low_noise=None, switch_step=0, memory_mode="frame_preservation", save_path="", resume=False,
                colour_correction="off", colour_strength=1.0) -> io.NodeOutput:
        if clip is None:
            raise ValueError("the clip input is None: load a text encoder (for Wan: umt5_xxl with type 'wan')")
        start_images = None if start_images is None else check_frames("start_images", start_images)  # RGBA -> RGB
        shots = parse_storyboard(storyboard)
        # the run's input checks, once, here: before the starting clip is encoded (run_storyboard then skips them)
        check_run_inputs(model, vae, memory_encoder, shots, SamplerSettings(steps, cfg, sampler_name, scheduler, seed),
                         width, height, fps, segment_latent_frames, memory.history.num_frames if memory else 0,
                         memory_mode, 0 if start_images is None else int(start_images.shape[0]), include_history)
        if memory is not None:  # a latents-only memory into a mode that must encode it: named, before any work
            check_memory_mode(memory, memory_mode)
        save = memory_path(save_path) if save_path.strip() else None
        begin = storyboard_start(model, vae, memory_encoder, shots, memory, start_images, save, resume,
                                 segment_latent_frames, fps, width, height, model_low_noise, memory_mode)
        display = NodeDisplay()  # run-wide progress, previews and the report summary (nodes/progress_ui.py)
        interrupt = None if save else interrupted_path()
        try:
            frames, final, report = run_storyboard(
                model, vae, clip, memory_encoder, negative, shots,
                SamplerSettings(steps, cfg, sampler_name, scheduler, seed, switch_step),
                width, height, fps, segment_latent_frames, begin.start, model_low_noise, memory_mode,
                colour_correction=colour_strength if colour_correction == "on" else 0.0, save_path=save,
                interrupt_path=interrupt, progress=display.progress, inputs_checked=not begin.loaded)
        except comfy.model_management.InterruptProcessingException:
            saved = save or (interrupt if interrupt and os.path.isdir(interrupt) else None)
            display.show(cancel_text(display.finished, display.segments, saved, save is not None))
            raise
        frames = with_history(frames, report, include_history, start_images, begin.dropped, begin.memory, width, height)
        summary = report_summary(report)
        display.show(summary)
        # "text": as ComfyUI's PreviewText; web/framememory.js shows it again when the node's output comes from cache
        return io.NodeOutput(frames, final, json.dumps(report), ui={"framememory_report": [report], "text": [summary]})
