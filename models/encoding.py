"""The history encoder under ComfyUI's memory management, and encoding of history segments.

- :class:`MemoryEncoder` is what the ``MEMORY_ENCODER`` socket carries: a config plus weights (or none, for the
  untrained LR-branch-only encoder). Its HR branch is built from ``comfy.ops.manual_cast`` layers and wrapped
  in a model patcher, so ComfyUI loads and offloads it like any model.
- :func:`encode_pending` encodes the new segments of a :class:`~memory.history.HistoryBuffer`:
  LR branch = pixel downsample -> the DiT's own VAE -> the DiT's own ``patch_embedding``;
  HR branch = the encoder's convolutions on the full-resolution latent; summed (arXiv 2512.23851 Sec. 3).

Add-ons of arXiv 2512.23851, both off by default:

- **Several encoders concatenated** (e.g. 4x4x2 + 2x2x8): :class:`MultiEncoder` combines encoders; the history
  latents are shared, each encoder caches its own tokens in the :class:`~memory.history.HistoryBuffer` under its own
  key (:func:`part_key`) and groups segments by its own time rate; the memory is the concatenation of every
  encoder's tokens, each at its own positions. Code takes ``encoder.parts`` (``[self]`` for a single encoder).
- **Cross-attention** (``EncoderConfig.cross_attention``): :func:`memory_hidden` gathers the HR branch's last hidden
  states of the history, which travel as a third model cond (``models/conds.py``); :func:`install_cross_attention`
  hands the encoder's per-block layers to the block patches of the Wan (``models/wan.py``: one layer per block) and
  HunyuanVideo (``models/hunyuan.py``: one per double and per single block) adapters. At most one encoder of a
  combination may have it.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops

from ..memory.config import EncoderConfig
from ..memory.encoder import HistoryEncoder, combine_branches, lr_frames
from ..memory.grid import memory_grid, memory_positions
from ..memory.history import HistoryBuffer, HistorySegment
from ..memory.io import load_encoder_file
from . import families, hunyuan, wan
from .conds import CROSS_KEY

log = logging.getLogger("FrameMemory")
UNTRAINED = "untrained (LR branch only)"
# Families with the cross-attention add-on -> the number of DiT blocks that get a layer (EncoderConfig.dit_blocks)
CROSS_ATTENTION_FAMILIES = {"wan21": wan.cross_blocks, "wan22": wan.cross_blocks, "hunyuan_video": hunyuan.cross_blocks}
BLOCKS_HINT = "dit_blocks counts the DiT blocks: Wan every block, HunyuanVideo double + single blocks (13B: 20 + 40 = 60)"


class MemoryEncoder:
    """A history encoder ready for one DiT.

    Args:
        cfg: encoder config (``dim == 0``: take the DiT's width; only for weight-less encoders).
        state_dict: HR-branch weights, or None (HR branch zero-initialised: adds nothing).
        name: shown in messages.
    """

    def __init__(self, cfg: EncoderConfig, state_dict: dict | None = None, name: str = UNTRAINED) -> None:
        self.cfg, self.state_dict, self.name = cfg, state_dict, name
        self._patchers: dict[int, object] = {}

    @property
    def parts(self) -> list["MemoryEncoder"]:
        """The encoders whose tokens make up the memory: ``[self]`` (see :class:`MultiEncoder`)."""
        return [self]

    @classmethod
    def from_file(cls, path: str) -> "MemoryEncoder":
        sd, cfg = load_encoder_file(path)
        return cls(cfg, sd, os.path.basename(path))

    @classmethod
    def untrained(cls, rate: str = "4x4x2") -> "MemoryEncoder":
        return cls(EncoderConfig(dim=0, rate=rate, use_hr=False))

    def check(self, model) -> EncoderConfig:
        """Return the config resolved for ``model`` (an untrained encoder takes the model's family, width and
        latent geometry; with the cross-attention add-on ``dit_blocks`` must equal the family's block count, see
        CROSS_ATTENTION_FAMILIES).

        Raises:
            ValueError: naming every field that does not match the model.
            NotImplementedError: the add-on is on and the model's family has no cross-attention patches.
        """
        adapter = families.adapter_for(model)
        width = families.model_width(model)
        expect = {"family": adapter.FAMILY, "dim": width, "latent_channels": adapter.LATENT_CHANNELS,
                  "vae_stride": tuple(adapter.VAE_STRIDE), "patch_size": tuple(adapter.PATCH_SIZE)}
        if self.cfg.dim == 0:
            return dataclasses.replace(self.cfg, **expect)
        if self.cfg.cross_attention:
            blocks = CROSS_ATTENTION_FAMILIES.get(adapter.FAMILY)
            if blocks is None:
                raise NotImplementedError(
                    f"memory encoder '{self.name}' has the cross-attention add-on, which is implemented for "
                    f"{', '.join(CROSS_ATTENTION_FAMILIES)} only, not {adapter.FAMILY}")
            expect["dit_blocks"] = blocks(families.diffusion_model(model))
        wrong = [k for k, v in expect.items() if getattr(self.cfg, k) != v]
        if wrong:
            hint = f" ({BLOCKS_HINT})" if "dit_blocks" in wrong else ""
            raise ValueError(
                f"memory encoder '{self.name}' does not fit this model: "
                + "; ".join(f"{k} {getattr(self.cfg, k)} (model: {expect[k]})" for k in wrong) + f"{hint}. Load the encoder "
                "trained for this model (width 1536 = Wan 2.1 1.3B, 5120 = Wan 2.1 14B, 3072 = Wan 2.2 5B and HunyuanVideo).")
        return self.cfg

    def patcher(self, model):
        """The encoder as a ComfyUI model patcher (CoreModelPatcher when present), built once per width."""
        cfg = self.check(model)
        if cfg.dim not in self._patchers:
            net = HistoryEncoder(cfg, ops=comfy.ops.manual_cast)
            if self.state_dict is not None:
                missing, unexpected = net.load_state_dict(self.state_dict, strict=False)
                if missing or unexpected:
                    raise ValueError(
                        f"memory encoder '{self.name}' does not fit its own config: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
            net.eval().requires_grad_(False)
            cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
            self._patchers[cfg.dim] = cls(
                net, load_device=comfy.model_management.get_torch_device(),
                offload_device=comfy.model_management.unet_offload_device())
        return self._patchers[cfg.dim]


def encode_segment(model, vae, encoder: MemoryEncoder, seg: HistorySegment) -> tuple[torch.Tensor, ...]:
    """Memory tokens of one history segment.

    Returns:
        tokens ``[M, D]`` float32 CPU, positions ``[M, 3]`` float32 (t relative to the segment's first latent), and
        with the cross-attention add-on the HR branch's last hidden states ``[M, hr_channels[-1]]`` float32 CPU.
    Raises:
        ValueError: encoder/DiT width mismatch or a segment too small for one memory token.
    """
    cfg = encoder.check(model)
    hr = lr = hidden = None
    if cfg.use_lr:
        pixels = lr_frames(seg.frames.float() / 255.0, seg.latent_frames, cfg)
        lr_latent = vae.encode(pixels)  # [1, C, T // rt, h', w']
        lr = families.patch_embed(model, model.model.process_latent_in(lr_latent.float().cpu()))
    if cfg.use_hr:
        patcher = encoder.patcher(model)
        latent_in = model.model.process_latent_in(seg.latent[None].float())  # [1, C, T, h, w] model space
        comfy.model_management.load_models_gpu([patcher])
        net = patcher.model
        with torch.no_grad():
            hr, hidden = net(latent_in.to(patcher.load_device), with_hidden=True)
        hr = hr.float().cpu()
    tokens = combine_branches(hr, lr)[0]
    grid = memory_grid(tuple(seg.latent.shape[1:]), cfg)
    if tokens.shape[0] != grid[0] * grid[1] * grid[2]:
        raise RuntimeError(f"LR branch grid does not match the memory grid {grid}: got {tokens.shape[0]} tokens")
    positions = memory_positions(grid, cfg, t_start=0.0)
    if cfg.cross_attention:
        return tokens, positions, hidden[0].flatten(1).T.float().cpu()  # [Ch, Tm, Hm, Wm] -> [M, Ch]
    return tokens, positions


class MultiEncoder:
    """Several history encoders used together (arXiv 2512.23851 add-on, e.g. 4x4x2 + 2x2x8): the memory is the
    concatenation of every encoder's tokens, each with its own positions (module docstring).

    Args:
        encoders: MemoryEncoder or MultiEncoder objects (nested combinations are flattened), at least two.
        name: shown in messages (default: the names joined with " + ").
    Raises:
        ValueError: fewer than two encoders, or more than one with the cross-attention add-on.
    """

    def __init__(self, encoders: list, name: str | None = None) -> None:
        parts = [p for e in encoders for p in e.parts]
        if len(parts) < 2:
            raise ValueError(f"a combination needs at least two encoders, got {len(parts)}")
        if sum(p.cfg.cross_attention for p in parts) > 1:
            raise ValueError("at most one encoder of a combination may have the cross-attention add-on")
        self._parts = parts
        self.name = name or " + ".join(p.name for p in parts)

    @property
    def parts(self) -> list[MemoryEncoder]:
        return list(self._parts)

    def check(self, model) -> list[EncoderConfig]:
        """The config of every encoder resolved for ``model`` (:meth:`MemoryEncoder.check`; same errors)."""
        return [p.check(model) for p in self._parts]


def part_key(index: int, expert: int = 0) -> str:
    """HistoryBuffer key of the ``index``-th encoder of a combination (``""`` for the first: a single encoder's), for
    the ``expert``-th DiT of a sampling schedule (0: the only or first model; 1: the Wan 2.2 A14B low-noise expert,
    whose LR branch goes through its own patch embedding: ``"expert1:"``, ``"expert1:1"``, ...)."""
    key = "" if index == 0 else str(index)
    return key if expert == 0 else f"expert{expert}:{key}"


def rate_str(model, encoder) -> str:
    """The rates of an encoder or combination, e.g. ``"4x4x2"`` or ``"4x4x2+2x2x8"``."""
    return "+".join(p.check(model).rate_str for p in encoder.parts)


def encode_pending(model, vae, encoder, history: HistoryBuffer, expert: int = 0, drop_frames: bool = True) -> int:
    """Encode the segments of ``history`` that have no memory tokens yet (in place), for every encoder of
    ``encoder`` (a MemoryEncoder or MultiEncoder), each grouped by its own time rate, under the keys of ``expert``
    (:func:`part_key`). Pixels of the encoded segments are dropped unless ``drop_frames`` is False (another expert
    still needs them: :func:`encode_pending_experts`). Returns how many segments the busiest encoder encoded.
    Raises ValueError like :meth:`HistoryBuffer.encode_pending`."""
    parts = encoder.parts
    keys = [part_key(i, expert) for i in range(len(parts))]
    n = 0
    for key, part in zip(keys, parts):
        unit = part.check(model).rate[2]
        n = max(n, history.encode_pending(lambda seg, p=part: encode_segment(model, vae, p, seg), unit=unit,
                                          key=key, keep_frames=True))
    if drop_frames:
        history.drop_frames(keys)
    return n


def next_memory(model, encoder, history: HistoryBuffer,
                expert: int = 0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Memory for the segment that follows ``history``: ``(tokens [M, D], positions [M, 3])``, time relative to the
    end of the history, or ``(None, None)``; ``model`` is the ``expert``-th DiT of the schedule (:func:`part_key`).

    The encoded history tokens of every encoder of ``encoder`` (a MemoryEncoder or MultiEncoder, concatenated in
    order), plus, with the add-on ``overlap_latent_frames = N`` (arXiv 2512.23851's sliding window of 3 latent
    frames; the largest N of a combination, added once), the last N latent frames uncompressed: the DiT's own patch
    embedding of their model-space latent at rate 1x1x1, at their original times -N .. -1.
    """
    cfgs = [p.check(model) for p in encoder.parts]
    parts = [history.memory(key=part_key(i, expert)) for i in range(len(cfgs))]
    parts = [p for p in parts if p[0] is not None]  # a slow encoder (e.g. 2x2x8) may have nothing yet
    tokens, positions = parts[0] if len(parts) == 1 else (None, None)  # one encoder: the cache view, no copy
    if len(parts) > 1:
        tokens, positions = (torch.cat(p) for p in zip(*parts))  # [M_1 + M_2 + ..., D], [M_1 + M_2 + ..., 3]
    cfg = max(cfgs, key=lambda c: c.overlap_latent_frames)  # one window, the longest asked for
    n = cfg.overlap_latent_frames
    last = history.last_latents(n) if n else None
    if last is None:
        return tokens, positions
    emb = families.patch_embed(model, model.model.process_latent_in(last[None].float()))  # [1, D, n, Ht, Wt]
    window = emb[0].flatten(1).T  # [n * Ht * Wt, D]
    grid = tuple(emb.shape[2:])
    pos = memory_positions(grid, dataclasses.replace(cfg, rate=(1, 1, 1)), t_start=-float(last.shape[1]))
    if tokens is None:
        return window, pos
    return torch.cat([tokens, window], dim=0), torch.cat([positions, pos], dim=0)


def cross_attention_part(encoder) -> tuple[int, MemoryEncoder] | None:
    """``(index, encoder)`` of the encoder with the cross-attention add-on in ``encoder.parts``, or None."""
    for i, part in enumerate(encoder.parts):
        if part.cfg.cross_attention:
            return i, part
    return None


def memory_hidden(model, encoder, history: HistoryBuffer) -> torch.Tensor | None:
    """Keys of the cross-attention add-on for the segment after ``history``: the HR branch's last hidden states of
    every encoded segment, ``[M_h, hr_channels[-1]]`` float32 CPU (M_h = that encoder's memory tokens, without the
    overlap window), or None without the add-on or before anything is encoded."""
    found = cross_attention_part(encoder)
    if found is None:
        return None
    found[1].check(model)
    parts = history.gather(part_key(found[0]))
    return None if parts is None else parts[2]


def install_cross_attention(patched, encoder) -> None:
    """Hand the cross-attention layers of ``encoder`` (if it has the add-on) to the memory block patches of
    ``patched`` (a clone from ``families.patch_model``): they go into its ``transformer_options`` (``dit_blocks``
    ``MemoryCrossAttention`` modules, layer ``i`` after counted block ``i``) and the encoder's model patcher is loaded
    and offloaded with the DiT (``set_additional_models``). No-op without the add-on.

    Raises:
        NotImplementedError: the model is not of a family in CROSS_ATTENTION_FAMILIES. ValueError: see ``check``.
    """
    found = cross_attention_part(encoder)
    if found is None:
        return
    patcher = found[1].patcher(patched)
    patched.set_additional_models(CROSS_KEY, [patcher])
    patched.model_options.setdefault("transformer_options", {})[CROSS_KEY] = patcher.model.cross


# ---- Several DiTs in one sampling schedule (Wan 2.2 A14B: high-noise expert, then low-noise expert) -----------
# The experts share the history, its latents and the encoder (HR branch weights); the LR branch goes through each
# expert's own patch embedding, so each expert caches its own memory tokens under its own keys (part_key(i, e)).
# Every expert encodes each new segment once (incremental, as for one model); the pixels are dropped only when
# all experts have encoded them.

def expert_keys(encoder, expert: int = 0) -> list[str]:
    """HistoryBuffer keys of every encoder of ``encoder`` (MemoryEncoder or MultiEncoder) for the ``expert``-th DiT."""
    return [part_key(i, expert) for i in range(len(encoder.parts))]


def memory_token_count(history: HistoryBuffer, encoder, expert: int = 0) -> int:
    """Memory tokens cached for one expert (every encoder of ``encoder``), without the overlap window: what one DiT
    of the schedule attends to. ``history.num_tokens`` counts every expert's copy."""
    keys = expert_keys(encoder, expert)
    return sum(int(s.encoded[k][0].shape[0]) for s in history.segments for k in keys if k in s.encoded)


def restore_frames(vae, encoder, history: HistoryBuffer, experts: int) -> int:
    """Give pixels back to history segments that the first expert has encoded but a later one (of ``experts``) has
    not, e.g. a memory made with one model (Encode History, a one-model Storyboard) continued with a Wan 2.2 A14B
    pair: their dropped frames are decoded again from the kept latent with ``vae`` (for generated segments these are
    the frames they were decoded to; for a starting clip, its VAE reconstruction). In place, once per segment (the
    pixels are dropped again once every expert has encoded them). Returns the number of segments decoded.

    Raises:
        ValueError: a decoded segment does not have the number of frames it stands for.
    """
    first = set(expert_keys(encoder))
    every = {k for e in range(experts) for k in expert_keys(encoder, e)}
    n = 0
    for i, seg in enumerate(history.segments):
        have = seg.encoded.keys()
        if seg.frames is not None or not first <= have or every <= have:
            continue
        images = vae.decode(seg.latent[None])
        images = images.reshape(-1, *images.shape[-3:])  # [F, H, W, 3]
        if images.shape[0] != seg.num_frames:
            raise ValueError(f"history segment {i} decodes to {images.shape[0]} frames, expected {seg.num_frames}")
        frames = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        history.segments[i] = dataclasses.replace(seg, frames=frames)
        n += 1
    if n:
        log.info("FrameMemory: decoded %d history segments again to encode them for the next expert's patch embedding", n)
    return n


def encode_pending_experts(models: list, vae, encoder, history: HistoryBuffer) -> int:
    """:func:`encode_pending` for every DiT of a sampling schedule (``models[e]`` caches its tokens under the keys of
    expert ``e``); with one model exactly :func:`encode_pending`. The last expert is encoded first: it is the one
    still loaded after sampling, and the first one, needed next, ends up loaded. Segments encoded by the first expert
    only get their pixels back first (:func:`restore_frames`). Returns how many segments the busiest expert encoded.

    Raises:
        ValueError: like :meth:`HistoryBuffer.encode_pending` and :func:`restore_frames`.
    """
    if len(models) > 1:
        restore_frames(vae, encoder, history, len(models))
    n = 0
    for e in reversed(range(len(models))):
        n = max(n, encode_pending(models[e], vae, encoder, history, expert=e, drop_frames=False))
    history.drop_frames([k for e in range(len(models)) for k in expert_keys(encoder, e)])
    return n
