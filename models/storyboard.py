"""The storyboard loop (arXiv 2512.23851 Sec. 4, inference): generate a segment, append it to the history,
encode only the new part, repeat; the prompt of the shot at the current time conditions each segment.

A segment is sampled in :class:`Stage` s: one for one model; for a Wan 2.2 A14B pair, the high-noise expert's steps
then the low-noise expert's, chained as the stock template's two KSamplerAdvanced nodes, each expert attending to
memory tokens of its own patch embedding (``encoding.encode_pending_experts``)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.sample
import comfy.utils

from ..memory.history import HistoryBuffer
from ..memory.storyboard import Shot, plan_segments, segment_frames, split_clip
from . import families
from .conds import attach_memory
from .encoding import (MemoryEncoder, MultiEncoder, encode_pending, encode_pending_experts, expert_keys,
                       install_cross_attention, memory_hidden, memory_token_count, next_memory, rate_str,
                       restore_frames)

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
class Stage:
    """One DiT's share of every segment's sampling: steps ``[start, end)`` of the schedule, as one KSamplerAdvanced
    of the stock Wan 2.2 A14B workflow runs them."""

    model: object  # the MODEL as given: its patch embedding makes this expert's LR-branch memory tokens
    patched: object  # the model with memory attention (memory_model)
    expert: int  # index of its memory tokens in the history (encoding.part_key); 0: the only or first model
    start: int
    end: int


@dataclass
class Memory:
    """What the MEMORY socket carries: the history buffer plus the encoder and video geometry it was made with."""

    history: HistoryBuffer
    encoder: MemoryEncoder | MultiEncoder
    fps: float
    width: int
    height: int

    def tokens(self, model, expert: int = 0):
        """``(tokens [M, D], positions [M, 3])`` for the segment after the history (time relative to its end),
        including the overlap-window add-on, or ``(None, None)``. With the cross-attention add-on use :meth:`conds`.
        ``model`` is the ``expert``-th DiT of the schedule (1: a Wan 2.2 A14B low-noise expert, whose tokens come
        from its own patch embedding)."""
        return next_memory(model, self.encoder, self.history, expert)

    def conds(self, model, expert: int = 0):
        """``(tokens [M, D], positions [M, 3], hidden [M_h, Ch] or None)``: :meth:`tokens` plus the hidden states of
        the cross-attention add-on (None without it; from the HR branch, the same for every expert), for
        ``conds.attach_memory``."""
        tokens, positions = next_memory(model, self.encoder, self.history, expert)
        return tokens, positions, memory_hidden(model, self.encoder, self.history)

    def for_expert(self, model, expert: int, vae=None) -> "Memory":
        """This memory with the history also encoded for the ``expert``-th DiT of a schedule (1: the Wan 2.2 A14B
        low-noise expert ``model``, whose LR branch is its own patch embedding). ``self`` when already encoded for it;
        otherwise a new Memory (``self`` is not changed): segments whose pixels were dropped are decoded again with
        ``vae`` (:func:`restore_frames`), then encoded (:func:`encode_pending`, whose LR branch needs ``vae`` too).

        Raises:
            ValueError: not encoded for ``expert`` yet and ``vae`` is None, or like :func:`encode_pending`.
        """
        keys = expert_keys(self.encoder, expert)
        if all(k in s.encoded for s in self.history.segments for k in keys):
            return self
        if vae is None:
            raise ValueError(
                f"this memory has no memory tokens for expert {expert} (the Wan 2.2 A14B low-noise model) yet: connect "
                "the VAE to Apply Memory so the history can be encoded through this model's patch embedding")
        history = self.history.copy()
        restore_frames(vae, self.encoder, history, expert + 1)
        encode_pending(model, vae, self.encoder, history, expert=expert)
        return dataclasses.replace(self, history=history)

    def apply(self, model, positive: list, negative: list, expert: int = 0, vae=None) -> tuple[object, list, list]:
        """What Apply Memory does: ``(patched model, positive, negative)`` for the stock KSampler, the model
        patched for memory attention (:func:`memory_model`) and both conditionings carrying this memory. ``expert``
        1 gives the Wan 2.2 A14B low-noise expert ``model`` the tokens of its own patch embedding (for the second
        KSamplerAdvanced); see :meth:`for_expert` for ``vae``. Raises like :meth:`for_expert`."""
        tokens, positions, hidden = self.for_expert(model, expert, vae).conds(model, expert)
        return (memory_model(model, self.encoder), attach_memory(positive, tokens, positions, hidden),
                attach_memory(negative, tokens, positions, hidden))


def memory_model(model, encoder):
    """Clone ``model`` with memory attention installed (``families.patch_model``) plus the encoder's cross-attention
    layers when it has that add-on. Raises like :meth:`MemoryEncoder.check`."""
    encoder.check(model)
    patched = families.patch_model(model)
    install_cross_attention(patched, encoder)
    return patched


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@contextlib.contextmanager
def phase(stats: dict, name: str):
    """Time a phase of a segment into ``stats[name + "_s"]``; on CUDA also record the phase's peak allocated and
    reserved VRAM in MiB (``name + "_peak_alloc_mb"``, ``name + "_peak_reserved_mb"``)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stats[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        if cuda:
            stats[f"{name}_peak_alloc_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            stats[f"{name}_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)


def check_size(model, width: int, height: int):
    """Return the model's family adapter; raise ValueError unless width and height are multiples of the
    family's pixel-per-token stride (VAE stride x patch size: 16 for Wan 2.1 and HunyuanVideo)."""
    adapter = families.adapter_for(model)
    mh = adapter.VAE_STRIDE[1] * adapter.PATCH_SIZE[1]
    mw = adapter.VAE_STRIDE[2] * adapter.PATCH_SIZE[2]
    if width % mw or height % mh:
        raise ValueError(f"width and height must be multiples of {mw}x{mh} for {adapter.FAMILY}, got {width}x{height}")
    return adapter


def release_host_memory() -> None:
    """Give freed host memory back to the OS after a segment: ``gc.collect()`` plus glibc's ``malloc_trim(0)``
    where available. Without it glibc keeps freed VAE/sampler temporaries mapped: measured with tiny models on
    CPU, RSS sat ~1.1 GB higher and rose ~3.9 MB per segment instead of the 1.4 MB of frames and latents kept."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc without malloc_trim
            pass


def rss_mb() -> float:
    """Current resident set size of this process in MiB (psutil), for leak checks; ru_maxrss only grows."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def fit_frames(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Center-crop and area-resize IMAGE frames ``[F, H, W, 3]`` to ``[F, height, width, 3]``."""
    f, h, w, _ = images.shape
    if (h, w) == (height, width):
        return images
    scale = max(height / h, width / w)
    ch, cw = round(height / scale), round(width / scale)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    crop = images[:, y0:y0 + ch, x0:x0 + cw].movedim(-1, 1).float()
    return F.interpolate(crop, size=(height, width), mode="area").movedim(1, -1).clamp(0, 1)


def expert_models(model, model_low_noise=None) -> list:
    """The DiTs of the sampling schedule: ``[model]``, or ``[model, model_low_noise]`` for a Wan 2.2 A14B pair (the
    high-noise expert first). Raises ValueError when the two are of different families (they must share the
    latent space of one history), TypeError for an unsupported family."""
    if model_low_noise is None:
        return [model]
    high, low = families.adapter_for(model), families.adapter_for(model_low_noise)
    if high is not low:
        raise ValueError(f"model_low_noise is a {low.FAMILY} model but model is {high.FAMILY}: the two experts of a "
                         "pair must be of one family (Wan 2.2 A14B: two Wan 2.1-architecture DiTs)")
    return [model, model_low_noise]


def sampling_stages(models: list, encoder, sampler: SamplerSettings) -> list[Stage]:
    """One :class:`Stage` per model: ``[0, steps)`` for one model, ``[0, switch)`` and ``[switch, steps)`` for a pair
    (``sampler.switch()``). Every model is patched for memory attention; raises like :func:`memory_model`."""
    bounds = [0, sampler.steps] if len(models) == 1 else [0, sampler.switch(), sampler.steps]
    return [Stage(m, memory_model(m, encoder), e, bounds[e], bounds[e + 1]) for e, m in enumerate(models)]


def sample_stage(stage: Stage, mem: Memory, positive: list, negative: list, latent: torch.Tensor, noise: torch.Tensor,
                 sampler: SamplerSettings, seed: int, first: bool, last: bool) -> tuple[torch.Tensor, int]:
    """Sample one stage's steps of ``latent`` ``[1, C, T, h, w]`` with this expert's memory in both conditionings,
    through ``comfy.sample.sample`` as KSamplerAdvanced does: the first stage adds ``noise`` at step 0, a later one
    continues from the leftover noise (``noise`` zeros, ``disable_noise``) at its ``start``; every stage but the last
    stops at its ``end`` with the leftover noise (return_with_leftover_noise), the last runs to the end of the
    schedule. A single stage is exactly the stock KSampler call. Returns ``(samples [1, C, T, h, w] CPU, M)``, M the
    memory tokens the expert attended to."""
    tokens, positions, hidden = mem.conds(stage.model, stage.expert)
    pos = attach_memory(positive, tokens, positions, hidden)
    neg = attach_memory(negative, tokens, positions, hidden)
    whole = None if first and last else stage.start  # progress over the whole schedule when sampling in stages
    samples = comfy.sample.sample(
        stage.patched, noise, sampler.steps, sampler.cfg, sampler.sampler_name, sampler.scheduler, pos, neg, latent,
        denoise=1.0, disable_noise=not first, start_step=None if first else stage.start,
        last_step=None if last else stage.end, force_full_denoise=False,
        callback=_progress_callback(stage.patched, sampler.steps, whole),
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return samples.cpu(), 0 if tokens is None else int(tokens.shape[0])


def sample_segment(stages: list[Stage], mem: Memory, positive: list, negative: list, latent: torch.Tensor,
                   sampler: SamplerSettings, seed: int) -> tuple[torch.Tensor, int]:
    """Sample one segment from the empty ``latent`` ``[1, C, T, h, w]`` through every stage with steps
    (:func:`sample_stage`; a pair is the stock A14B chain of two KSamplerAdvanced nodes), noise from ``seed``.
    Returns ``(samples [1, C, T, h, w] float CPU, memory tokens of the first stage)``."""
    noise = comfy.sample.prepare_noise(latent, seed)
    run = [s for s in stages if s.start < s.end]  # a switch at ``steps`` leaves the low-noise expert nothing to do
    counts = []
    for k, stage in enumerate(run):
        first = k == 0
        step_noise = noise if first else torch.zeros(latent.shape, dtype=latent.dtype)
        latent, m = sample_stage(stage, mem, positive, negative, latent, step_noise, sampler, seed, first, k == len(run) - 1)
        counts.append(m)
    return latent, counts[0]


def history_from_frames(model, vae, encoder: MemoryEncoder | MultiEncoder, images: torch.Tensor, latent_frames: int,
                        fps: float, width: int, height: int, memory: Memory | None = None,
                        model_low_noise=None) -> tuple[Memory, int]:
    """Turn a starting clip into history: frames are fitted to ``width x height``, cut into segments of
    ``latent_frames`` latent frames (the oldest frames that do not fill a segment are dropped), VAE-encoded and
    encoded into memory tokens, for ``model`` and, when given, the Wan 2.2 A14B low-noise expert ``model_low_noise``
    (its own patch embedding). Returns ``(memory, dropped_frames)``.

    Raises:
        ValueError: a size not divisible by 16, a clip shorter than one segment, an encoder/DiT mismatch, or experts
        of different families.
    """
    check_size(model, width, height)
    models = expert_models(model, model_low_noise)
    for m in models:
        encoder.check(m)
    seg_f = segment_frames(latent_frames)
    skip, count = split_clip(int(images.shape[0]), seg_f)
    frames = fit_frames(images[skip:], width, height)
    mem = Memory(memory.history.copy() if memory else HistoryBuffer(), encoder, fps, width, height)
    for k in range(count):
        comfy.model_management.throw_exception_if_processing_interrupted()
        chunk = frames[k * seg_f:(k + 1) * seg_f]
        mem.history.append(vae.encode(chunk[..., :3]).cpu(), chunk)
    encode_pending_experts(models, vae, encoder, mem.history)
    return mem, skip


def run_storyboard(model, vae, clip, encoder: MemoryEncoder | MultiEncoder, negative: list, shots: list[Shot],
                   sampler: SamplerSettings, width: int, height: int, fps: float, latent_frames: int,
                   start: Memory | None = None, model_low_noise=None) -> tuple[torch.Tensor, Memory, dict]:
    """Generate a storyboard segment by segment with memory of everything before each segment.

    Args:
        model: Wan MODEL (patched here). vae: its VAE. clip: text encoder (``tokenize`` /
        ``encode_from_tokens_scheduled``). negative: CONDITIONING. shots: parsed storyboard.
        latent_frames: T per segment (4 on Wan = 13 frames, about 1 s at 16 fps).
        start: history to continue (e.g. a starting clip from :func:`history_from_frames`), or None.
        model_low_noise: Wan 2.2 A14B low-noise expert, or None. Then ``model`` (the high-noise expert) samples steps
            ``[0, sampler.switch())`` of every segment and this one the rest, each with memory tokens of its own patch
            embedding (shared history and encoder); both must fit the encoder. History segments encoded for
            ``model`` only (e.g. ``start`` from Encode History) are decoded again once to encode them for this one.
    Returns:
        frames ``[F, height, width, 3]`` float32 0..1 (generated part only), the final Memory (every segment
        encoded), and a report dict (segments, memory tokens per segment, seconds, peak RSS; with a pair, the
        ``experts`` and their steps).
    Raises:
        ValueError: bad sizes, encoder/DiT mismatch or experts of different families; InterruptProcessingException
        when the user cancels.
    """
    adapter = check_size(model, width, height)
    if start is not None and (start.width, start.height) != (width, height):
        raise ValueError(f"the history is {start.width}x{start.height} but the storyboard is {width}x{height}")
    models = expert_models(model, model_low_noise)
    stages = sampling_stages(models, encoder, sampler)
    mem = Memory(start.history.copy() if start else HistoryBuffer(), encoder, fps, width, height)
    encode_pending_experts(models, vae, encoder, mem.history)
    plans = plan_segments(shots, fps, latent_frames)
    prompts: dict[int, list] = {}
    out_frames: list[torch.Tensor] = []
    segments = []
    _, sh, sw = adapter.VAE_STRIDE
    for plan in plans:
        comfy.model_management.throw_exception_if_processing_interrupted()
        t0 = time.perf_counter()
        stats: dict = {}
        if plan.shot not in prompts:
            prompts[plan.shot] = clip.encode_from_tokens_scheduled(clip.tokenize(shots[plan.shot].prompt))
        covered, total = mem.history.encoded_frames, mem.history.num_frames
        latent = torch.zeros([1, adapter.LATENT_CHANNELS, latent_frames, height // sh, width // sw])
        latent = comfy.sample.fix_empty_latent_channels(stages[0].patched, latent)
        with phase(stats, "sample"):
            samples, memory_tokens = sample_segment(stages, mem, prompts[plan.shot], negative, latent, sampler,
                                                    sampler.seed + plan.index)
        with phase(stats, "decode"):
            images = vae.decode(samples)  # ComfyUI retries tiled when a full decode runs out of memory
            images = images.reshape(-1, *images.shape[-3:])  # [F, H, W, 3]
            images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()  # 4x less RAM than float32
        out_frames.append(images)
        mem.history.append(samples, images)
        with phase(stats, "encode"):
            encode_pending_experts(models, vae, encoder, mem.history)
        release_host_memory()
        segments.append({
            "index": plan.index, "shot": plan.shot, "frames": int(images.shape[0]), "latent_frames": latent_frames,
            "start_frame": total, "memory_tokens": memory_tokens,
            "history_frames_covered": covered, "history_frames_total": total,
            "seconds": round(time.perf_counter() - t0, 3), **stats, "rss_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        })
        log.info("FrameMemory: segment %d/%d (shot %d) %d frames, %d memory tokens, %.1fs",
                 plan.index + 1, len(plans), plan.shot, images.shape[0], segments[-1]["memory_tokens"],
                 segments[-1]["seconds"])
    frames = torch.cat(out_frames, dim=0).float() / 255.0
    del out_frames
    report = {
        "model_family": adapter.FAMILY, "fps": fps, "width": width, "height": height,
        "start_frames": start.history.num_frames if start else 0,
        "total_frames": int(frames.shape[0]),
        "rate": rate_str(model, encoder), "encoder": encoder.name,
        "shots": [{"index": s.index, "prompt": s.prompt, "start_s": s.start_s, "duration_s": s.duration_s} for s in shots],
        "segments": segments, "final_memory_tokens": memory_token_count(mem.history, encoder),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if len(stages) > 1:
        report["experts"] = [{"expert": name, "steps": [st.start, st.end]}
                             for name, st in zip(("high_noise", "low_noise"), stages)]
    return frames, mem, report


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
