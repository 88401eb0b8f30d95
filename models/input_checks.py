"""Checks of the pack's inputs, run before any expensive work (issue 14): each raises ValueError naming the input
and the fix, so a bad prompt fails in milliseconds instead of after minutes of sampling, an all-black video, a raw
Python error or an out-of-memory kill. The nodes and :func:`models.storyboard.run_storyboard` /
:func:`models.history_writer.history_from_frames` call them first; each check is one function.

Memory estimate (:func:`estimate_memory`, :func:`check_memory`): bytes a frame size needs, conservative, in two parts.
Host RAM (always): the whole output as kept uint8 frames plus the float32 IMAGE the node returns
(:data:`OUTPUT_BYTES_PER_VALUE`), and the starting clip fitted to the size (float32 + kept uint8). Torch device, the
peak of the per-segment phases that run one after the other: the sampled latents, one DiT step (activations of the
CFG batch over the video tokens plus the memory tokens at the end of the storyboard, and one 1024-query chunk of
attention scores), the VAE decode of one segment (ComfyUI's own ``VAE.memory_used_decode``; on a GPU ComfyUI falls
back to 256 px tiles on out-of-memory, so the tiled figure counts there) and the VAE encode of one starting-clip
segment (``VAE.memory_used_encode``). Model weights are not counted: ComfyUI loads and offloads them. On a GPU the
VRAM pre-flight (:mod:`models.vram_check`) then checks the run's largest step as ComfyUI plans it, with the memory the
run carries at its end declared (:mod:`models.memory_plan`), and names what to set instead when nothing fits.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile

import torch

from ..memory.grid import tokens_per_second
from ..memory.storyboard import MAX_STORYBOARD_SECONDS, Shot, segment_frames, storyboard_seconds
from . import families
from .vram_check import available_memory, check_vram

SEED_SPAN = 2 ** 64  # torch.manual_seed takes 0 .. 2^64 - 1; segment k samples with seed + k (refused past the end)
OUTPUT_BYTES_PER_VALUE = 10  # per output pixel and channel: uint8 history + uint8 segment + float32 IMAGE + float32 temp
START_BYTES_PER_VALUE = 5  # per starting-clip pixel and channel: fitted float32 + kept uint8
LATENT_COPIES = 8  # latent, noise, sampler state, denoised, CFG cond + uncond, decoded input, history copy
ACTIVATION_WIDTHS = 11  # per token of a DiT step, in units of the width D: x, q, k, v, attention out, FFN hidden (6 D)
QUERY_CHUNK = 1024  # queries per attention chunk of the non-flash attention paths (sub-quadratic, split)
TILE_LATENT = 32  # ComfyUI's tiled VAE fallback: 256 px tiles = 32 latent cells (Wan, HunyuanVideo)


def check_finite(name: str, value: float, fix: str) -> float:
    """``value`` as a float; raises ValueError naming ``name`` and ``fix`` when it is NaN, infinite or no number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}; {fix}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} is {value!r}, not a finite number; {fix}")
    return number


def check_fps(fps: float) -> float:
    """Frames per second: a finite number > 0 (the widget's 1..120). Raises ValueError naming fps."""
    fps = check_finite("fps", fps, "use the video's frame rate, e.g. 16 for Wan 2.1 or 24 for Wan 2.2 / HunyuanVideo")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}; use the video's frame rate, e.g. 16 for Wan 2.1")
    return fps


def check_cfg(cfg: float) -> float:
    """Classifier-free guidance scale: finite and >= 0. Raises ValueError naming cfg."""
    cfg = check_finite("cfg", cfg, "use a guidance scale such as 5.0 (1.0 = no guidance)")
    if cfg < 0:
        raise ValueError(f"cfg must be >= 0, got {cfg}; use a guidance scale such as 5.0")
    return cfg


def check_seed(seed: int, segments: int) -> int:
    """Segment k samples with ``seed + k``, which must stay below 2^64 (torch.manual_seed); seeds past
    ``2^64 - segments`` are refused, not wrapped. Raises ValueError naming seed and the largest seed that works."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    largest = SEED_SPAN - max(1, segments)
    if not 0 <= seed <= largest:
        raise ValueError(f"seed {seed} is out of range for {segments} segments: segment k uses seed + k, which must "
                         f"stay below 2^64; use a seed from 0 to {largest}")
    return seed


def check_frames(name: str, images: torch.Tensor) -> torch.Tensor:
    """IMAGE frames ``[F, H, W, C]`` as RGB ``[F, H, W, 3]``: an alpha channel (C = 4) is dropped, grey (C = 1) is
    repeated. Raises ValueError naming ``name`` for another rank or channel count, no frames, or NaN / inf values."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be IMAGE frames [F, H, W, 3] (RGB; RGBA and grey are converted), got {shape}")
    if images.shape[0] < 1 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"{name} holds no frames: {tuple(images.shape)}")
    rgb = images[..., :3] if images.shape[-1] == 4 else images.expand(*images.shape[:3], 3)
    if rgb.is_floating_point():
        bad = int((~torch.isfinite(rgb)).sum())
        if bad:
            raise ValueError(f"{name} contain {bad} NaN / inf values (of {rgb.numel()}); the node that made them "
                             "produced invalid pixels: check it (e.g. a blend factor or math node fed NaN)")
    return rgb


def check_latent_finite(latent: torch.Tensor, seed: int) -> torch.Tensor:
    """Raises ValueError when a sampled segment latent holds NaN / inf (it would decode to a black video); returns
    ``latent``."""
    bad = int((~torch.isfinite(latent)).sum())
    if bad:
        raise ValueError(f"sampling the segment with seed {seed} gave {bad} NaN / inf latent values (of "
                         f"{latent.numel()}): check cfg and the sampler settings, and the model / LoRA weights "
                         "(fp16 overflow: try bf16 or fp8 weights, or a lower LoRA strength)")
    return latent


def size_multiple(model) -> tuple[int, int]:
    """Pixels per DiT token ``(width, height)`` of the model's family (VAE stride x patch size): 16 for Wan 2.1 and
    HunyuanVideo, 32 for Wan 2.2 TI2V 5B; frame sizes must be multiples of it. Raises TypeError (unsupported)."""
    adapter = families.family_for(model)
    return adapter.VAE_STRIDE[2] * adapter.PATCH_SIZE[2], adapter.VAE_STRIDE[1] * adapter.PATCH_SIZE[1]


def min_frame_size(model, encoder=None, mode: str = "frame_preservation") -> tuple[int, int]:
    """Smallest ``(width, height)`` in pixels the model and memory can take: one DiT token (VAE stride x patch, 16 px
    on Wan 2.1) and, for the modes that encode compressed memory tokens, one memory token of every encoder (its rate
    times that: 64 px at 4x4x2 on Wan 2.1). Raises TypeError (unsupported model) and ValueError like
    ``MemoryEncoder.check``."""
    from ..memory.designs import ENCODED_MODES

    w, h = size_multiple(model)
    if encoder is None or mode not in ENCODED_MODES:
        return w, h
    rates = [p.cfg.rate for p in encoder.parts]
    return max(w * r[1] for r in rates), max(h * r[0] for r in rates)


def check_frame_size(model, width: int, height: int, encoder=None, mode: str = "frame_preservation"):
    """Width and height: multiples of the model's token size and at least :func:`min_frame_size`. Returns the family
    adapter. Raises ValueError naming the size, the multiple and the minimum."""
    adapter = families.family_for(model)
    mw, mh = size_multiple(model)
    min_w, min_h = min_frame_size(model, encoder, mode)
    if width < min_w or height < min_h:
        raise ValueError(f"{width}x{height} is below the minimum frame size {min_w}x{min_h} for {adapter.FAMILY}"
                         + (f" with memory encoder '{encoder.name}' (one memory token)" if (min_w, min_h) != (mw, mh)
                            else "") + f": use at least {min_w}x{min_h}, e.g. 832x480")
    if width % mw or height % mh:
        raise ValueError(f"width and height must be multiples of {mw}x{mh} for {adapter.FAMILY}, got {width}x{height}; "
                         f"use e.g. {width // mw * mw}x{height // mh * mh}")
    return adapter


def memory_tokens_per_second(model, encoder, width: int, height: int, fps: float) -> float:
    """Compressed memory tokens per second of history at this size (sum over the encoders of a combination)."""
    return sum(tokens_per_second(p.check(model), height, width, fps) for p in encoder.parts)


def check_storyboard_length(shots: list[Shot], fps: float, latent_frames: int, vae_time_stride: int = 4,
                            tokens_per_s: float | None = None, history_s: float = 0.0) -> float:
    """Refuse storyboards longer than :data:`MAX_STORYBOARD_SECONDS` before anything is planned. Returns the length in
    seconds. Raises ValueError with the estimate: segments, minutes of video, memory tokens at the end (when
    ``tokens_per_s`` is given; ``history_s`` of history before the storyboard count too)."""
    total = storyboard_seconds(shots)
    if total <= MAX_STORYBOARD_SECONDS:
        return total
    def num(x: float) -> str:  # 1e308 s * fps overflows to inf
        return f"{x:.4g}" if math.isfinite(x) else "more than 1e308"

    segments = total / (segment_frames(latent_frames, vae_time_stride, stream_start=False) / fps)
    tokens = f", {num((total + history_s) * tokens_per_s)} memory tokens at the end" if tokens_per_s else ""
    raise ValueError(f"the storyboard lasts {total:g} s: {num(segments)} segments, {num(total / 60)} minutes of video"
                     f"{tokens}; the limit is {MAX_STORYBOARD_SECONDS:g} s ({MAX_STORYBOARD_SECONDS / 60:g} min). "
                     "Shorten the shot durations (seconds | prompt), or chain Storyboards through their memory output")


@dataclasses.dataclass(frozen=True)
class MemoryNeed:
    """Bytes a run needs: ``host`` in RAM whatever the device, ``device`` on the torch device (the peak phase)."""

    host: dict
    device: dict

    def device_peak(self) -> int:
        """Latents plus the largest of the phases that run one after another (sample, decode, encode)."""
        return self.device["latents"] + max(v for k, v in self.device.items() if k != "latents")

    def total(self, cpu: bool) -> int:
        """Everything on one pool of memory (CPU) or only the device part (GPU)."""
        return sum(self.host.values()) + self.device_peak() if cpu else self.device_peak()


def _vae_bytes(vae, fn: str, shape: tuple) -> int:
    """ComfyUI's own working-set estimate ``vae.memory_used_decode`` / ``memory_used_encode`` for ``shape``."""
    estimate = getattr(vae, fn, None)
    return int(estimate(shape, getattr(vae, "vae_dtype", torch.float32))) if estimate else 0


def estimate_memory(model, vae, width: int, height: int, output_frames: int, start_frames: int, latent_frames: int,
                    memory_tokens: int = 0, cpu: bool = True) -> MemoryNeed:
    """Conservative bytes a run at ``width x height`` needs (module docstring): ``output_frames`` frames out (starting
    clip included when the node outputs it), ``start_frames`` fitted starting-clip frames, segments of
    ``latent_frames`` latent frames, ``memory_tokens`` compressed memory tokens at the end; ``cpu``: the torch device
    is the CPU (no tiled VAE fallback). Raises TypeError for an unsupported model."""
    import comfy.model_management

    from .vae_stream import CONTEXT_LATENTS, exact_supported

    adapter = families.family_for(model)
    ft, sh, sw = adapter.VAE_STRIDE
    pt, ph, pw = adapter.PATCH_SIZE
    h, w = height // sh, width // sw
    values = width * height * 3
    host = {"output_frames": output_frames * values * OUTPUT_BYTES_PER_VALUE,
            "start_frames": start_frames * values * START_BYTES_PER_VALUE}
    dim = families.model_width(model)
    heads = getattr(families.diffusion_model(model), "num_heads", max(1, dim // 128))
    act = 4 if cpu else max(2, comfy.model_management.dtype_size(model.model_dtype()))
    video = max(1, latent_frames // pt) * max(1, h // ph) * max(1, w // pw)
    tokens = video + memory_tokens
    sample = 2 * tokens * dim * ACTIVATION_WIDTHS * act + 2 * heads * min(video, QUERY_CHUNK) * tokens * 4
    dec_t = latent_frames if exact_supported(vae) else latent_frames + CONTEXT_LATENTS
    decode = _vae_bytes(vae, "memory_used_decode", (1, adapter.LATENT_CHANNELS, dec_t, h, w))
    if not cpu:  # comfy.sd.VAE.decode retries out-of-memory with 256 px tiles
        tile = (1, adapter.LATENT_CHANNELS, dec_t, min(h, TILE_LATENT), min(w, TILE_LATENT))
        decode = min(decode, _vae_bytes(vae, "memory_used_decode", tile))
    encode = _vae_bytes(vae, "memory_used_encode", (1, 3, ft * latent_frames, height, width)) if start_frames else 0
    device = {"latents": adapter.LATENT_CHANNELS * latent_frames * h * w * 4 * LATENT_COPIES,
              "sample": sample, "vae_decode": decode, "vae_encode": encode}
    return MemoryNeed(host, device)


def _fits(need: MemoryNeed, host: int, device: int | None) -> bool:
    if device is None:
        return need.total(cpu=True) <= host
    return sum(need.host.values()) <= host and need.device_peak() <= device


def check_memory(model, vae, width: int, height: int, output_frames: int, start_frames: int, latent_frames: int,
                 memory_tokens: int = 0) -> MemoryNeed:
    """Refuse a size that cannot run here (:func:`estimate_memory` against :func:`available_memory`) before anything
    is allocated. Returns the estimate. Raises ValueError with the need, what is free, and the largest size of the
    same aspect ratio (multiples of the model's token size) that fits."""
    host, device = available_memory()
    cpu = device is None

    def need_at(w: int, h: int) -> MemoryNeed:
        return estimate_memory(model, vae, w, h, output_frames, start_frames, latent_frames, memory_tokens, cpu)

    need = need_at(width, height)
    if _fits(need, host, device):
        return need
    adapter = families.family_for(model)
    mw, mh = adapter.VAE_STRIDE[2] * adapter.PATCH_SIZE[2], adapter.VAE_STRIDE[1] * adapter.PATCH_SIZE[1]
    largest = None
    for k in range(width // mw - 1, 0, -1):  # narrower widths, height keeping the aspect ratio
        w, h = k * mw, max(mh, round(k * mw * height / width / mh) * mh)
        if _fits(need_at(w, h), host, device):
            largest = f"{w}x{h}"
            break
    gib = 2 ** 30
    parts = ", ".join(f"{k} {v / gib:.2f}" for k, v in {**need.host, **need.device}.items() if v)
    where = (f"{need.total(True) / gib:.1f} GiB of RAM but {host / gib:.1f} GiB is available" if cpu else
             f"{sum(need.host.values()) / gib:.1f} GiB of RAM and {need.device_peak() / gib:.1f} GiB on the device, "
             f"but {host / gib:.1f} GiB of RAM and {device / gib:.1f} GiB of device memory are available")
    fix = f"the largest size that fits is {largest} at this length" if largest else "no smaller size fits either"
    raise ValueError(f"width x height {width}x{height} for {output_frames} output frames needs about {where} "
                     f"(GiB: {parts}); {fix}; or generate fewer seconds, or free memory")


def load_naming_file(path: str, load):
    """``load(path)``; a ValueError / TypeError / KeyError from a broken file that does not name it is re-raised as
    ValueError naming ``path`` (e.g. an encoder file whose config JSON is broken)."""
    try:
        return load(path)
    except (ValueError, TypeError, KeyError) as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"memory encoder file {path}: {e}") from e


def check_history_inputs(model, vae, encoder, images: torch.Tensor, latent_frames: int, fps: float, width: int,
                         height: int, mode: str = "frame_preservation", name: str = "start_images") -> torch.Tensor:
    """The checks of :func:`models.history_writer.history_from_frames`: fps, the frames (RGB, finite), the size and the
    memory the fitted clip and its encode need. Returns the frames as RGB ``[F, H, W, 3]``."""
    from ..memory.storyboard import split_clip

    check_fps(fps)
    images = check_frames(name, images)
    adapter = check_frame_size(model, width, height, encoder, mode)
    skip, _ = split_clip(int(images.shape[0]), latent_frames, adapter.VAE_STRIDE[0])
    check_memory(model, vae, width, height, 0, int(images.shape[0]) - skip, latent_frames)
    return images


def check_run_inputs(model, vae, encoder, shots: list[Shot], sampler, width: int, height: int, fps: float,
                     latent_frames: int, history_frames: int = 0, mode: str = "frame_preservation",
                     start_frames: int = 0, output_start: bool = False):
    """The checks of a storyboard run, cheapest first: fps, cfg, the frame size, the length (:data:`MAX_STORYBOARD_
    SECONDS`), the seed range over its segments, and the memory the size needs. ``history_frames``: frames of
    history before the storyboard; ``start_frames``: frames of a starting clip not yet made history (the part that fills
    whole segments is counted, in the output too when ``output_start``). ``sampler``: anything with ``cfg`` and ``seed`` (SamplerSettings).
    On a GPU, last, the VRAM pre-flight (:func:`models.vram_check.check_vram`: the run's largest step with the memory
    at its end, as ComfyUI plans it). Returns the model's family adapter."""
    from ..memory.storyboard import SegmentSchedule, split_clip
    from ..memory.designs import ENCODED_MODES

    fps = check_fps(fps)
    check_cfg(sampler.cfg)
    adapter = check_frame_size(model, width, height, encoder, mode)
    if start_frames:  # the oldest frames that fill no segment are dropped (raises for a clip below one segment)
        start_frames -= split_clip(start_frames, latent_frames, adapter.VAE_STRIDE[0])[0]
    per_s = memory_tokens_per_second(model, encoder, width, height, fps) if mode in ENCODED_MODES else 0.0
    history_s = (history_frames + start_frames) / fps
    check_storyboard_length(shots, fps, latent_frames, adapter.VAE_STRIDE[0], per_s or None, history_s)
    schedule = SegmentSchedule(shots, fps, latent_frames, adapter.VAE_STRIDE[0],
                               continues=bool(history_frames or start_frames))
    check_seed(sampler.seed, len(schedule))
    tokens = int(per_s * (history_s + storyboard_seconds(shots)))
    output = schedule.total_frames + (start_frames if output_start else 0)
    check_memory(model, vae, width, height, output, start_frames, latent_frames, tokens)
    check_vram(model, encoder, mode, width, height, fps, latent_frames, history_s + storyboard_seconds(shots))
    return adapter


# ---- memory files (save_path, Load Memory; memory/memory_file.py) -------------------------------------------------
LR_STATE_BYTES_PER_PIXEL = 5700  # Wan 2.1 VAE's causal encoder cache per LR-clip pixel, float32: 135.4 MiB at 208x120
FREE_SPACE_MARGIN = 1.10  # the estimate of memory_file_bytes plus 10 %


def memory_file_bytes(model, encoder, mode: str, width: int, height: int, fps: float, latent_frames: int,
                      segments: int, experts: int = 1) -> int:
    """Bytes a memory folder (memory/memory_file.py) holds after ``segments`` segments of ``latent_frames`` latent
    frames at ``width x height`` and ``fps`` in ``mode``: per segment its float32 latent, and in the modes that encode
    (frame_preservation, pack_forcing) its memory tokens ``[M, D + 3]`` float32 per expert and LR latent, in the
    others its uint8 pixels (kept for a later encode); plus two state files (the LR streams' causal caches,
    :data:`LR_STATE_BYTES_PER_PIXEL` per pixel of every encoder's LR clip; a write keeps the old one until its index
    commits). An estimate for the free-space check. Raises TypeError for an unsupported model."""
    from ..memory.designs import ENCODED_MODES

    adapter = families.family_for(model)
    ft, sh, sw = adapter.VAE_STRIDE
    latent = adapter.LATENT_CHANNELS * latent_frames * (height // sh) * (width // sw) * 4
    seconds = ft * latent_frames / fps
    if mode in ENCODED_MODES:
        tokens = memory_tokens_per_second(model, encoder, width, height, fps) * seconds
        per_segment = latent + tokens * (families.model_width(model) + 3) * 4 * experts + latent // 8
        lr_pixels = sum((height // (sh * p.check(model).rate[0])) * (width // (sw * p.check(model).rate[1]))
                        * sh * sw for p in encoder.parts)
        state = lr_pixels * LR_STATE_BYTES_PER_PIXEL
    else:
        per_segment, state = latent + ft * latent_frames * width * height * 3, 0
    return int(segments * per_segment + 2 * state)


def _existing_ancestor(path: str) -> str:
    """The nearest part of ``path`` (itself or a parent) that exists."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_save_path(folder: str, need_bytes: int, root: str | None = None) -> None:
    """Refuse a memory folder the run could not write, before its first segment: the folder is a file, a parent is a
    file, it lies outside ``root`` once symlinks are resolved (``root``: ComfyUI's output folder, or None), the
    nearest existing folder is not writable (a real write probe: permissions, read-only file systems), or the disk
    has less free space than ``need_bytes`` (:func:`memory_file_bytes`) plus :data:`FREE_SPACE_MARGIN`.

    Raises:
        ValueError: naming save_path, the cause and the fix.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"save_path {folder} is a file, not a memory folder: choose another save_path, or delete or "
                         "rename the file")
    base = folder if os.path.isdir(folder) else _existing_ancestor(os.path.dirname(os.path.abspath(folder)))
    if not os.path.isdir(base):
        raise ValueError(f"save_path {folder}: {base} is a file where a folder is expected: choose a save_path whose "
                         "parent folders are folders (e.g. 'framememory/my_story')")
    if root is not None:
        real, real_root = os.path.realpath(folder), os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise ValueError(f"save_path {folder} leads to {real} through a symbolic link, outside ComfyUI's output "
                             f"folder {real_root}: choose a save_path inside it without such links")
    _probe_writable(folder, base)
    free = shutil.disk_usage(base).free
    need = int(need_bytes * FREE_SPACE_MARGIN)
    if free < need:
        gib = 2 ** 30
        raise ValueError(f"save_path {folder}: this run's memory file needs about {need / gib:.2f} GiB but the disk "
                         f"holding {base} has {free / gib:.2f} GiB free: free disk space, choose a save_path on "
                         "another disk, or shorten the storyboard")


def _probe_writable(folder: str, base: str) -> None:
    """Create and remove a temporary file in ``base`` (the kernel decides: permissions, read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".framememory_probe_", dir=base)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"save_path {folder}: the folder {base} is not writable ({e.strerror or e}): choose a "
                         "save_path in a writable folder (ComfyUI's output folder), or fix its permissions") from None


def check_memory_matches(memory, model, width: int, height: int, fps: float) -> None:
    """Refuse a memory (Load Memory, Encode History, a resumed save_path) that does not fit this run, before any
    work: another frame size or fps, latents of another channel count or grid (e.g. a HunyuanVideo or Wan 2.2 memory
    into a Wan 2.1 model), memory tokens of another width than the model's (a memory made for another DiT).

    Raises:
        ValueError: naming the memory's value, the run's, and the fix.
    """
    if (memory.width, memory.height) != (width, height):
        raise ValueError(f"the memory is {memory.width}x{memory.height} but this run is {width}x{height}: set width "
                         f"and height to {memory.width}x{memory.height}, or use a memory made at this size")
    if abs(float(memory.fps) - float(fps)) > 1e-6:
        raise ValueError(f"the memory was made at {memory.fps:g} fps but this run is at {fps:g} fps (its time "
                         f"positions would be wrong): set fps to {memory.fps:g}, or make the history again at "
                         f"{fps:g} fps (Load Video as History resamples a clip)")
    adapter = families.family_for(model)
    _, sh, sw = adapter.VAE_STRIDE
    want = (adapter.LATENT_CHANNELS, height // sh, width // sw)
    for seg in memory.history.segments[-1:]:
        have = (int(seg.latent.shape[0]), *(int(n) for n in seg.latent.shape[2:]))
        if have != want:
            raise ValueError(f"the memory's latents are {have[0]} channels x {have[1]}x{have[2]} but this "
                             f"{adapter.FAMILY} model at {width}x{height} makes {want[0]} x {want[1]}x{want[2]}: the "
                             "memory was made with another model family or VAE; use a memory made with this model")
    dim = families.model_width(model)
    token = next((e[0] for s in memory.history.segments for e in s.encoded.values() if e[0].numel()), None)
    if token is not None and int(token.shape[-1]) != dim:
        raise ValueError(f"the memory's tokens are {int(token.shape[-1])} wide but this {adapter.FAMILY} model's width "
                         f"is {dim}: the memory was made for another DiT; use a memory made with this model (and its "
                         "memory encoder)")


def check_memory_mode(memory, mode: str, where: str = "this Storyboard") -> None:
    """Refuse, before any work, a memory that ``mode`` cannot use: one made in a mode that encodes nothing (off,
    sliding_window, video_ssm) whose pixels are gone (Load Video as History keeps latents only in those modes), for a
    mode that must encode it into memory tokens (frame_preservation, pack_forcing). ``where``: the node that checks,
    as the message names it.

    Raises:
        ValueError: naming memory_mode, the memory's mode, ``where``'s mode and the fix.
    """
    from ..memory.designs import ENCODED_MODES

    if mode not in ENCODED_MODES or memory.mode in ENCODED_MODES:
        return
    if all(s.frames is not None or s.lr_latents for s in memory.history.segments):
        return  # the pixels are still there: they are encoded at the run's start
    raise ValueError(
        f"memory_mode differs: the memory at {where}'s memory input was made with memory_mode {memory.mode!r}, which "
        f"keeps latents only (no pixels), but {where} has memory_mode {mode!r}, which must encode the history into "
        f"memory tokens: set memory_mode to {memory.mode!r} on {where}, or make the memory again with memory_mode "
        f"{mode!r} (a Load Video as History linked to a Storyboard takes the Storyboard's memory_mode)")
