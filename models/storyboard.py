"""The storyboard loop (arXiv 2512.23851 Sec. 4, inference): generate a segment, append it to the history,
encode only the new part, repeat; the prompt of the shot at the current time conditions each segment.

The storyboard is one continuous video: every segment after the stream's first continues the latent stream
(16 frames per 4 latent frames on Wan), and its frames are decoded with the VAE's causal cache kept from the previous
segment (:class:`models.vae_stream.VideoStream`), so they equal a one-shot decode of the whole latent video.

A segment is sampled over :class:`StepRange` s: one for one model; for a Wan 2.2 A14B pair, the high-noise expert's
steps then the low-noise expert's, chained as the stock template's two KSamplerAdvanced nodes, each expert attending
to memory tokens of its own patch embedding (:mod:`models.experts`)."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

import comfy.model_management
import comfy.sample
import comfy.utils

from ..memory.frames import fit_frames, to_uint8
from ..memory.history import HistoryBuffer
from ..memory.storyboard import SegmentSchedule, Shot, seam_ratios, split_clip
from . import families
from .conds import attach_memory
from .colour_match import correct_segment, mean_std, record_colour
from .cross_attention import install_cross_attention
from .encoding import MemoryEncoder, MultiEncoder, encode_pending, rate_str
from .input_checks import (check_history_inputs, check_latent_finite, check_memory_matches, check_run_inputs,
                           check_save_path, memory_file_bytes)
from .memory_modes import ENCODED_MODES, MemoryInputs, memory_inputs, mode_config
from .state_readout import install_state_readout
from .experts import encode_pending_experts, expert_keys, expert_models, memory_token_count
from .run_progress import RunClock, RunProgress
from .resume import make_position, replay_segments, resume_position, run_settings, save_memory_file
from .telemetry import peak_rss_mb, phase, segment_record
from .vae_stream import CONTEXT_LATENTS, VideoStream

log = logging.getLogger("FrameMemory")

@dataclass(frozen=True)
class SamplerSettings:
    """What the stock KSampler takes: steps, cfg, sampler and scheduler names, base seed; plus, for a Wan 2.2 A14B
    expert pair, the step where the low-noise expert takes over (ignored with one model)."""

    steps: int = 20
    cfg: float = 5.0
    sampler_name: str = "uni_pc"
    scheduler: str = "simple"
    seed: int = 0
    switch_step: int = 0  # first step of the low-noise expert; 0: half the steps, rounded up (stock A14B: 10 of 20)

    def switch(self) -> int:
        """The step where the second expert starts, in 1..steps (``steps``: the second expert never runs)."""
        return min(self.switch_step or (self.steps + 1) // 2, self.steps)


@dataclass(frozen=True)
class StepRange:
    """One DiT's share of every segment's sampling: steps ``[start, end)`` of the schedule, as one KSamplerAdvanced
    of the stock Wan 2.2 A14B workflow runs them."""

    model: object  # the MODEL as given: its patch embedding makes this expert's LR-branch memory tokens
    patched: object  # the model with memory attention (memory_model)
    expert: int  # index of its memory tokens in the history (PartKey.expert); 0: the only or first model
    start: int
    end: int


@dataclass
class Memory:
    """What the MEMORY socket carries: the history buffer plus the encoder and video geometry it was made with, and
    the memory mode (:data:`models.memory_modes.MEMORY_MODES`; only frame_preservation and pack_forcing encode the
    history's spans into compressed tokens); from a Storyboard also where its run stands (``position``, a
    :class:`memory.memory_file.StoryboardPosition`: an unfinished one is resumed, :mod:`models.resume`)."""

    history: HistoryBuffer
    encoder: MemoryEncoder | MultiEncoder
    fps: float
    width: int
    height: int
    mode: str = "frame_preservation"
    position: object = None  # memory.memory_file.StoryboardPosition of the Storyboard run that made it, or None

    @property
    def encodes(self) -> bool:
        """Whether this mode needs the history's compressed memory tokens (frame_preservation, pack_forcing)."""
        return self.mode in ENCODED_MODES

    def tokens(self, model, expert: int = 0):
        """``(tokens [M, D], positions [M, 3])`` for the segment after the history (time relative to its end), or
        ``(None, None)``; the whole context of the mode (see :meth:`conds`)."""
        inputs = self.conds(model, expert)
        return inputs.tokens, inputs.positions

    def conds(self, model, expert: int = 0) -> MemoryInputs:
        """What the segment after the history attends to in this memory's mode (:func:`models.memory_modes.
        memory_inputs`: tokens, positions, the cross-attention add-on's hidden states, PackForcing's partition labels,
        VideoSSM's state), for ``conds.attach_memory``. ``model`` is the ``expert``-th DiT of the schedule (1: a
        Wan 2.2 A14B low-noise expert, whose tokens come from its own patch embedding). Empty in mode "off"."""
        return memory_inputs(model, self.encoder, self.history, expert, self.mode)

    def for_expert(self, model, expert: int, vae=None) -> "Memory":
        """This memory with the history also encoded for the ``expert``-th DiT of a schedule (1: the Wan 2.2 A14B
        low-noise expert ``model``, whose LR branch is its own patch embedding). ``self`` when already encoded for it;
        otherwise a new Memory (``self`` is not changed) whose spans are encoded from the kept latents and LR latents
        (no pixels or VAE needed; ``vae`` is used only for spans whose LR latent is still missing).

        Raises:
            ValueError: like :func:`models.encoding.encode_pending`.
        """
        keys = expert_keys(self.encoder, expert)
        if not self.encodes or all(k in s.encoded for s in self.history.segments for k in keys):
            return self
        history = self.history.copy()
        encode_pending(model, vae, self.encoder, history, expert=expert)
        return dataclasses.replace(self, history=history)

    def apply(self, model, positive: list, negative: list, expert: int = 0, vae=None) -> tuple[object, list, list]:
        """What Apply Memory does: ``(patched model, positive, negative)`` for the stock KSampler, the model
        patched for memory attention (:func:`memory_model`) and both conditionings carrying this memory. ``expert``
        1 gives the Wan 2.2 A14B low-noise expert ``model`` the tokens of its own patch embedding (for the second
        KSamplerAdvanced); see :meth:`for_expert`. Raises like :meth:`for_expert` and :meth:`MemoryEncoder.check`."""
        inp = self.for_expert(model, expert, vae).conds(model, expert)
        return (memory_model(model, self.encoder), attach_memory(positive, inp.tokens, inp.positions, inp.hidden, inp.extra),
                attach_memory(negative, inp.tokens, inp.positions, inp.hidden, inp.extra))


def memory_model(model, encoder):
    """Clone ``model`` with memory attention installed (``families.install_memory``; memory tokens at the timestep their
    config names, ``EncoderConfig.memory_timestep``) plus the encoder's cross-attention layers when it has that
    add-on. Raises like :meth:`MemoryEncoder.check`, and ValueError when a combination mixes timestep rules."""
    rules = {p.check(model).memory_timestep for p in encoder.parts}
    if len(rules) > 1:
        raise ValueError(f"the encoders of a combination give their memory tokens different timesteps {sorted(rules)}")
    patched = families.install_memory(model, memory_t0=rules.pop() == "zero")
    install_cross_attention(patched, encoder)
    install_state_readout(patched, encoder)
    return patched


def step_ranges(models: list, encoder, sampler: SamplerSettings) -> list[StepRange]:
    """One :class:`StepRange` per model: ``[0, steps)`` for one model, ``[0, switch)`` and ``[switch, steps)`` for a pair
    (``sampler.switch()``). Every model is patched for memory attention; raises like :func:`memory_model`."""
    bounds = [0, sampler.steps] if len(models) == 1 else [0, sampler.switch(), sampler.steps]
    return [StepRange(m, memory_model(m, encoder), e, bounds[e], bounds[e + 1]) for e, m in enumerate(models)]


def sample_steps(stage: StepRange, mem: Memory, positive: list, negative: list, latent: torch.Tensor, noise: torch.Tensor,
                 sampler: SamplerSettings, seed: int, first: bool, last: bool,
                 on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, int]:
    """Sample one stage's steps of ``latent`` ``[1, C, T, h, w]`` with this expert's memory in both conditionings,
    through ``comfy.sample.sample`` as KSamplerAdvanced does: the first stage adds ``noise`` at step 0, a later one
    continues from the leftover noise (``noise`` zeros, ``disable_noise``) at its ``start``; every stage but the last
    stops at its ``end`` with the leftover noise (return_with_leftover_noise), the last runs to the end of the
    schedule. A single stage is exactly the stock KSampler call. ``on_step(n)``, if given, is called after each step
    with the steps of the whole schedule done so far (1..steps); it then replaces the stock progress bar and latent
    previews (:func:`_progress_callback`). Returns ``(samples [1, C, T, h, w] CPU, M)``, M the
    memory tokens the expert attended to."""
    inp = mem.conds(stage.model, stage.expert)
    pos = attach_memory(positive, inp.tokens, inp.positions, inp.hidden, inp.extra)
    neg = attach_memory(negative, inp.tokens, inp.positions, inp.hidden, inp.extra)
    whole = None if first and last else stage.start  # progress over the whole schedule when sampling in stages
    samples = comfy.sample.sample(
        stage.patched, noise, sampler.steps, sampler.cfg, sampler.sampler_name, sampler.scheduler, pos, neg, latent,
        denoise=1.0, disable_noise=not first, start_step=None if first else stage.start,
        last_step=None if last else stage.end, force_full_denoise=False,
        callback=_progress_callback(stage.patched, sampler.steps, whole, on_step),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.cpu(), inp.attended


def sample_segment(stages: list[StepRange], mem: Memory, positive: list, negative: list, latent: torch.Tensor,
                   sampler: SamplerSettings, seed: int, on_step: Callable[[int], None] | None = None
                   ) -> tuple[torch.Tensor, int]:
    """Sample one segment from the empty ``latent`` ``[1, C, T, h, w]`` through every stage with steps
    (:func:`sample_steps`; a pair is the stock A14B chain of two KSamplerAdvanced nodes), noise from ``seed``;
    ``on_step`` as in :func:`sample_steps`.
    Returns ``(samples [1, C, T, h, w] float CPU, memory tokens of the first stage)``; raises ValueError when the
    samples hold NaN / inf (:func:`models.input_checks.check_latent_finite`)."""
    noise = comfy.sample.prepare_noise(latent, seed)
    run = [s for s in stages if s.start < s.end]  # a switch at ``steps`` leaves the low-noise expert nothing to do
    counts = []
    for k, stage in enumerate(run):
        first = k == 0
        step_noise = noise if first else torch.zeros(latent.shape, dtype=latent.dtype)
        latent, m = sample_steps(stage, mem, positive, negative, latent, step_noise, sampler, seed, first,
                                 k == len(run) - 1, on_step)
        counts.append(m)
    return check_latent_finite(latent, seed), counts[0]


class HistoryWriter:
    """Appends a clip to a memory segment by segment as one continuous VAE stream: each segment is VAE-encoded
    continuing the stream (:class:`~models.vae_stream.VideoStream`), appended to the history
    (``HistoryBuffer.append``, its pixels as uint8) and, in the modes that encode (``Memory.encodes``), encoded into
    memory tokens at once for every expert (``encode_pending_experts``), which drops its pixels as soon as every
    encoder's LR branch covers them. The one path of :func:`history_from_frames` (Encode History, the Storyboard's
    starting clip) and :func:`models.video_history.history_from_video` (Load Video as History): only one segment of
    fitted frames exists at a time. In the modes that encode nothing (off, sliding_window, video_ssm)
    ``keep_pixels=False`` drops every segment's pixels after appending: the history then holds latents only, and a
    later run in an encoding mode cannot encode it (it raises; read the clip again in that mode).

    Args:
        model / model_low_noise: the DiT(s) the memory is for (Wan 2.2 A14B pair: both, see :mod:`models.experts`).
        vae: their VAE. encoder: MemoryEncoder or MultiEncoder. latent_frames: T per segment.
        fps / width / height: the clip's frame rate and the size its frames are given at. memory: history to
        continue (not changed; the clip starts a new VAE stream); its size must be ``width x height``.
        mode: :data:`models.memory_modes.MEMORY_MODES`.
    Raises:
        ValueError: a bad fps or size (:mod:`models.input_checks`), a memory of another size, an encoder/DiT
        mismatch, experts of different families, or an unknown mode.
    """

    def __init__(self, model, vae, encoder: MemoryEncoder | MultiEncoder, latent_frames: int, fps: float, width: int,
                 height: int, memory: Memory | None = None, model_low_noise=None, mode: str = "frame_preservation",
                 keep_pixels: bool = True) -> None:
        from .input_checks import check_fps, check_frame_size, check_memory_matches

        fps = check_fps(fps)
        adapter = check_frame_size(model, width, height, encoder, mode)
        if memory is not None:
            check_memory_matches(memory, model, width, height, fps)
        self.models = expert_models(model, model_low_noise)
        for m in self.models:
            mode_config(encoder, m, mode)
        self.vae, self.latent_frames, self.keep_pixels = vae, latent_frames, keep_pixels
        self.time_stride = adapter.VAE_STRIDE[0]
        self.mem = Memory(memory.history.copy() if memory else HistoryBuffer(), encoder, fps, width, height, mode)
        self.stream = VideoStream(vae, "encode", time_stride=self.time_stride)

    @property
    def frames_needed(self) -> int:
        """Video frames of the next segment: ``ft * (T - 1) + 1`` for the clip's first, then ``ft * T``."""
        return self.stream.frames_for(self.latent_frames)

    def append(self, frames: torch.Tensor) -> None:
        """Encode and append the next segment, frames ``[F, height, width, 3]`` float 0..1 or uint8,
        ``F = frames_needed``. Checks the interrupt first. Raises ValueError for another frame count or size."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        want = (self.frames_needed, self.mem.height, self.mem.width, 3)
        if tuple(frames.shape) != want:
            raise ValueError(f"the next history segment needs frames {list(want)}, got {list(frames.shape)}")
        first = not self.stream.started
        pixels = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames
        self.mem.history.append(self.stream.encode(pixels), frames, stream_start=first)
        record_colour(self.mem.history, frames)  # the reference of the colour-drift correction (models/colour_match.py)
        if self.mem.encodes:
            encode_pending_experts(self.models, self.vae, self.mem.encoder, self.mem.history)
        elif not self.keep_pixels:
            self.mem.history.drop_frames([])  # no encoder needs them: every segment's pixels go


def history_from_frames(model, vae, encoder: MemoryEncoder | MultiEncoder, images: torch.Tensor, latent_frames: int,
                        fps: float, width: int, height: int, memory: Memory | None = None,
                        model_low_noise=None, mode: str = "frame_preservation") -> tuple[Memory, int]:
    """Turn a starting clip into history: frames are fitted to ``width x height``, cut into the segments of one
    continuous VAE stream (the first ``ft * (T - 1) + 1`` frames, then ``ft * T`` each; the oldest frames that do not
    fill a segment are dropped), encoded by the VAE as that stream (:class:`~models.vae_stream.VideoStream`) and
    into memory tokens, for ``model`` and, when given, the Wan 2.2 A14B low-noise expert ``model_low_noise`` (its
    own patch embedding), one segment at a time (:class:`HistoryWriter`). Appended to ``memory``, the clip starts a
    new VAE stream. ``mode`` "off" (see :data:`MEMORY_MODES`) skips the memory tokens: the history keeps latents and
    frames, unencoded. Returns ``(memory, dropped)``.

    Raises:
        ValueError: bad inputs (:func:`models.input_checks.check_history_inputs`: non-finite fps or frames, a size the
        family or memory cannot take), a clip shorter than one segment, a memory of another size, an encoder/DiT
        mismatch, experts of different families, or an unknown mode.
    """
    images = check_history_inputs(model, vae, encoder, images, latent_frames, fps, width, height, mode)  # RGB, finite
    writer = HistoryWriter(model, vae, encoder, latent_frames, fps, width, height, memory, model_low_noise, mode)
    skip, count = split_clip(int(images.shape[0]), latent_frames, writer.time_stride)
    pos = skip
    for _ in range(count):
        n = writer.frames_needed
        writer.append(fit_frames(images[pos:pos + n], width, height))  # one segment fitted at a time
        pos += n
    return writer.mem, skip


def decode_stream(vae, history: HistoryBuffer, time_stride: int) -> VideoStream:
    """A decode stream for the segments that follow ``history``: a fresh one for an empty history; otherwise one
    warmed up by decoding the history's last :data:`~models.vae_stream.CONTEXT_LATENTS` latent frames (the frames are
    discarded), so the first generated segment continues the history's stream (from there on exactly)."""
    stream = VideoStream(vae, "decode", time_stride=time_stride)
    tail = history.last_latents(CONTEXT_LATENTS)
    if tail is not None:
        stream.decode(tail[None])
    return stream


@dataclass
class _Run:
    """What every segment of one storyboard run shares."""

    models: list
    stages: list[StepRange]
    mem: Memory
    vae: object
    clip: object
    shots: list[Shot]
    negative: list
    sampler: SamplerSettings
    decoder: VideoStream
    latent_shape: tuple
    prompts: dict = dataclasses.field(default_factory=dict)
    colour: float = 0.0  # colour-drift correction strength (models/colour_match.py), 0: off
    clock: RunClock | None = None  # the run-wide fraction (models/run_progress.py), with ``on_progress``
    on_progress: Callable[[RunProgress], None] | None = None  # run_storyboard's ``progress``

    def tell(self, segment: int, phase_name: str, done: float, step: int = 0, **details) -> None:
        """Report where the run stands (:class:`RunProgress`) to ``on_progress``; nothing without one."""
        if self.on_progress is not None:
            self.on_progress(RunProgress(segment, self.clock.segments, phase_name, step, self.sampler.steps,
                                         self.clock.fraction(segment, phase_name, done), **details))


def colour_drift(before: torch.Tensor | None, after: torch.Tensor) -> float | None:
    """How far a new segment's mean colour lies from the history's before it: the CIE76 colour difference (Delta E*ab,
    Lab units; about 2.3 is just noticeable) of the two mean Lab colours, from the running
    :func:`models.colour_match.lab_stats` sums ``before`` and ``after`` the segment was added (``[3, 3]`` float64).
    None when the history had no colour yet (the first segment without a starting clip)."""
    if before is None:
        return None
    return round(float((mean_std(after - before)[0] - mean_std(before)[0]).norm()), 3)


def generate_segment(run: _Run, plan) -> tuple[torch.Tensor, dict]:
    """Sample, decode (continuing the stream), append and encode one segment, telling ``run`` where it stands after
    every step and phase. Returns ``(frames [F, H, W, 3] uint8 CPU, report record)``."""
    t0, stats = time.perf_counter(), {}
    if plan.shot not in run.prompts:
        run.prompts[plan.shot] = run.clip.encode_from_tokens_scheduled(run.clip.tokenize(run.shots[plan.shot].prompt))
    history = run.mem.history
    covered, total = history.encoded_frames, history.num_frames
    latent = comfy.sample.fix_empty_latent_channels(run.stages[0].patched, torch.zeros(run.latent_shape))
    steps = run.sampler.steps
    run.tell(plan.index, "sample", 0.0)
    on_step = None if run.on_progress is None else (
        lambda n: run.tell(plan.index, "sample", n / steps, step=n))
    with phase(stats, "sample"):
        samples, memory_tokens = sample_segment(run.stages, run.mem, run.prompts[plan.shot], run.negative, latent,
                                                run.sampler, run.sampler.seed + plan.index, on_step)
    memory = {"memory_tokens": memory_tokens, "history_seconds": covered / run.mem.fps}
    run.tell(plan.index, "decode", 0.0, step=steps, **memory)
    with phase(stats, "decode"):
        images = to_uint8(run.decoder.decode(samples))  # [F, H, W, 3], 4x less RAM than float32
    if images.shape[0] != plan.frames:
        raise RuntimeError(f"segment {plan.index} decoded to {images.shape[0]} frames, the plan has {plan.frames}")
    with phase(stats, "colour"):  # matched to the history's colours (strength 0: unchanged), then part of them
        images = correct_segment(history, images, run.colour)
        colour_before = history.colour_stats
        record_colour(history, images)
        drift = colour_drift(colour_before, history.colour_stats)
    history.append(samples, images, stream_start=not history.segments)
    if run.mem.encodes:  # mode "off": the history keeps the segment's latent and frames, no memory tokens
        run.tell(plan.index, "encode", 0.0, step=steps, **memory)
        with phase(stats, "encode"):
            encode_pending_experts(run.models, run.vae, run.mem.encoder, history)
    if run.clock is not None:
        run.clock.measured({"sample": stats["sample_s"], "decode": stats["decode_s"] + stats["colour_s"],
                            "encode": stats.get("encode_s", 0.0)})
    run.tell(plan.index, "segment done", 1.0, step=steps, frames=images, **memory)
    record = {"index": plan.index, "shot": plan.shot, "frames": int(images.shape[0]),
              "latent_frames": int(samples.shape[2]), "start_frame": total, "memory_tokens": memory_tokens,
              "history_frames_covered": covered, "history_frames_total": total, "colour_drift": drift,
              "seconds": round(time.perf_counter() - t0, 3), **segment_record(stats)}
    return images, record


def run_storyboard(model, vae, clip, encoder: MemoryEncoder | MultiEncoder, negative: list, shots: list[Shot],
                   sampler: SamplerSettings, width: int, height: int, fps: float, latent_frames: int,
                   start: Memory | None = None, model_low_noise=None, mode: str = "frame_preservation",
                   colour_correction: float = 0.0, save_path: str | None = None, interrupt_path: str | None = None,
                   progress: Callable[[RunProgress], None] | None = None) -> tuple[torch.Tensor, Memory, dict]:
    """Generate a storyboard segment by segment, as one continuous video, with memory of everything before each.

    Args:
        model: MODEL of a supported family (patched here). vae: its VAE. clip: text encoder (``tokenize`` /
        ``encode_from_tokens_scheduled``). negative: CONDITIONING. shots: parsed storyboard.
        latent_frames: T per segment (4 on Wan: 13 frames for the stream's first segment, then 16, 1 s at 16 fps).
        start: history to continue (e.g. a starting clip from :func:`history_from_frames`), or None. A memory with an
        unfinished position of this storyboard (a memory file, :func:`models.resume.load_memory_file`) is resumed:
        the run continues at its next segment with its seed, and returns the frames of the whole storyboard (the
        finished segments decoded again), the same frames as the run that was stopped would have returned.
        model_low_noise: Wan 2.2 A14B low-noise expert, or None (see :mod:`models.experts`).
        mode: :data:`models.memory_modes.MEMORY_MODES`; "off" samples every segment without memory tokens and encodes
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
    Returns:
        frames ``[F, height, width, 3]`` float32 0..1 (generated part only), the final Memory (every segment
        encoded, its ``position`` finished), and a report dict (segments, memory tokens per segment, colour drift per
        segment (:func:`colour_drift`), seam ratios, seconds, RSS).
    Raises:
        ValueError: bad inputs (:func:`models.input_checks.check_run_inputs`: non-finite fps / cfg, sizes, a storyboard
        over the length limit, a seed out of range, a size that does not fit in memory), encoder/DiT mismatch,
        experts of different families or an unknown mode; a resumed memory made with other settings or another
        encoder (:func:`models.resume.resume_position`); non-finite latents after sampling a segment;
        InterruptProcessingException when the user cancels.
    """
    adapter = check_run_inputs(model, vae, encoder, shots, sampler, width, height, fps, latent_frames,
                               start.history.num_frames if start else 0, mode)  # before any work: names the input
    if start is not None:  # size, fps, latent grid and token width: a memory of another run fails here, not mid-run
        check_memory_matches(start, model, width, height, fps)
    if not 0.0 <= colour_correction <= 1.0:
        raise ValueError(f"colour_correction must be a strength in 0..1, got {colour_correction}")
    models = expert_models(model, model_low_noise)
    for m in models:
        mode_config(encoder, m, mode)
    settings = run_settings(sampler, latent_frames, fps, width, height, mode, colour_correction)
    resume = resume_position(start, shots, settings, encoder)
    if save_path:  # before any work: a file in the way, no write permission, a full disk
        segments = (len(start.history.segments) if start else 0) + len(SegmentSchedule(
            shots, fps, latent_frames, adapter.VAE_STRIDE[0])) - (resume.next_segment if resume else 0)
        check_save_path(save_path, memory_file_bytes(model, encoder, mode, width, height, fps, latent_frames,
                                                     segments, len(models)))
    if resume is not None:  # the stopped run's seeds, whatever the seed widget says now
        sampler = dataclasses.replace(sampler, seed=resume.seed)
    stages = step_ranges(models, encoder, sampler)
    mem = Memory(start.history.copy() if start else HistoryBuffer(), encoder, fps, width, height, mode)  # checked by mode_config
    if mem.encodes:
        encode_pending_experts(models, vae, encoder, mem.history)
    run_start = resume.run_start_segment if resume else len(mem.history.segments)
    before = HistoryBuffer(mem.history.segments[:run_start])  # the history this storyboard started from
    ft, sh, sw = adapter.VAE_STRIDE
    run = _Run(models, stages, mem, vae, clip, shots, negative, sampler, decode_stream(vae, before, ft),
               (1, adapter.LATENT_CHANNELS, latent_frames, height // sh, width // sw), colour=colour_correction)
    plans = SegmentSchedule(shots, fps, latent_frames, ft, continues=bool(before.segments))  # lazy: O(1) memory
    colour_start = resume.colour_start if resume else (None if mem.history.colour_stats is None
                                                       else mem.history.colour_stats.tolist())
    done = resume.next_segment if resume else 0
    if progress is not None:
        run.clock, run.on_progress = RunClock(len(plans), sampler.steps), progress
        if done:  # resumed: where the run stands before the finished segments are decoded again
            run.tell(done, "sample", 0.0)
    out_frames = replay_segments(run.decoder, mem.history, run_start, plans[:done], colour_correction, colour_start)
    segments = [{"index": p.index, "shot": p.shot, "frames": p.frames, "latent_frames": p.latent_frames,
                 "start_frame": before.num_frames + p.start_frame, "replayed": True} for p in plans[:done]]
    mem.position = resume
    position = lambda k: make_position(plans, shots, sampler.seed, k, run_start, settings, colour_start)  # noqa: E731
    segments += _generate_segments(run, plans[done:], len(plans), out_frames, position, save_path, interrupt_path)
    frames = torch.cat(out_frames, dim=0)
    del out_frames
    report = storyboard_report(run, model, segments, frames, start)
    if resume is not None:
        report["resumed_at_segment"] = done
    return frames.float() / 255.0, mem, report


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


def storyboard_report(run: _Run, model, segments: list[dict], frames: torch.Tensor, start: Memory | None) -> dict:
    """The report of :func:`run_storyboard` (JSON-able)."""
    mem = run.mem
    report = {
        "model_family": families.family_for(model).FAMILY, "fps": mem.fps, "width": mem.width, "height": mem.height,
        "start_frames": segments[0]["start_frame"], "total_frames": int(frames.shape[0]),
        "rate": rate_str(model, mem.encoder), "encoder": mem.encoder.name, "memory_mode": mem.mode,
        "colour_correction": run.colour,
        "shots": [{"index": s.index, "prompt": s.prompt, "start_s": s.start_s, "duration_s": s.duration_s}
                  for s in run.shots],
        "segments": segments, "final_memory_tokens": memory_token_count(mem.history, mem.encoder),
        "seams": seam_ratios(frames, [s["start_frame"] - segments[0]["start_frame"] for s in segments[1:]]),
        "decode": "exact (VAE cache kept between segments)" if run.decoder.exact else
                  f"context ({CONTEXT_LATENTS} latent frames)",
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if len(run.stages) > 1:
        report["experts"] = [{"expert": name, "steps": [st.start, st.end]}
                             for name, st in zip(("high_noise", "low_noise"), run.stages)]
    return report


def _progress_callback(model, steps: int, offset: int | None = None, on_step: Callable[[int], None] | None = None):
    """The sampler's per-step callback. Without ``on_step``: the stock progress bar + latent previews
    (``latent_preview.prepare_callback``) when running in a server (None outside one: tests import comfy only).
    With ``on_step``: only ``on_step(n)`` after each step, ``n`` the schedule's steps done (``offset + step + 1``;
    ``offset``: the first step of a stage when a segment is sampled in stages); the caller then owns the progress
    display (the Storyboard's run-wide bar with each finished segment's decoded frames, nodes/progress_ui.py)."""
    if on_step is None:
        try:
            import latent_preview
            return latent_preview.prepare_callback(model, steps)
        except ImportError:
            return None

    def callback(step, x0, x, total_steps):
        on_step((offset or 0) + step + 1)
    return callback
