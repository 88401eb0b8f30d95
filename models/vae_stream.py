"""One continuous video through a ComfyUI VAE, in parts (arXiv 2512.23851 Sec. 4: the history is one video).

A storyboard generates its video 4 latent frames at a time, and the history encoder's LR branch VAE-encodes the
downsampled history one span at a time. A causal video VAE (Wan's: one frame, then 4 frames per latent frame) would
restart its stream at every part if each part were encoded or decoded alone: a still first frame and a seam every
13 frames, and 20 % more latent frames per second. :class:`VideoStream` continues the stream instead:

- **Exact mode** (ComfyUI's ``comfy.ldm.wan.vae.WanVAE``: Wan 2.1 / Wan 2.2 A14B VAE and the pack's small ones): the
  VAE's own causal cache (``feat_cache``: per causal conv the last 2 frames of its input, which ``WanVAE.encode`` /
  ``decode`` keep between the chunks of one clip) is kept between parts. Each stock ``VAE.encode`` / ``VAE.decode``
  call (ComfyUI's memory management, dtype and device handling) runs with the stream's cache handed to the encoder /
  decoder module, so a part continues the previous one exactly as the chunks of one clip do: the result equals a
  one-shot encode / decode of the whole video (tested on ComfyUI 0.3.75 and 0.33.0, max abs diff <= 1e-5).
  An encoded continuation part (4k frames) gets the 1-frame first chunk that ``WanVAE.encode`` always cuts off
  answered without running the encoder, so its frames are chunked as in the whole video.
  The cache layout is ComfyUI's and changed in v0.18 (``count_conv3d`` -> ``count_cache_layers``; chunks of 1, 4, 4
  frames -> 1, 2, 2 with a ``Resample`` output deferred to the next chunk and flushed by ``final=``); it is detected
  by the counting function the installed ComfyUI has (:func:`cache_slots`), never by version. A part ends with
  ``final`` (flushed), so a causal conv may have seen a 1-frame chunk last, where the newer VAE caches one frame
  (it relies on the deferral to see two); after every chunk the stream restores the second frame from the slot's
  previous content (:func:`_keep_two_frames`), which makes the part boundary invisible on both layouts.
- **Context mode** (every other VAE): the part is encoded / decoded together with the last ``context`` latent
  frames of the stream before it (``1 + ft * (context - 1)`` frames), whose output is dropped. Approximate: the
  difference to a one-shot pass is what the VAE's receptive field reaches beyond the context (measured in
  ``tests/test_vae_stream.py`` and benchmarks/README.md).

The cache lives on the CPU between parts (a decoder cache at 480p is hundreds of MB) and is copied, not shared, by
:meth:`VideoStream.copy`, so a MEMORY value handed to two nodes never changes under either.
"""
from __future__ import annotations

import contextlib

import torch

CONTEXT_LATENTS = 4  # context mode: latent frames of the stream before a part that are encoded / decoded with it


def cache_slots(fsm, inner: torch.nn.Module) -> int | None:
    """Length of the causal cache that ``fsm.encode`` / ``decode`` (a ``WanVAE``) allocate for its module ``inner``
    (``fsm.encoder`` or ``fsm.decoder``), from the counting function the installed ComfyUI has: ComfyUI >= 0.18
    ``count_cache_layers(inner)`` (causal convs + one deferred-output slot per ``downsample3d``), before it
    ``count_conv3d(fsm.decoder)`` (for both). None when neither exists (an unknown layout: context mode)."""
    import comfy.ldm.wan.vae as wan_vae

    if hasattr(wan_vae, "count_cache_layers"):
        return wan_vae.count_cache_layers(inner)
    if hasattr(wan_vae, "count_conv3d"):
        return wan_vae.count_conv3d(fsm.decoder)
    return None


def exact_supported(vae) -> bool:
    """True when ``vae`` (``comfy.sd.VAE``) is ComfyUI's Wan 2.1 ``WanVAE`` with a cache layout this module knows
    (:func:`cache_slots`): the exact, cached mode."""
    from comfy.ldm.wan.vae import WanVAE

    fsm = getattr(vae, "first_stage_model", None)
    return type(fsm) is WanVAE and cache_slots(fsm, fsm.decoder) is not None


def _keep_two_frames(before: list, cache: list) -> None:
    """After one chunk: a slot that held frames and now holds a 1-frame tensor gets the previous content's last frame
    prepended, so it keeps the last 2 frames its causal conv saw (what the cache means; ComfyUI < 0.18 did this
    itself). Slots that only read their last frame (``Resample``) are unaffected; deferred outputs go None <-> tensor
    within one chunk and are never touched."""
    for k, (old, new) in enumerate(zip(before, cache)):
        if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and new is not old and new.shape[2] == 1:
            cache[k] = torch.cat([old[:, :, -1:].to(new), new], dim=2)


class _CachedModule(torch.nn.Module):
    """Stands in for ``WanVAE.encoder`` / ``.decoder`` during one stock call: runs the real module with the
    stream's cache instead of the fresh one ``WanVAE.encode`` / ``decode`` made. With ``skip_first`` (an encoded
    continuation part), the first call (the 1-frame chunk ``WanVAE.encode`` always cuts off) returns an empty
    output and leaves the cache alone. Attribute access falls through to the real module: ComfyUI's loader
    (``model_patcher._load_list`` / ``get_key_weight``, ComfyUI >= 0.4) walks paths such as ``decoder.conv1``."""

    def __init__(self, inner: torch.nn.Module, cache: list, skip_first: bool, out_channels: int, down: int) -> None:
        super().__init__()
        self.inner = inner
        self.cache, self.skip_first = cache, skip_first
        self.out_channels, self.down = out_channels, down

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, x, feat_cache=None, feat_idx=None, **kwargs):
        if self.skip_first:
            self.skip_first = False
            return x.new_zeros((x.shape[0], self.out_channels, 0, x.shape[3] // self.down, x.shape[4] // self.down))
        if isinstance(feat_cache, list) and len(feat_cache) != len(self.cache):
            raise RuntimeError(f"WanVAE allocated a causal cache of {len(feat_cache)} slots, FrameMemory's stream "
                               f"{len(self.cache)}: this ComfyUI changed the Wan VAE cache layout (models/vae_stream.py)")
        before = list(self.cache)
        out = self.inner(x, feat_cache=self.cache, feat_idx=feat_idx if feat_idx is not None else [0], **kwargs)
        _keep_two_frames(before, self.cache)
        return out


@contextlib.contextmanager
def streamed(fsm, name: str, cache: list, skip_first: bool = False):
    """Within the block, ``fsm.<name>`` (``fsm`` a ``WanVAE``, ``name`` ``"encoder"`` or ``"decoder"``) runs with
    ``cache`` (a list of :func:`cache_slots` slots, updated in place) instead of the fresh cache ``WanVAE.encode`` /
    ``decode`` allocate, so the stock loop continues the stream (:class:`_CachedModule`; ``skip_first``: an encoded
    continuation part whose duplicated first frame is answered without running the encoder). Used by
    :class:`VideoStream` (inference, under ComfyUI's ``VAE``) and ``training/vae_train.py`` (the lab VAE's burn-in,
    with gradients). Raises ValueError when ``cache`` does not have the layout's slot count."""
    inner = getattr(fsm, name)
    slots = cache_slots(fsm, inner)
    if len(cache) != slots:
        raise ValueError(f"this VAE stream's causal cache has {len(cache)} slots, the VAE's layout {slots}: it "
                         "was made with another VAE or another ComfyUI version's Wan VAE; start a new stream")
    proxy = _CachedModule(inner, cache, skip_first, 2 * fsm.z_dim, 2 ** (len(fsm.dim_mult) - 1))
    object.__setattr__(fsm, name, proxy)  # instance attribute: found before nn.Module's registered child
    try:
        yield proxy
    finally:
        del fsm.__dict__[name]


class VideoStream:
    """Encode (``mode="encode"``) or decode (``mode="decode"``) one continuous video in parts (module docstring).

    Args:
        vae: a ``comfy.sd.VAE``. mode: ``"encode"`` or ``"decode"``.
        time_stride: video frames per latent frame ``ft`` of the VAE (4 for Wan and HunyuanVideo).
        context: latent frames of context in context mode (:data:`CONTEXT_LATENTS`).
    Raises:
        ValueError: an unknown mode.
    """

    def __init__(self, vae, mode: str, time_stride: int = 4, context: int = CONTEXT_LATENTS) -> None:
        if mode not in ("encode", "decode"):
            raise ValueError(f"mode must be 'encode' or 'decode', got {mode!r}")
        self.vae, self.mode, self.ft, self.context = vae, mode, time_stride, context
        self.exact = exact_supported(vae)
        self.cache: list | None = None  # exact mode: the WanVAE causal cache (CPU); None before the first part
        self.tail: torch.Tensor | None = None  # context mode: the stream's last frames (encode) / latents (decode)
        self.started = False

    def copy(self) -> "VideoStream":
        """An independent stream in the same state (cache list copied; its tensors are replaced, never changed)."""
        other = VideoStream(self.vae, self.mode, self.ft, self.context)
        other.cache = None if self.cache is None else list(self.cache)
        other.tail, other.started = self.tail, self.started
        return other

    def reset(self) -> None:
        """Start a new stream (the next part starts with the causal one-frame latent)."""
        self.cache, self.tail, self.started = None, None, False

    def frames_for(self, latent_frames: int) -> int:
        """Video frames of the next part of ``latent_frames`` latent frames (the stream's first latent: 1 frame)."""
        return self.ft * latent_frames - (0 if self.started else self.ft - 1)

    @torch.no_grad()  # outside ComfyUI's executor (scripts, tests) the kept cache would otherwise hold the autograd
    def encode(self, frames: torch.Tensor) -> torch.Tensor:  # graph of every earlier part (+285 MB per part measured)
        """The next part's latent ``[1, C, T, h, w]`` (VAE space, CPU float32) from frames ``[F, H, W, 3]`` 0..1,
        ``F = frames_for(T)``. Raises ValueError for a frame count that is no whole number of latent frames."""
        if self.mode != "encode":
            raise ValueError("this VideoStream decodes")
        f = int(frames.shape[0])
        lead = 0 if self.started else 1
        if f < 1 or (f - lead) % self.ft:
            raise ValueError(f"a {'continuation' if self.started else 'first'} part needs {lead} + {self.ft}k frames, "
                             f"got {f}")
        if self.exact:
            out = self._exact(frames if not self.started else torch.cat([frames[:1], frames]), skip_first=self.started)
        else:
            out = self._context_encode(frames)
        self.started = True
        return out.float().cpu()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The next part's frames ``[F, H, W, 3]`` float32 0..1 (CPU), ``F = frames_for(T)``, from a VAE-space
        latent ``[1, C, T, h, w]``."""
        if self.mode != "decode":
            raise ValueError("this VideoStream encodes")
        if self.exact:
            out = self._exact(latent, skip_first=False)
        else:
            out = self._context_decode(latent)
        self.started = True
        return out.reshape(-1, *out.shape[-3:]).float().cpu()

    def _exact(self, x: torch.Tensor, skip_first: bool) -> torch.Tensor:
        fsm = self.vae.first_stage_model
        name = "encoder" if self.mode == "encode" else "decoder"
        if self.cache is None:
            self.cache = [None] * cache_slots(fsm, getattr(fsm, name))  # the length WanVAE.encode / decode allocate
        device = self.vae.device
        cache = [t.to(device) if isinstance(t, torch.Tensor) else t for t in self.cache]
        try:
            with streamed(fsm, name, cache, skip_first):
                out = self.vae.encode(x[..., :3]) if self.mode == "encode" else self.vae.decode(x)
        finally:
            self.cache = [t.to("cpu") if isinstance(t, torch.Tensor) else t for t in cache]
        return out

    def _context_encode(self, frames: torch.Tensor) -> torch.Tensor:
        ctx = self.tail if self.started else None
        clip = frames if ctx is None else torch.cat([ctx, frames])
        out = self.vae.encode(clip[..., :3])
        self.tail = clip[-(1 + self.ft * (self.context - 1)):].clone()
        return out if ctx is None else out[:, :, -(frames.shape[0] // self.ft):]

    def _context_decode(self, latent: torch.Tensor) -> torch.Tensor:
        ctx = self.tail if self.started else None
        z = latent if ctx is None else torch.cat([ctx.to(latent), latent], dim=2)
        out = self.vae.decode(z)  # [1, F, H, W, 3]
        out = out.reshape(-1, *out.shape[-3:])
        drop = 0 if ctx is None else 1 + self.ft * (ctx.shape[2] - 1)
        self.tail = z[:, :, -self.context:].detach().cpu().clone()
        return out[drop:]


__all__ = ["VideoStream", "CONTEXT_LATENTS", "cache_slots", "exact_supported", "streamed"]
