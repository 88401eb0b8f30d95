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

import torch

import comfy.model_management
import comfy.sample
import comfy.utils

from ..memory.frames import fit_frames, to_uint8
from ..memory.history import HistoryBuffer
from ..memory.storyboard import Shot, plan_segments, seam_ratios, split_clip
from . import families
from .conds import attach_memory
from .cross_attention import install_cross_attention
from .encoding import MemoryEncoder, MultiEncoder, encode_pending, rate_str
from .memory_modes import ENCODED_MODES, MemoryInputs, memory_inputs, mode_config
from .state_readout import install_state_readout
from .experts import encode_pending_experts, expert_keys, expert_models, memory_token_count
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
    history's spans into compressed tokens)."""

    history: HistoryBuffer
    encoder: MemoryEncoder | MultiEncoder
    fps: float
    width: int
    height: int
    mode: str = "frame_preservation"

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
    """Clone ``model`` with memory attention installed (``families.patch_model``; memory tokens at the timestep their
    config names, ``EncoderConfig.memory_timestep``) plus the encoder's cross-attention layers when it has that
    add-on. Raises like :meth:`MemoryEncoder.check`, and ValueError when a combination mixes timestep rules."""
    rules = {p.check(model).memory_timestep for p in encoder.parts}
    if len(rules) > 1:
        raise ValueError(f"the encoders of a combination give their memory tokens different timesteps {sorted(rules)}")
    patched = families.patch_model(model, memory_t0=rules.pop() == "zero")
    install_cross_attention(patched, encoder)
    install_state_readout(patched, encoder)
    return patched


def size_multiple(model) -> tuple[int, int]:
    """Pixels per DiT token ``(width, height)`` of the model's family (VAE stride x patch size): 16 for Wan 2.1 and
    HunyuanVideo, 32 for Wan 2.2 TI2V 5B; frame sizes must be multiples of it. Raises TypeError (unsupported)."""
    adapter = families.adapter_for(model)
    return adapter.VAE_STRIDE[2] * adapter.PATCH_SIZE[2], adapter.VAE_STRIDE[1] * adapter.PATCH_SIZE[1]


def check_size(model, width: int, height: int):
    """Return the model's family adapter; raise ValueError unless width and height are multiples of
    :func:`size_multiple`."""
    adapter = families.adapter_for(model)
    mw, mh = size_multiple(model)
    if width % mw or height % mh:
        raise ValueError(f"width and height must be multiples of {mw}x{mh} for {adapter.FAMILY}, got {width}x{height}")
    return adapter


def step_ranges(models: list, encoder, sampler: SamplerSettings) -> list[StepRange]:
    """One :class:`StepRange` per model: ``[0, steps)`` for one model, ``[0, switch)`` and ``[switch, steps)`` for a pair
    (``sampler.switch()``). Every model is patched for memory attention; raises like :func:`memory_model`."""
    bounds = [0, sampler.steps] if len(models) == 1 else [0, sampler.switch(), sampler.steps]
    return [StepRange(m, memory_model(m, encoder), e, bounds[e], bounds[e + 1]) for e, m in enumerate(models)]


def sample_steps(stage: StepRange, mem: Memory, positive: list, negative: list, latent: torch.Tensor, noise: torch.Tensor,
                 sampler: SamplerSettings, seed: int, first: bool, last: bool) -> tuple[torch.Tensor, int]:
    """Sample one stage's steps of ``latent`` ``[1, C, T, h, w]`` with this expert's memory in both conditionings,
    through ``comfy.sample.sample`` as KSamplerAdvanced does: the first stage adds ``noise`` at step 0, a later one
    continues from the leftover noise (``noise`` zeros, ``disable_noise``) at its ``start``; every stage but the last
    stops at its ``end`` with the leftover noise (return_with_leftover_noise), the last runs to the end of the
    schedule. A single stage is exactly the stock KSampler call. Returns ``(samples [1, C, T, h, w] CPU, M)``, M the
    memory tokens the expert attended to."""
    inp = mem.conds(stage.model, stage.expert)
    pos = attach_memory(positive, inp.tokens, inp.positions, inp.hidden, inp.extra)
    neg = attach_memory(negative, inp.tokens, inp.positions, inp.hidden, inp.extra)
    whole = None if first and last else stage.start  # progress over the whole schedule when sampling in stages
    samples = comfy.sample.sample(
        stage.patched, noise, sampler.steps, sampler.cfg, sampler.sampler_name, sampler.scheduler, pos, neg, latent,
        denoise=1.0, disable_noise=not first, start_step=None if first else stage.start,
        last_step=None if last else stage.end, force_full_denoise=False,
        callback=_progress_callback(stage.patched, sampler.steps, whole),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.cpu(), inp.count


def sample_segment(stages: list[StepRange], mem: Memory, positive: list, negative: list, latent: torch.Tensor,
                   sampler: SamplerSettings, seed: int) -> tuple[torch.Tensor, int]:
    """Sample one segment from the empty ``latent`` ``[1, C, T, h, w]`` through every stage with steps
    (:func:`sample_steps`; a pair is the stock A14B chain of two KSamplerAdvanced nodes), noise from ``seed``.
    Returns ``(samples [1, C, T, h, w] float CPU, memory tokens of the first stage)``."""
    noise = comfy.sample.prepare_noise(latent, seed)
    run = [s for s in stages if s.start < s.end]  # a switch at ``steps`` leaves the low-noise expert nothing to do
    counts = []
    for k, stage in enumerate(run):
        first = k == 0
        step_noise = noise if first else torch.zeros(latent.shape, dtype=latent.dtype)
        latent, m = sample_steps(stage, mem, positive, negative, latent, step_noise, sampler, seed, first, k == len(run) - 1)
        counts.append(m)
    return latent, counts[0]


def history_from_frames(model, vae, encoder: MemoryEncoder | MultiEncoder, images: torch.Tensor, latent_frames: int,
                        fps: float, width: int, height: int, memory: Memory | None = None,
                        model_low_noise=None, mode: str = "frame_preservation") -> tuple[Memory, int]:
    """Turn a starting clip into history: frames are fitted to ``width x height``, cut into the segments of one
    continuous VAE stream (the first ``ft * (T - 1) + 1`` frames, then ``ft * T`` each; the oldest frames that do not
    fill a segment are dropped), encoded by the VAE as that stream (:class:`~models.vae_stream.VideoStream`) and
    into memory tokens, for ``model`` and, when given, the Wan 2.2 A14B low-noise expert ``model_low_noise`` (its
    own patch embedding). Appended to ``memory``, the clip starts a new VAE stream. ``mode`` "off" (see
    :data:`MEMORY_MODES`) skips the memory tokens: the history keeps latents and frames, unencoded.
    Returns ``(memory, dropped)``.

    Raises:
        ValueError: a size the family cannot take, a clip shorter than one segment, an encoder/DiT mismatch,
        experts of different families, or an unknown mode.
    """
    adapter = check_size(model, width, height)
    models = expert_models(model, model_low_noise)
    for m in models:
        mode_config(encoder, m, mode)
    ft = adapter.VAE_STRIDE[0]
    skip, count = split_clip(int(images.shape[0]), latent_frames, ft)
    frames = fit_frames(images[skip:, ..., :3], width, height)
    mem = Memory(memory.history.copy() if memory else HistoryBuffer(), encoder, fps, width, height, mode)
    stream, pos = VideoStream(vae, "encode", time_stride=ft), 0
    for _ in range(count):
        comfy.model_management.throw_exception_if_processing_interrupted()
        n = stream.frames_for(latent_frames)
        chunk, first = frames[pos:pos + n], not stream.started
        pos += n
        mem.history.append(stream.encode(chunk), chunk, stream_start=first)
    if mem.encodes:
        encode_pending_experts(models, vae, encoder, mem.history)
    return mem, skip


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


def generate_segment(run: _Run, plan) -> tuple[torch.Tensor, dict]:
    """Sample, decode (continuing the stream), append and encode one segment. Returns ``(frames [F, H, W, 3] uint8
    CPU, report record)``."""
    t0, stats = time.perf_counter(), {}
    if plan.shot not in run.prompts:
        run.prompts[plan.shot] = run.clip.encode_from_tokens_scheduled(run.clip.tokenize(run.shots[plan.shot].prompt))
    history = run.mem.history
    covered, total = history.encoded_frames, history.num_frames
    latent = comfy.sample.fix_empty_latent_channels(run.stages[0].patched, torch.zeros(run.latent_shape))
    with phase(stats, "sample"):
        samples, memory_tokens = sample_segment(run.stages, run.mem, run.prompts[plan.shot], run.negative, latent,
                                                run.sampler, run.sampler.seed + plan.index)
    with phase(stats, "decode"):
        images = to_uint8(run.decoder.decode(samples))  # [F, H, W, 3], 4x less RAM than float32
    if images.shape[0] != plan.frames:
        raise RuntimeError(f"segment {plan.index} decoded to {images.shape[0]} frames, the plan has {plan.frames}")
    history.append(samples, images, stream_start=not history.segments)
    if run.mem.encodes:  # mode "off": the history keeps the segment's latent and frames, no memory tokens
        with phase(stats, "encode"):
            encode_pending_experts(run.models, run.vae, run.mem.encoder, history)
    record = {"index": plan.index, "shot": plan.shot, "frames": int(images.shape[0]),
              "latent_frames": int(samples.shape[2]), "start_frame": total, "memory_tokens": memory_tokens,
              "history_frames_covered": covered, "history_frames_total": total,
              "seconds": round(time.perf_counter() - t0, 3), **segment_record(stats)}
    return images, record


def run_storyboard(model, vae, clip, encoder: MemoryEncoder | MultiEncoder, negative: list, shots: list[Shot],
                   sampler: SamplerSettings, width: int, height: int, fps: float, latent_frames: int,
                   start: Memory | None = None, model_low_noise=None,
                   mode: str = "frame_preservation") -> tuple[torch.Tensor, Memory, dict]:
    """Generate a storyboard segment by segment, as one continuous video, with memory of everything before each.

    Args:
        model: MODEL of a supported family (patched here). vae: its VAE. clip: text encoder (``tokenize`` /
        ``encode_from_tokens_scheduled``). negative: CONDITIONING. shots: parsed storyboard.
        latent_frames: T per segment (4 on Wan: 13 frames for the stream's first segment, then 16, 1 s at 16 fps).
        start: history to continue (e.g. a starting clip from :func:`history_from_frames`), or None.
        model_low_noise: Wan 2.2 A14B low-noise expert, or None (see :mod:`models.experts`).
        mode: :data:`models.memory_modes.MEMORY_MODES`; "off" samples every segment without memory tokens and encodes
        nothing (the history still gives the output and the decode stream), the baseline for what memory buys.
    Returns:
        frames ``[F, height, width, 3]`` float32 0..1 (generated part only), the final Memory (every segment
        encoded), and a report dict (segments, memory tokens per segment, seam ratios, seconds, RSS).
    Raises:
        ValueError: bad sizes, encoder/DiT mismatch, experts of different families or an unknown mode;
        InterruptProcessingException when the user cancels.
    """
    adapter = check_size(model, width, height)
    if start is not None and (start.width, start.height) != (width, height):
        raise ValueError(f"the history is {start.width}x{start.height} but the storyboard is {width}x{height}")
    models = expert_models(model, model_low_noise)
    for m in models:
        mode_config(encoder, m, mode)
    stages = step_ranges(models, encoder, sampler)
    mem = Memory(start.history.copy() if start else HistoryBuffer(), encoder, fps, width, height, mode)  # checked by mode_config
    if mem.encodes:
        encode_pending_experts(models, vae, encoder, mem.history)
    ft, sh, sw = adapter.VAE_STRIDE
    run = _Run(models, stages, mem, vae, clip, shots, negative, sampler, decode_stream(vae, mem.history, ft),
               (1, adapter.LATENT_CHANNELS, latent_frames, height // sh, width // sw))
    plans = plan_segments(shots, fps, latent_frames, ft, continues=bool(mem.history.segments))
    out_frames, segments = [], []
    for plan in plans:
        comfy.model_management.throw_exception_if_processing_interrupted()
        images, record = generate_segment(run, plan)
        out_frames.append(images)
        segments.append(record)
        log.info("FrameMemory: segment %d/%d (shot %d) %d frames, %d memory tokens, %.1fs", plan.index + 1,
                 len(plans), plan.shot, images.shape[0], record["memory_tokens"], record["seconds"])
    frames = torch.cat(out_frames, dim=0)
    del out_frames
    report = storyboard_report(run, model, segments, frames, start)
    return frames.float() / 255.0, mem, report


def storyboard_report(run: _Run, model, segments: list[dict], frames: torch.Tensor, start: Memory | None) -> dict:
    """The report of :func:`run_storyboard` (JSON-able)."""
    mem = run.mem
    report = {
        "model_family": families.adapter_for(model).FAMILY, "fps": mem.fps, "width": mem.width, "height": mem.height,
        "start_frames": start.history.num_frames if start else 0, "total_frames": int(frames.shape[0]),
        "rate": rate_str(model, mem.encoder), "encoder": mem.encoder.name, "memory_mode": mem.mode,
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


def _progress_callback(model, steps: int, offset: int | None = None):
    """Stock progress bar + latent previews (``latent_preview.prepare_callback``) when running in a server. ``offset``:
    the first step of a stage when a segment is sampled in stages; progress then runs over the whole schedule."""
    try:
        import latent_preview
    except ImportError:  # outside a ComfyUI server (tests import comfy only)
        return None
    callback = latent_preview.prepare_callback(model, steps)
    if offset is None:
        return callback
    return lambda step, x0, x, total_steps: callback(offset + step, x0, x, steps)
