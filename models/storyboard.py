"""The storyboard loop (arXiv 2512.23851 Sec. 4, inference): for each segment, the memory of the history conditions
its sampling, its frames are decoded, it is appended to the history, and only the new part is encoded; the prompt of
the shot at the current time conditions each segment.

The storyboard is one continuous video: every segment after the stream's first continues the latent stream
(16 frames per 4 latent frames on Wan), and its frames are decoded with the VAE's causal cache kept from the previous
segment (:mod:`models.segment_decoder`), so they equal a one-shot decode of the whole latent video. The parts:
sampling :mod:`models.segment_sampler`, history :mod:`models.history_writer`, decode :mod:`models.segment_decoder`,
report :mod:`models.storyboard_report`, resuming :mod:`models.resume`; the encoder is bound to the run's DiTs once
(:func:`models.experts.bind_encoder`)."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

import comfy.model_management
import comfy.sample

from ..memory.history import HistoryBuffer
from ..memory.storyboard import SegmentSchedule, Shot
from . import families
from .encoding import MemoryEncoder, MultiEncoder
from .experts import BoundEncoder, bind_encoder, encode_pending_experts
from .history_writer import append_generated
from .input_checks import check_memory_matches, check_run_inputs, check_save_path, memory_file_bytes
from .memory_value import Memory
from .resume import make_position, replay_segments, resume_position, run_settings, save_memory_file
from .run_progress import RunClock, RunProgress
from .segment_decoder import decode_description, decode_segment, decode_stream
from .segment_sampler import SamplerSettings, StepRange, sample_segment, step_ranges
from .storyboard_report import generated_record, replayed_records, storyboard_report
from .telemetry import phase

log = logging.getLogger("FrameMemory")


@dataclass
class _Run:
    """What every segment of one storyboard run shares."""

    bound: BoundEncoder  # the encoder bound to the run's DiTs and VAE, once
    stages: list[StepRange]
    mem: Memory
    clip: object
    shots: list[Shot]
    negative: list
    sampler: SamplerSettings
    decoder: object = None  # the run's decode stream (models.segment_decoder.decode_stream)
    latent_shape: tuple = ()
    prompts: dict = dataclasses.field(default_factory=dict)
    colour: float = 0.0  # colour-drift correction strength (models/colour_match.py), 0: off
    clock: RunClock | None = None  # the run-wide fraction (models/run_progress.py), with ``on_progress``
    on_progress: Callable[[RunProgress], None] | None = None  # run_storyboard's ``progress``

    def tell(self, segment: int, phase_name: str, done: float, step: int = 0, **details) -> None:
        """Report where the run stands (:class:`RunProgress`) to ``on_progress``; nothing without one."""
        if self.on_progress is not None:
            self.on_progress(RunProgress(segment, self.clock.segments, phase_name, step, self.sampler.steps,
                                         self.clock.fraction(segment, phase_name, done), **details))

    def positive(self, shot: int) -> list:
        """The CONDITIONING of shot ``shot``'s prompt, encoded once per run."""
        if shot not in self.prompts:
            self.prompts[shot] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(self.shots[shot].prompt))
        return self.prompts[shot]


def generate_segment(run: _Run, plan) -> tuple[torch.Tensor, dict]:
    """One segment, as the paper's inference paragraph has it: sample it with the memory of the history, decode it
    (continuing the stream), append it to the history and encode only the new part; ``run`` is told where it stands
    after every step and phase. Returns ``(frames [F, H, W, 3] uint8 CPU, report record)``."""
    t0, stats, steps = time.perf_counter(), {}, run.sampler.steps
    history = run.mem.history
    covered, total = history.encoded_frames, history.num_frames
    samples, memory_tokens = _sample(run, plan, stats)
    memory = {"memory_tokens": memory_tokens, "history_seconds": covered / run.mem.fps}
    run.tell(plan.index, "decode", 0.0, step=steps, **memory)
    with phase(stats, "decode"):
        images = decode_segment(run.decoder, samples, plan)
    images, drift = append_generated(history, samples, images, run.colour, stats)
    if run.mem.encodes:  # mode "off": the history keeps the segment's latent and frames, no memory tokens
        run.tell(plan.index, "encode", 0.0, step=steps, **memory)
        with phase(stats, "encode"):
            encode_pending_experts(run.bound.models, run.bound.vae, run.mem.encoder, history)
    if run.clock is not None:
        run.clock.measured({"sample": stats["sample_s"], "decode": stats["decode_s"] + stats["colour_s"],
                            "encode": stats.get("encode_s", 0.0)})
    run.tell(plan.index, "segment done", 1.0, step=steps, frames=images, **memory)
    record = generated_record(plan, images, samples, covered, total, memory_tokens, drift, time.perf_counter() - t0,
                              stats)
    return images, record


def _sample(run: _Run, plan, stats: dict) -> tuple[torch.Tensor, int]:
    """Sample ``plan``'s segment from an empty latent with the memory of the history (timed as ``sample_s`` in
    ``stats``). Returns ``(samples [1, C, T, h, w] CPU, memory tokens attended to)``."""
    positive = run.positive(plan.shot)
    latent = comfy.sample.fix_empty_latent_channels(run.stages[0].patched, torch.zeros(run.latent_shape))
    steps = run.sampler.steps
    run.tell(plan.index, "sample", 0.0)
    on_step = None if run.on_progress is None else (
        lambda n: run.tell(plan.index, "sample", n / steps, step=n))
    with phase(stats, "sample"):
        return sample_segment(run.stages, run.mem, positive, run.negative, latent, run.sampler,
                              run.sampler.seed + plan.index, on_step)


def run_storyboard(model, vae, clip, encoder: MemoryEncoder | MultiEncoder, negative: list, shots: list[Shot],
                   sampler: SamplerSettings, width: int, height: int, fps: float, latent_frames: int,
                   start: Memory | None = None, model_low_noise=None, mode: str = "frame_preservation",
                   colour_correction: float = 0.0, save_path: str | None = None, interrupt_path: str | None = None,
                   progress: Callable[[RunProgress], None] | None = None,
                   inputs_checked: bool = False) -> tuple[torch.Tensor, Memory, dict]:
    """Generate a storyboard segment by segment, as one continuous video, with memory of everything before each.

    Args:
        model: MODEL of a supported family (patched here). vae: its VAE. clip: text encoder (``tokenize`` /
        ``encode_from_tokens_scheduled``). negative: CONDITIONING. shots: parsed storyboard.
        latent_frames: T per segment (4 on Wan: 13 frames for the stream's first segment, then 16, 1 s at 16 fps).
        start: history to continue (a starting clip: :func:`models.history_writer.history_from_frames`), or None. A
        memory with an unfinished position of this storyboard (a memory file, :func:`models.resume.load_memory_file`)
        is resumed: the run continues at its next segment with its seed, and returns the frames of the whole
        storyboard (the finished segments decoded again), the same frames as the stopped run would have returned.
        model_low_noise: Wan 2.2 A14B low-noise expert, or None (see :mod:`models.experts`).
        mode: :data:`memory.designs.MEMORY_MODES`; "off" samples every segment without memory tokens and encodes
        nothing (the history still gives the output and the decode stream), the baseline for what memory buys.
        colour_correction: strength 0..1 of the colour-drift correction (:mod:`models.colour_match`: each segment's
        Lab mean / std matched to the history's before it is appended); 0 = off.
        save_path: memory folder (memory/memory_file.py) appended to after every segment (crash-safe), or None;
        checked before the first segment (:func:`models.input_checks.check_save_path`).
        interrupt_path: memory file written with the finished segments when the run is interrupted (not needed with
        ``save_path``, whose file already holds them), or None: an interrupt then loses them.
        progress: called with a :class:`models.run_progress.RunProgress` (the run-wide fraction through every
        segment's sampling steps, decode and encode; segments resumed from a memory file count as done; the memory
        tokens and history seconds of the segment; its decoded frames when it is done): once before the first segment,
        after every sampling step and at each phase of a segment. It replaces the stock per-segment progress bar and
        latent previews (the caller shows its own: the decoded frames). None: no calls, the stock bar and previews.
        inputs_checked: the caller ran :func:`models.input_checks.check_run_inputs` for this run and ``start`` (the
        Storyboard node, before it encodes a starting clip), so the checks run once per run; False: they run here.
    Returns:
        frames ``[F, height, width, 3]`` float32 0..1 (generated part only), the final Memory (every segment
        encoded, its ``position`` finished), and a report dict (segments, memory tokens per segment, colour drift per
        segment (:func:`models.history_writer.colour_drift`), seam ratios, seconds, RSS).
    Raises:
        ValueError: bad inputs (:func:`models.input_checks.check_run_inputs`: non-finite fps / cfg, sizes, a storyboard
        over the length limit, a seed out of range, a size that does not fit in memory), encoder/DiT mismatch,
        experts of different families or an unknown mode; a resumed memory made with other settings or another
        encoder (:func:`models.resume.resume_position`); non-finite latents after sampling a segment;
        InterruptProcessingException when the user cancels.
    """
    adapter = _check_run(model, vae, encoder, shots, sampler, width, height, fps, latent_frames, start, mode,
                         colour_correction, inputs_checked)
    bound = bind_encoder(model, model_low_noise, vae, encoder, mode)
    settings = run_settings(sampler, latent_frames, fps, width, height, mode, colour_correction)
    resume = resume_position(start, shots, settings, encoder)
    _check_save_path(save_path, bound, shots, start, resume, width, height, fps, latent_frames, adapter)
    if resume is not None:  # the stopped run's seeds, whatever the seed widget says now
        sampler = dataclasses.replace(sampler, seed=resume.seed)
    run = _Run(bound, step_ranges(bound, sampler), _start_memory(bound, start, fps, width, height), clip, shots,
               negative, sampler, colour=colour_correction)
    frames, segments = _run_segments(run, adapter, latent_frames, resume, settings, save_path, interrupt_path,
                                     progress)
    report = storyboard_report(model, run.mem, shots, run.stages, colour_correction, decode_description(run.decoder),
                               segments, frames)
    if resume is not None:
        report["resumed_at_segment"] = resume.next_segment
    return frames.float() / 255.0, run.mem, report


def _check_run(model, vae, encoder, shots: list[Shot], sampler: SamplerSettings, width: int, height: int, fps: float,
               latent_frames: int, start: Memory | None, mode: str, colour_correction: float, inputs_checked: bool):
    """The checks of a run, before any work: its inputs (:func:`models.input_checks.check_run_inputs`, unless the
    caller ran them: ``inputs_checked``), that ``start`` fits it (size, fps, latent grid and token width: a memory of
    another run fails here, not mid-run) and the colour strength. Returns the family adapter."""
    history_frames = start.history.num_frames if start else 0
    adapter = families.family_for(model) if inputs_checked else check_run_inputs(
        model, vae, encoder, shots, sampler, width, height, fps, latent_frames, history_frames, mode)  # names the input
    if start is not None:
        check_memory_matches(start, model, width, height, fps)
    if not 0.0 <= colour_correction <= 1.0:
        raise ValueError(f"colour_correction must be a strength in 0..1, got {colour_correction}")
    return adapter


def _check_save_path(save_path: str | None, bound: BoundEncoder, shots: list[Shot], start: Memory | None, resume,
                     width: int, height: int, fps: float, latent_frames: int, adapter) -> None:
    """Before any work, refuse a ``save_path`` the run could not write its memory to (a file in the way, no write
    permission, a full disk: :func:`models.input_checks.check_save_path`), sized for every segment the file will hold
    at the run's end. Nothing without a ``save_path``."""
    if not save_path:
        return
    segments = (len(start.history.segments) if start else 0) + len(SegmentSchedule(
        shots, fps, latent_frames, adapter.VAE_STRIDE[0])) - (resume.next_segment if resume else 0)
    model = bound.models[0]
    check_save_path(save_path, memory_file_bytes(model, bound.encoder, bound.mode, width, height, fps, latent_frames,
                                                 segments, len(bound.models)))


def _start_memory(bound: BoundEncoder, start: Memory | None, fps: float, width: int, height: int) -> Memory:
    """The run's Memory: a copy of ``start``'s history (or an empty one), its segments not yet encoded for the run's
    encoder and DiTs encoded now (from the kept latents and LR latents: a memory made for another encoder of the
    same rate, or with one expert of a pair)."""
    mem = Memory(start.history.copy() if start else HistoryBuffer(), bound.encoder, fps, width, height, bound.mode)
    if mem.encodes:
        encode_pending_experts(bound.models, bound.vae, bound.encoder, mem.history)
    return mem


def _run_segments(run: _Run, adapter, latent_frames: int, resume, settings: dict, save_path: str | None,
                  interrupt_path: str | None, progress) -> tuple[torch.Tensor, list[dict]]:
    """The run's segments: those a resumed run finished decoded again (:func:`models.resume.replay_segments`), then
    the rest generated. Returns ``(frames [F, H, W, 3] uint8, report records)``."""
    mem = run.mem
    run_start = resume.run_start_segment if resume else len(mem.history.segments)
    before = HistoryBuffer(mem.history.segments[:run_start])  # the history this storyboard started from
    ft, sh, sw = adapter.VAE_STRIDE
    run.decoder = decode_stream(run.bound.vae, before, ft)
    run.latent_shape = (1, adapter.LATENT_CHANNELS, latent_frames, mem.height // sh, mem.width // sw)
    plans = SegmentSchedule(run.shots, mem.fps, latent_frames, ft, continues=bool(before.segments))  # lazy: O(1)
    colour_start = resume.colour_start if resume else (None if mem.history.colour_stats is None
                                                       else mem.history.colour_stats.tolist())
    done = resume.next_segment if resume else 0
    if progress is not None:
        run.clock, run.on_progress = RunClock(len(plans), run.sampler.steps), progress
        if done:  # resumed: where the run stands before the finished segments are decoded again
            run.tell(done, "sample", 0.0)
    out_frames = replay_segments(run.decoder, mem.history, run_start, plans[:done], run.colour, colour_start)
    segments = replayed_records(plans[:done], before.num_frames)
    mem.position = resume
    position = lambda k: make_position(plans, run.shots, run.sampler.seed, k, run_start, settings,  # noqa: E731
                                       colour_start)
    segments += _generate_segments(run, plans[done:], len(plans), out_frames, position, save_path, interrupt_path)
    frames = torch.cat(out_frames, dim=0)
    del out_frames
    return frames, segments


def _generate_segments(run: _Run, plans, total: int, out_frames: list, position, save_path: str | None,
                       interrupt_path: str | None) -> list[dict]:
    """Generate ``plans`` (appending their frames to ``out_frames``); after each, ``run.mem.position`` becomes
    ``position(segments done)`` and the memory is written to ``save_path``. Interrupted, the memory as of the last
    finished segment is written to ``interrupt_path`` (when no ``save_path`` holds it already), then the interrupt
    goes on. Returns the segments' report records."""
    mem, segments, finished = run.mem, [], None
    try:
        for plan in plans:
            comfy.model_management.throw_exception_if_processing_interrupted()
            images, record = generate_segment(run, plan)
            out_frames.append(images)
            segments.append(record)
            mem.position = position(plan.index + 1)
            if save_path:
                saved = save_memory_file(save_path, mem)  # appends this segment (memory/memory_file.py)
                record.update(memory_file_bytes=saved["bytes"], memory_file_s=saved["seconds"])
            elif interrupt_path:
                finished = dataclasses.replace(mem, history=mem.history.copy())  # cheap: segments are shared
            log.info("FrameMemory: segment %d/%d (shot %d) %d frames, %d memory tokens, %.1fs", plan.index + 1,
                     total, plan.shot, images.shape[0], record["memory_tokens"], record["seconds"])
    except comfy.model_management.InterruptProcessingException:
        if finished is not None:
            save_memory_file(interrupt_path, finished)
            log.warning("FrameMemory: interrupted; the %d finished segments are saved in %s (Load Memory -> the "
                        "Storyboard's memory input continues the run)", finished.position.next_segment, interrupt_path)
        elif save_path and mem.position is not None:
            log.warning("FrameMemory: interrupted; the finished segments are in %s", save_path)
        raise
    return segments


__all__ = ["run_storyboard", "generate_segment"]
