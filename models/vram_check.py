"""The VRAM pre-flight of a storyboard run on a GPU (issue 25): before the first segment, whether the largest step of
the run fits the device with the memory it will carry at its end, as ComfyUI will plan it, and if not, why and what to
set instead (the verdicts of benchmarks/vram_estimate.py's table, from the same ingredients).

ComfyUI unloads and streams weights as needed (``load_models_gpu``), so what cannot fit is one step's working set with
the fewest weights on the card: the DiT step at batch 1 as ComfyUI itself estimates it with the memory declared
(``BaseModel.memory_required`` of :func:`models.memory_plan.planned_shape`; ComfyUI splits cond and uncond when two do
not fit) plus the streamed weights in flight (``NUM_STREAMS + 1`` of the largest layer, ComfyUI's offload buffer), and
for VideoSSM the absorb of one latent frame (:func:`models.memory_plan.absorb_bytes`) with its float32 ``absorb_proj``
on the card; plus ComfyUI's ``--reserve-vram`` (``extra_reserved_memory``). Compared with what ComfyUI can free on the
device (free memory plus every loaded model). On the CPU there is nothing to check here (RAM: ``check_memory``).
"""
from __future__ import annotations

import math

from ..memory.designs import design
from . import families

NUM_STREAMS = 2  # comfy.model_management on NVIDIA: streams that prefetch low-VRAM weights (buffer = (2 + 1) x layer)
GIB = 2 ** 30


def attended_at(model, encoder, mode: str, width: int, height: int, fps: float, history_s: float) -> int:
    """Memory tokens one forward attends to after ``history_s`` seconds of history in ``mode`` (the count the pack
    declares to ComfyUI): every compressed token (frame_preservation), the sink + recent latent frames plus the top-K
    mid blocks (pack_forcing), the sink + recent frames (video_ssm), the window (sliding_window), none (off)."""
    from ..memory.grid import memory_grid, tokens_per_second
    from .memory_modes import mode_config

    if mode == "off" or history_s <= 0:
        return 0
    adapter = families.family_for(model)
    ft, sh, sw = adapter.VAE_STRIDE
    pt, ph, pw = adapter.PATCH_SIZE
    frame = (height // sh // ph) * (width // sw // pw)  # DiT tokens of one latent frame
    frames = math.ceil(history_s * fps / ft)
    if mode == "frame_preservation":
        return int(sum(tokens_per_second(p.check(model), height, width, fps) for p in encoder.parts) * history_s)
    cfg = mode_config(encoder, model, mode)
    if mode == "sliding_window":
        return min(frames, cfg.overlap_latent_frames) * frame
    local = min(frames, cfg.sink_latent_frames + cfg.overlap_latent_frames) * frame
    if mode != "pack_forcing":
        return local
    rt = cfg.patch_size[0] * cfg.rate[2]
    block = math.prod(memory_grid((rt, height // sh, width // sw), cfg))
    blocks = max(0, frames - cfg.sink_latent_frames - cfg.overlap_latent_frames) // rt
    return local + block * (blocks if cfg.top_k <= 0 else min(blocks, cfg.top_k))


def streamed_bytes(module) -> int:
    """Weights in flight while ``module`` computes with the rest of its weights streamed: ``NUM_STREAMS + 1`` x its
    largest leaf layer (``comfy.model_management.module_size``)."""
    import comfy.model_management

    sizes = [comfy.model_management.module_size(m) for m in module.modules() if not list(m.children())]
    return (NUM_STREAMS + 1) * max(sizes, default=0)


def step_bytes(model, width: int, height: int, latent_frames: int, attended: int) -> int:
    """ComfyUI's own estimate of one DiT step at batch 1 (``minimum_memory_required``) for a segment of
    ``latent_frames`` at ``width x height`` with ``attended`` memory tokens declared, plus the streamed weights."""
    from .memory_plan import planned_shape

    adapter = families.family_for(model)
    _, sh, sw = adapter.VAE_STRIDE
    shape = [1, adapter.LATENT_CHANNELS, latent_frames, height // sh, width // sw]
    planned = planned_shape(shape, attended, math.prod(adapter.PATCH_SIZE))
    return int(model.model.memory_required(planned)) + streamed_bytes(families.diffusion_model(model))


def absorb_need(model, encoder, width: int, height: int) -> int:
    """VideoSSM with trained state modules: one absorb call (``ABSORB_FRAMES`` latent frames, as declared) plus its
    float32 ``absorb_proj`` (D x L*H*(dk+dv+2)) streamed to the card; 0 without state modules."""
    from .memory_modes import ABSORB_FRAMES
    from .memory_plan import absorb_bytes

    part = encoder.parts[0]
    cfg = part.check(model)
    absorbs = design(cfg.memory_type).PER_BLOCK_STATE
    if len(encoder.parts) != 1 or not absorbs or part.state_dict is None or not cfg.ssm_heads:
        return 0
    adapter = families.family_for(model)
    _, sh, sw = adapter.VAE_STRIDE
    tokens = ABSORB_FRAMES * (height // sh // adapter.PATCH_SIZE[1]) * (width // sw // adapter.PATCH_SIZE[2])
    width_proj = cfg.dit_blocks * cfg.ssm_heads * (cfg.ssm_key_dim + cfg.dim // cfg.ssm_heads + 2)
    return absorb_bytes(cfg, tokens) + 4 * cfg.dim * width_proj


def needs(model, encoder, mode: str, width: int, height: int, fps: float, latent_frames: int,
          history_s: float) -> dict:
    """``{"sample": bytes, "absorb": bytes}`` of the run's largest steps (module docstring) after ``history_s``; the
    absorb only for a design with a state per DiT block (VideoSSM)."""
    attended = attended_at(model, encoder, mode, width, height, fps, history_s)
    out = {"sample": step_bytes(model, width, height, latent_frames, attended), "attended": attended}
    if design(mode).PER_BLOCK_STATE:
        out["absorb"] = absorb_need(model, encoder, width, height)
    return out


def _instead(model, encoder, mode: str, width: int, height: int, fps: float, latent_frames: int, history_s: float,
             room: int) -> str:
    """What to set instead when ``mode`` does not fit ``room`` bytes: the longest history that fits in this mode (the
    modes whose memory grows: ``MEMORY_GROWS`` of the design), and PackForcing (bounded) when it fits on this family."""
    tips = []
    if design(mode).MEMORY_GROWS:
        lo, hi = 0, int(history_s)  # the longest whole-second history whose DiT step fits (needs grow with it)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            fit = needs(model, encoder, mode, width, height, fps, latent_frames, mid)["sample"] <= room
            lo, hi = (mid, hi) if fit else (lo, mid - 1)
        tips.append(f"keep at most {lo} s of history (a shorter storyboard, or chain Storyboards through their memory) "
                    "or use an encoder at a coarser rate (4x4x2)" if lo else "an encoder at a coarser rate (4x4x2)")
    if mode != "pack_forcing" and "pack_forcing" in families.family_for(model).MEMORY_MODES:
        try:
            pf = needs(model, encoder, "pack_forcing", width, height, fps, latent_frames, history_s)["sample"]
        except ValueError:  # a VideoSSM file cannot run pack_forcing: it has no compressor
            pf = None
        if pf is not None and pf <= room:
            tips.append(f"memory_mode pack_forcing (bounded: {pf / GIB:.1f} GiB)")
    if mode == "video_ssm":
        tips.append("memory_mode frame_preservation at 4x4x2 with a frame_preservation encoder")
    return "; or ".join(tips) or "a smaller size or a GPU with more memory"


def available_memory() -> tuple[int, int | None]:
    """``(free RAM bytes, free bytes on the torch device or None when it is the CPU)``: psutil's available RAM, and
    ``comfy.model_management.get_free_memory`` plus what the models ComfyUI holds there would free when unloaded."""
    import psutil

    import comfy.model_management as mm

    host = int(psutil.virtual_memory().available)
    dev = mm.get_torch_device()
    if getattr(dev, "type", "cpu") == "cpu":
        return host, None
    loaded = sum(m.model_loaded_memory() for m in mm.current_loaded_models if m.device == dev)
    return host, int(mm.get_free_memory(dev)) + int(loaded)


def check_vram(model, encoder, mode: str, width: int, height: int, fps: float, latent_frames: int, history_s: float,
               device_bytes: int | None = None) -> dict | None:
    """Refuse a run whose largest step cannot fit the device however ComfyUI loads the weights, naming the step, the
    numbers and what to set instead. ``history_s``: seconds of history at the run's end. ``device_bytes``: what
    ComfyUI can free on the device (default: free + loaded models, :func:`available_memory`);
    None on the CPU: no check. Returns the needs (``{"sample", "absorb", "attended"}`` bytes / tokens) or None.

    Raises:
        ValueError: the step, its GiB, the device's GiB, ComfyUI's reserve, and the setting that fits.
    """
    import comfy.model_management

    if device_bytes is None:
        device_bytes = available_memory()[1]
        if device_bytes is None:
            return None
    need = needs(model, encoder, mode, width, height, fps, latent_frames, history_s)
    room = device_bytes - comfy.model_management.extra_reserved_memory()
    step = max(("sample", "absorb"), key=lambda k: need.get(k, 0))
    if need[step] <= room:
        return need
    what = (f"VideoSSM's absorb of one latent frame with its float32 absorb_proj on the device needs about "
            f"{need[step] / GIB:.1f} GiB" if step == "absorb" else
            f"one DiT step with the {need['attended']} memory tokens this run attends to at its end ({history_s:g} s of "
            f"history, memory_mode {mode}) needs about {need[step] / GIB:.1f} GiB even one CFG half at a time "
            "(ComfyUI's own estimate, memory included, plus the streamed weights)")
    raise ValueError(f"{what}, but {device_bytes / GIB:.1f} GiB of device memory can be freed (ComfyUI keeps "
                     f"{(device_bytes - room) / GIB:.1f} GiB in reserve): offloading weights cannot make room for it. "
                     "Set instead: " + _instead(model, encoder, mode, width, height, fps, latent_frames, history_s,
                                                room))
