"""The storyboard loop (arXiv 2512.23851 Sec. 4, inference): generate a segment, append it to the history,
encode only the new part, repeat; the prompt of the shot at the current time conditions each segment."""
from __future__ import annotations

import contextlib
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
from .encoding import (MemoryEncoder, MultiEncoder, encode_pending, install_cross_attention,
                       memory_hidden, next_memory, rate_str)

log = logging.getLogger("FrameMemory")


@dataclass(frozen=True)
class SamplerSettings:
    """What the stock KSampler takes: steps, cfg, sampler and scheduler names, base seed."""

    steps: int = 20
    cfg: float = 5.0
    sampler_name: str = "uni_pc"
    scheduler: str = "simple"
    seed: int = 0


@dataclass
class Memory:
    """What the MEMORY socket carries: the history buffer plus the encoder and video geometry it was made with."""

    history: HistoryBuffer
    encoder: MemoryEncoder | MultiEncoder
    fps: float
    width: int
    height: int

    def tokens(self, model):
        """``(tokens [M, D], positions [M, 3])`` for the segment after the history (time relative to its end),
        including the overlap-window add-on, or ``(None, None)``. With the cross-attention add-on use :meth:`conds`."""
        return next_memory(model, self.encoder, self.history)

    def conds(self, model):
        """``(tokens [M, D], positions [M, 3], hidden [M_h, Ch] or None)``: :meth:`tokens` plus the hidden states of
        the cross-attention add-on (None without it), for ``conds.attach_memory``."""
        tokens, positions = next_memory(model, self.encoder, self.history)
        return tokens, positions, memory_hidden(model, self.encoder, self.history)

    def apply(self, model, positive: list, negative: list) -> tuple[object, list, list]:
        """What Apply Memory does: ``(patched model, positive, negative)`` for the stock KSampler, the model
        patched for memory attention (:func:`memory_model`) and both conditionings carrying this memory."""
        tokens, positions, hidden = self.conds(model)
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


def history_from_frames(model, vae, encoder: MemoryEncoder | MultiEncoder, images: torch.Tensor, latent_frames: int,
                        fps: float, width: int, height: int, memory: Memory | None = None) -> tuple[Memory, int]:
    """Turn a starting clip into history: frames are fitted to ``width x height``, cut into segments of
    ``latent_frames`` latent frames (the oldest frames that do not fill a segment are dropped), VAE-encoded and
    encoded into memory tokens. Returns ``(memory, dropped_frames)``.

    Raises:
        ValueError: a size not divisible by 16, a clip shorter than one segment, or an encoder/DiT mismatch.
    """
    check_size(model, width, height)
    encoder.check(model)
    seg_f = segment_frames(latent_frames)
    skip, count = split_clip(int(images.shape[0]), seg_f)
    frames = fit_frames(images[skip:], width, height)
    mem = Memory(memory.history.copy() if memory else HistoryBuffer(), encoder, fps, width, height)
    for k in range(count):
        comfy.model_management.throw_exception_if_processing_interrupted()
        chunk = frames[k * seg_f:(k + 1) * seg_f]
        mem.history.append(vae.encode(chunk[..., :3]).cpu(), chunk)
    encode_pending(model, vae, encoder, mem.history)
    return mem, skip


def run_storyboard(model, vae, clip, encoder: MemoryEncoder | MultiEncoder, negative: list, shots: list[Shot],
                   sampler: SamplerSettings, width: int, height: int, fps: float, latent_frames: int,
                   start: Memory | None = None) -> tuple[torch.Tensor, Memory, dict]:
    """Generate a storyboard segment by segment with memory of everything before each segment.

    Args:
        model: Wan MODEL (patched here). vae: its VAE. clip: text encoder (``tokenize`` /
        ``encode_from_tokens_scheduled``). negative: CONDITIONING. shots: parsed storyboard.
        latent_frames: T per segment (4 on Wan = 13 frames, about 1 s at 16 fps).
        start: history to continue (e.g. a starting clip from :func:`history_from_frames`), or None.
    Returns:
        frames ``[F, height, width, 3]`` float32 0..1 (generated part only), the final Memory (every segment
        encoded), and a report dict (segments, memory tokens per segment, seconds, peak RSS).
    Raises:
        ValueError: bad sizes or encoder/DiT mismatch; InterruptProcessingException when the user cancels.
    """
    adapter = check_size(model, width, height)
    if start is not None and (start.width, start.height) != (width, height):
        raise ValueError(f"the history is {start.width}x{start.height} but the storyboard is {width}x{height}")
    patched = memory_model(model, encoder)
    mem = Memory(start.history.copy() if start else HistoryBuffer(), encoder, fps, width, height)
    encode_pending(model, vae, encoder, mem.history)
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
        tokens, positions, hidden = mem.conds(model)
        covered, total = mem.history.encoded_frames, mem.history.num_frames
        pos = attach_memory(prompts[plan.shot], tokens, positions, hidden)
        neg = attach_memory(negative, tokens, positions, hidden)
        latent = torch.zeros([1, adapter.LATENT_CHANNELS, latent_frames, height // sh, width // sw])
        latent = comfy.sample.fix_empty_latent_channels(patched, latent)
        seed = sampler.seed + plan.index
        noise = comfy.sample.prepare_noise(latent, seed)
        with phase(stats, "sample"):
            samples = comfy.sample.sample(
                patched, noise, sampler.steps, sampler.cfg, sampler.sampler_name, sampler.scheduler, pos, neg, latent,
                denoise=1.0, callback=_progress_callback(patched, sampler.steps),
                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed).cpu()
        del pos, neg, noise, hidden
        with phase(stats, "decode"):
            images = vae.decode(samples)  # ComfyUI retries tiled when a full decode runs out of memory
            images = images.reshape(-1, *images.shape[-3:])  # [F, H, W, 3]
            images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()  # 4x less RAM than float32
        out_frames.append(images)
        mem.history.append(samples, images)
        with phase(stats, "encode"):
            encode_pending(model, vae, encoder, mem.history)
        release_host_memory()
        segments.append({
            "index": plan.index, "shot": plan.shot, "frames": int(images.shape[0]), "latent_frames": latent_frames,
            "start_frame": total, "memory_tokens": 0 if tokens is None else int(tokens.shape[0]),
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
        "segments": segments, "final_memory_tokens": mem.history.num_tokens,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return frames, mem, report


def _progress_callback(model, steps: int):
    """Stock progress bar + latent previews (``latent_preview.prepare_callback``) when running in a server."""
    try:
        import latent_preview
    except ImportError:  # outside a ComfyUI server (tests import comfy only)
        return None
    return latent_preview.prepare_callback(model, steps)
