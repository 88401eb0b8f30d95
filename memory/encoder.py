"""History encoder phi(H) of arXiv 2512.23851 (Sec. 3, Fig. 2): one module, used by inference and training.

:class:`HistoryEncoder` is Fig. 2 end to end, for one span of history of ``T`` latent frames (whole memory time
steps of ``rt`` latent frames each):

1. **LR branch** (no weights of its own): the span's video frames are downsampled in pixel space at the rate
   (:func:`lr_clip`: ``rh x rw`` area resize of the region the memory grid covers, and ``rt``-frame temporal means
   centred on the memory tokens' times), encoded by the DiT's own VAE (the caller: ``models/`` at inference,
   ``training/data.py`` for the shards; both through :func:`models.vae_stream`'s continuous stream) and
   patch-embedded by the DiT's own first projection (the ``embed`` callable: Wan ``patch_embedding``,
   HunyuanVideo ``img_in``), landing on the memory grid ``(Tm, Hm, Wm)``.
2. **HR branch** (:class:`HRBranch`, the weights): the full-resolution latent through strided 3D convolutions with
   SiLU that reduce time first, then space, spatial attention at the last width, and a zero-initialised 1x1x1
   projection to the DiT width D (an untrained HR branch adds nothing).
3. **Sum** of the two ``[B, D, Tm, Hm, Wm]`` maps, flattened to memory tokens ``[B, M, D]`` in ``(t, h, w)`` order.

Design choice (Sec. 3 leaves it open): every HR convolution has a temporal kernel of 1 or a temporal kernel equal
to its temporal stride, and attention is local to one memory time step. Hence the encoding of a history is the
concatenation of the encodings of its spans whenever span lengths are multiples of ``rt`` latent frames
("almost fully convolutional": appending a segment never re-encodes the past). The LR branch keeps the same
property because the VAE runs as one causal stream over the history (the cache of the previous span is kept).

Add-on (arXiv 2512.23851, "cross-attention from the encoder's last hidden states into every DiT block"): with
``cfg.cross_attention`` the encoder also owns ``cfg.dit_blocks`` :class:`MemoryCrossAttention` layers (``cross.i``
in its state dict), one per DiT block, whose keys/values are the HR branch's last hidden states (before the output
projection, ``hr_channels[-1]`` wide) and whose zero-initialised output projection makes an untrained one add nothing.
The model adapters (``models/cross_attention.py``) run layer ``i`` after DiT block ``i``; the training losses run
the same layers (``training/stages.py``), so the add-on learns in Stage I and II.
"""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import EncoderConfig
from .grid import memory_grid, memory_positions, token_grid

TORCH_OPS = SimpleNamespace(Conv3d=nn.Conv3d, Linear=nn.Linear, LayerNorm=nn.LayerNorm)


def _split_stride(factor: int) -> list[int]:
    """Split a spatial reduction factor into stride-2 stages (plus one odd remainder stage)."""
    stages = []
    while factor > 1 and factor % 2 == 0:
        stages.append(2)
        factor //= 2
    if factor > 1:
        stages.append(factor)
    return stages


class _ResBlock(nn.Module):
    """SiLU -> (1,3,3) conv -> SiLU -> (1,3,3) conv, residual. Spatial only: no mixing across time."""

    def __init__(self, ch: int, ops) -> None:
        super().__init__()
        self.conv1 = ops.Conv3d(ch, ch, (1, 3, 3), padding=(0, 1, 1))
        self.conv2 = ops.Conv3d(ch, ch, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class _SpatialAttention(nn.Module):
    """Pre-norm multi-head self-attention over the ``Hm x Wm`` tokens of each memory time step (local in time)."""

    def __init__(self, ch: int, heads: int, ops) -> None:
        super().__init__()
        self.heads = heads
        self.norm = ops.LayerNorm(ch)
        self.qkv = ops.Linear(ch, 3 * ch)
        self.out = ops.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = rearrange(x, "b c t h w -> (b t) (h w) c")
        q, k, v = rearrange(self.qkv(self.norm(y)), "n s (three k d) -> three n k s d", three=3, k=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        y = self.out(rearrange(y, "n k s d -> n s (k d)"))
        return x + rearrange(y, "(b t) (h w) c -> b c t h w", b=b, t=t, h=h, w=w)


class MemoryCrossAttention(nn.Module):
    """Cross-attention from a DiT block's video tokens to the encoder's hidden states (add-on, module docstring).

    Pre-norm on both sides, ``heads`` heads over the DiT width, no positional encoding (like Wan's text
    cross-attention; the memory tokens in self-attention carry the positions), residual with a zero-initialised
    output projection (:meth:`HistoryEncoder.reset_parameters`).

    Args:
        dim: DiT width D (query and output). ctx_dim: hidden-state width (``hr_channels[-1]``). heads: divides D.
    """

    def __init__(self, dim: int, ctx_dim: int, heads: int, ops) -> None:
        super().__init__()
        self.heads = heads
        self.norm = ops.LayerNorm(dim)
        self.norm_ctx = ops.LayerNorm(ctx_dim)
        self.q = ops.Linear(dim, dim)
        self.kv = ops.Linear(ctx_dim, 2 * dim)
        self.out = ops.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, N, D]`` video tokens, ``ctx`` ``[B, M, Ch]`` hidden states (same dtype) -> ``[B, N, D]``."""
        q = rearrange(self.q(self.norm(x)), "b n (k d) -> b k n d", k=self.heads)
        k, v = rearrange(self.kv(self.norm_ctx(ctx)), "b m (two k d) -> two b k m d", two=2, k=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(rearrange(y, "b k n d -> b n (k d)"))


class HRBranch(nn.Module):
    """HR branch of Fig. 2 (weights: ``layers.*``, ``proj.*``): ``[B, C, T, h, w]`` model-space latent ->
    ``[B, D, Tm, Hm, Wm]`` on the memory grid (:func:`memory.grid.memory_grid`), plus the last hidden states.

    Args:
        cfg: the encoder config (``dim`` > 0). ops: namespace with ``Conv3d``, ``Linear``, ``LayerNorm`` classes.
    """

    def __init__(self, cfg: EncoderConfig, ops=TORCH_OPS) -> None:
        super().__init__()
        rh, rw, rt = cfg.rate
        pt, ph, pw = cfg.patch_size
        chans = list(cfg.hr_channels)
        sh, sw = _split_stride(ph * rh), _split_stride(pw * rw)
        n_space = max(len(sh), len(sw))
        sh += [1] * (n_space - len(sh))
        sw += [1] * (n_space - len(sw))
        layers: list[nn.Module] = [ops.Conv3d(cfg.latent_channels, chans[0], (1, 3, 3), padding=(0, 1, 1))]
        # time first: kernel = stride = pt*rt, so memory time step i sees exactly its own latent frames
        kt = pt * rt
        ch = chans[min(1, len(chans) - 1)]
        layers += [nn.SiLU(), ops.Conv3d(chans[0], ch, (kt, 1, 1), stride=(kt, 1, 1)), _ResBlock(ch, ops)]
        for i, (a, b) in enumerate(zip(sh, sw)):
            nxt = chans[min(i + 2, len(chans) - 1)]
            layers += [nn.SiLU(), ops.Conv3d(ch, nxt, (1, a, b), stride=(1, a, b)), _ResBlock(nxt, ops)]
            ch = nxt
        if ch != chans[-1]:
            layers += [nn.SiLU(), ops.Conv3d(ch, chans[-1], 1)]
            ch = chans[-1]
        layers += [_SpatialAttention(ch, cfg.attn_heads, ops), nn.SiLU()]
        self.layers = nn.Sequential(*layers)
        self.proj = ops.Conv3d(ch, cfg.dim, 1)  # zero-initialised by HistoryEncoder.reset_parameters

    def forward(self, latent: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y [B, D, Tm, Hm, Wm], hidden [B, hr_channels[-1], Tm, Hm, Wm])``, both cropped to ``grid``."""
        hidden = self.layers(latent)[:, :, : grid[0], : grid[1], : grid[2]]
        return self.proj(hidden), hidden


class HistoryEncoder(nn.Module):
    """The history encoder of Fig. 2 (module docstring): LR branch + HR branch, summed, as memory tokens.

    Args:
        cfg: the encoder config; ``cfg.dim`` must be > 0 (an untrained LR-only encoder resolves it to the DiT's
            width first: ``cfg.with_dim(D)``).
        ops: a namespace with ``Conv3d``, ``Linear``, ``LayerNorm`` classes (``torch.nn`` by default; the ComfyUI
            adapter passes ``comfy.ops.manual_cast`` so the weights stream under ComfyUI's memory management).

    Raises:
        ValueError: ``cfg.dim`` is 0.
    """

    def __init__(self, cfg: EncoderConfig, ops=TORCH_OPS) -> None:
        super().__init__()
        if cfg.dim <= 0:
            raise ValueError("EncoderConfig.dim is 0: resolve it to the DiT width with cfg.with_dim(D) first")
        self.cfg = cfg
        self.hr = HRBranch(cfg, ops) if cfg.use_hr else None
        self.cross = None
        if cfg.cross_attention:
            self.cross = nn.ModuleList(
                MemoryCrossAttention(cfg.dim, cfg.hr_channels[-1], cfg.attn_heads, ops) for _ in range(cfg.dit_blocks))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """LeCun-uniform init of every matrix/kernel (bound ``sqrt(3 / fan_in)``: unit-variance preserving; comfy.ops
        layers skip init), norm scales 1, zero biases, and zero output projections (HR ``proj``, cross-attention
        ``out``) so an untrained encoder adds nothing."""
        for m in self.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.ndim >= 2:
                bound = math.sqrt(3.0 / w[0].numel())
                with torch.no_grad():
                    w.uniform_(-bound, bound, generator=generator)
            elif isinstance(w, torch.Tensor):
                with torch.no_grad():
                    w.fill_(1.0)
            b = getattr(m, "bias", None)
            if isinstance(b, torch.Tensor):
                with torch.no_grad():
                    b.zero_()
        zero = [self.hr.proj] if self.hr is not None else []
        zero += [layer.out for layer in self.cross] if self.cross is not None else []
        with torch.no_grad():
            for layer in zero:
                layer.weight.zero_()
                layer.bias.zero_()

    def grid(self, latent: torch.Tensor) -> tuple[int, int, int]:
        """Memory grid ``(Tm, Hm, Wm)`` of a ``[B, C, T, h, w]`` latent. Raises ValueError (wrong channel count, or a
        span below one memory token)."""
        cfg = self.cfg
        if latent.ndim != 5 or latent.shape[1] != cfg.latent_channels:
            raise ValueError(f"expected a [B, {cfg.latent_channels}, T, h, w] latent, got {tuple(latent.shape)}")
        grid = memory_grid(tuple(latent.shape[2:]), cfg)
        if min(grid) < 1:
            raise ValueError(
                f"latent of {tuple(latent.shape[2:])} (T, h, w) is smaller than one memory token at rate "
                f"{cfg.rate_str}; use longer segments or a larger resolution")
        return grid

    def hr_branch(self, latent: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The DiT-independent half of :meth:`forward`: ``(hr [B, D, Tm, Hm, Wm], hidden [B, M, hr_channels[-1]])``
        of the HR branch for ``latent`` (as in :meth:`forward`), or ``(None, None)`` without an HR branch. Pass it
        to :meth:`forward` as ``hr_out`` to encode one span for several DiTs (Wan 2.2 A14B experts) with the HR branch
        run once. Raises ValueError like :meth:`grid`."""
        if self.hr is None:
            return None, None
        hr, hidden = self.hr(latent, self.grid(latent))  # [B, D, Tm, Hm, Wm], [B, Ch, Tm, Hm, Wm]
        return hr, rearrange(hidden, "b c t h w -> b (t h w) c")

    def forward(self, latent: torch.Tensor, lr_latent: torch.Tensor | None = None,
                embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
                hr_out: tuple[torch.Tensor | None, torch.Tensor | None] | None = None):
        """Fig. 2 for one span of history.

        Args:
            latent: ``[B, C, T, h, w]`` model-space latent (after ``process_latent_in``) of the span; ``T`` a multiple
                of ``rt`` (a remainder is not covered).
            lr_latent: ``[B, C, Tm, Hm * ph, Wm * pw]`` model-space VAE latent of :func:`lr_clip` of the span's frames
                (needed when ``cfg.use_lr``).
            embed: the DiT's own first projection, ``[B, C, T', h', w'] -> [B, D, T', h' // ph, w' // pw]`` (frozen;
                needed when ``cfg.use_lr``).
            hr_out: :meth:`hr_branch` of this ``latent``, computed before (reused, not recomputed), or None.
        Returns:
            ``(tokens [B, M, D], hidden [B, M, hr_channels[-1]] or None)``: memory tokens in ``(t, h, w)`` order,
            ``M = Tm * Hm * Wm``, on the HR branch's device and dtype (the LR output is moved there), and the HR
            branch's last hidden states (keys of the cross-attention add-on; None without an HR branch).
        Raises:
            ValueError: see :meth:`grid`; ``use_lr`` without ``lr_latent``/``embed``; an LR latent off the grid.
        """
        cfg = self.cfg
        grid = self.grid(latent)
        lr = None
        if cfg.use_lr:
            if lr_latent is None or embed is None:
                raise ValueError("the LR branch needs lr_latent (VAE latent of lr_clip of the frames) and the DiT's "
                                 "embed function")
            lr = embed(lr_latent)  # [B, C, Tm, Hm*ph, Wm*pw] -> [B, D, Tm, Hm, Wm]
            if tuple(lr.shape[2:]) != grid:
                raise ValueError(f"the LR branch gives a {tuple(lr.shape[2:])} grid, the memory grid is {grid}: "
                                 "make lr_latent from lr_clip of the same span")
        hr, hidden = self.hr_branch(latent) if hr_out is None else hr_out  # [B, D, Tm, Hm, Wm], [B, M, Ch]
        if lr is not None and hr is not None:
            lr = lr.to(device=hr.device, dtype=hr.dtype)
        tokens = combine_branches(hr, lr)  # [B, Tm*Hm*Wm, D]
        return tokens, hidden


class EncoderSet(nn.Module):
    """Several history encoders used and trained together (arXiv 2512.23851 add-on "a second encoder at 2x2x8
    concatenated"): the memory is the concatenation of every part's tokens, each at its own positions; each part has
    its own LR latent (its own rate). Training holds the set as one module (``training/stages.py``) and exports one
    encoder file per part, which the nodes load and combine (Combine Memory Encoders).

    Args:
        parts: at least two :class:`HistoryEncoder` s of one DiT (same family and width).
    Raises:
        ValueError: fewer than two parts, several with the cross-attention add-on, different DiTs or timestep rules.
    """

    def __init__(self, parts: list[HistoryEncoder]) -> None:
        super().__init__()
        if len(parts) < 2:
            raise ValueError(f"an encoder set needs at least two encoders, got {len(parts)}")
        if sum(p.cfg.cross_attention for p in parts) > 1:
            raise ValueError("at most one encoder of a set may have the cross-attention add-on")
        for key in ("family", "dim", "memory_timestep", "latent_channels"):
            if len({getattr(p.cfg, key) for p in parts}) > 1:
                raise ValueError(f"the encoders of a set must agree on {key}: {[getattr(p.cfg, key) for p in parts]}")
        self.parts = nn.ModuleList(parts)


def encoder_parts(encoder) -> list:
    """The encoders whose tokens make up the memory: ``encoder.parts`` of an :class:`EncoderSet`, else ``[encoder]``."""
    return list(encoder.parts) if isinstance(encoder, EncoderSet) else [encoder]


def lr_frames_per_span(latent_frames: int, cfg: EncoderConfig, stream_start: bool) -> tuple[int, int]:
    """``(video frames, LR frames)`` of a span of ``latent_frames`` latent frames (a multiple of ``pt * rt``).

    A latent frame stands for ``ft`` video frames, except the first latent frame of a causal stream (one frame).
    Each memory time step gets ``ft`` LR frames (one LR latent frame after the VAE), except the stream's first
    (one LR frame: the VAE's causal first latent). ``stream_start``: the span starts the video stream.

    Raises:
        ValueError: ``latent_frames`` is not a positive multiple of ``pt * rt``.
    """
    ft = cfg.vae_stride[0]
    step = cfg.patch_size[0] * cfg.rate[2]
    if latent_frames < step or latent_frames % step:
        raise ValueError(f"a history span of {latent_frames} latent frames is not a whole number of memory time steps "
                         f"({step} latent frames each at rate {cfg.rate_str})")
    tm = latent_frames // step
    if stream_start and ft > 1:
        return 1 + ft * (latent_frames - 1), 1 + ft * (tm - 1)
    return ft * latent_frames, ft * tm


def lr_clip(frames: torch.Tensor, cfg: EncoderConfig, stream_start: bool, clamp: bool = True) -> torch.Tensor:
    """Pixel-space downsample of a span of history for the LR branch (Fig. 2), at the rate ``rh x rw x rt``.

    Space: the region the memory grid covers (top-left ``Hm * rh * ph * fh`` x ``Wm * rw * pw * fw`` pixels, the
    floored remainder dropped as :func:`memory.grid.memory_grid` drops it) is area-resized by ``rh x rw``, so the
    DiT's VAE and patch embedding land exactly on the HR branch's ``(Hm, Wm)`` grid over the same region.
    Time: each LR frame is the mean of ``rt * pt`` consecutive video frames, so one memory time step (``rt`` latent
    frames = ``ft * rt`` video frames) gives ``ft`` LR frames = one LR latent frame, centred on the token's time
    (:func:`memory.grid.memory_positions`); the first step of a causal stream (``1 + ft * (rt - 1)`` frames) is
    averaged into the one frame the VAE's causal first latent takes.

    Args:
        frames: ``[F, H, W, 3]`` float in 0..1 (ComfyUI IMAGE), the span's video frames, F as
            :func:`lr_frames_per_span` gives for its latent length.
        stream_start: the span starts the video stream (the VAE's first latent frame is a single frame).
        clamp: clamp to 0..1 (default; False keeps the map linear, for the reproduction's linear stand-in VAE on
            masked histories, which decode outside 0..1).
    Returns:
        ``[F_lr, H_lr, W_lr, 3]`` float32 (0..1 with ``clamp``), ``H_lr = Hm * ph * fh``, ``W_lr = Wm * pw * fw``.
    Raises:
        ValueError: frames are not ``[F, H, W, 3]``, their count fits no whole number of memory time steps, or the
            frame is below one memory token.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected IMAGE frames [F, H, W, 3], got {tuple(frames.shape)}")
    ft, fh, fw = cfg.vae_stride
    pt, ph, pw = cfg.patch_size
    rh, rw, rt = cfg.rate
    f, height, width, _ = frames.shape
    first = 1 + ft * (pt * rt - 1) if stream_start and ft > 1 else 0  # frames of the causal first step
    if (f - first) % (ft * pt * rt) or f < max(first, 1):
        raise ValueError(f"{f} frames are no whole number of memory time steps at rate {cfg.rate_str} "
                         f"({ft * pt * rt} frames each{', the first ' + str(first) if first else ''})")
    _, hm, wm = memory_grid((1, height // fh, width // fw), dataclasses.replace(cfg, rate=(rh, rw, 1)))
    if min(hm, wm) < 1:
        raise ValueError(f"frames of {width}x{height} are below one memory token at rate {cfg.rate_str}")
    x = frames[:, : hm * rh * ph * fh, : wm * rw * pw * fw].float()  # covered region [F, H', W', 3]
    parts = [x[:first].mean(0, keepdim=True)] if first else []
    parts.append(rearrange(x[first:], "(n r) h w c -> n r h w c", r=pt * rt).mean(1))  # [F_lr, H', W', 3]
    clip = torch.cat(parts).movedim(-1, 1)  # [F_lr, 3, H', W']
    clip = F.interpolate(clip, size=(hm * ph * fh, wm * pw * fw), mode="area").movedim(1, -1)
    return clip.clamp(0, 1) if clamp else clip


def overlap_window(embed: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor,
                   cfg: EncoderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Add-on of arXiv 2512.23851 ("sliding window", paper: 3 latent frames): the history's last ``N`` latent frames
    as uncompressed memory tokens, the DiT's own first projection at rate 1x1x1 at their original times ``-N .. -1``.

    Args:
        embed: the DiT's first projection (as for :meth:`HistoryEncoder.forward`).
        latent: ``[B, C, N, h, w]`` model-space latent of the last N frames.
    Returns:
        ``(tokens [B, N * Ht * Wt, D], positions [N * Ht * Wt, 3] float32)`` in ``(t, h, w)`` order.
    """
    emb = embed(latent)  # [B, D, N, Ht, Wt]
    grid = tuple(emb.shape[2:])
    pos = memory_positions(grid, dataclasses.replace(cfg, rate=(1, 1, 1)), t_start=-float(latent.shape[2]))
    return rearrange(emb, "b d t h w -> b (t h w) d"), pos


def combine_branches(hr: torch.Tensor | None, lr: torch.Tensor | None) -> torch.Tensor:
    """Sum the two branches (``[B, D, Tm, Hm, Wm]`` each, cropped to their common grid) and flatten to
    memory tokens ``[B, M, D]`` in ``(t, h, w)`` order.

    Raises:
        ValueError: both are None.
    """
    parts = [p for p in (hr, lr) if p is not None]
    if not parts:
        raise ValueError("both encoder branches are disabled")
    grid = [min(p.shape[i] for p in parts) for i in (2, 3, 4)]
    y = sum(p[:, :, : grid[0], : grid[1], : grid[2]] for p in parts)
    return rearrange(y, "b d t h w -> b (t h w) d")


__all__ = ["HistoryEncoder", "HRBranch", "EncoderSet", "encoder_parts", "MemoryCrossAttention", "lr_clip", "lr_frames_per_span", "overlap_window", "combine_branches", "token_grid", "memory_grid"]
