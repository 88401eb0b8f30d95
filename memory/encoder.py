"""History encoder phi(H) of arXiv 2512.23851 (Sec. 3, "almost fully convolutional" dual-branch encoder).

Two branches, summed after the DiT's first projection, both landing on the memory-token grid
``(T // rt, Ht // rh, Wt // rw)`` of a history segment:

- **LR branch** (no weights of its own): the segment's frames are downsampled in pixel space
  (:func:`lr_frames`), encoded by the DiT's own VAE and patch-embedded by the DiT's own first projection.
  Those two calls live in the model adapter (``models/``); this module prepares the pixels.
- **HR branch** (:class:`HistoryEncoder`): the full-resolution latent goes through strided 3D convolutions
  with SiLU that reduce time first (kernel = stride = ``rt``), then space (stride-2 stages, kernel = stride),
  widths ``hr_channels`` (64 -> 128 -> 256 -> 512), spatial self-attention at the last width, and a
  zero-initialised 1x1x1 projection to the DiT width D, so an untrained HR branch adds nothing.

Design choice (documented for Sec. 3's unpublished details): every convolution either has a temporal kernel
of 1 or a temporal kernel equal to its temporal stride, and attention is local to one memory time step.
Hence the encoding of a history is the concatenation of the encodings of its segments whenever segment
lengths are multiples of ``rt`` latent frames: appending a segment never re-encodes the past, and its cost does
not grow with the history.

Add-on (arXiv 2512.23851, "cross-attention from the encoder's last hidden states into every DiT block"): with
``cfg.cross_attention`` the encoder also owns ``cfg.dit_blocks`` :class:`MemoryCrossAttention` layers (``cross.i``
in its state dict), one per DiT block, whose keys/values are the HR branch's last hidden states (before the output
projection, ``hr_channels[-1]`` wide) and whose zero-initialised output projection makes an untrained one add nothing.
The model adapter (``models/wan.py``, ``models/hunyuan.py``: double then single blocks) runs layer ``i`` after DiT
block ``i`` on the block's video tokens.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import EncoderConfig
from .grid import memory_grid, token_grid

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


class HistoryEncoder(nn.Module):
    """HR branch of the history encoder; holds the config of the whole encoder.

    Args:
        cfg: the encoder config; ``cfg.dim`` must be > 0 to build weights.
        ops: a namespace with ``Conv3d``, ``Linear``, ``LayerNorm`` classes (``torch.nn`` by default;
            the ComfyUI adapter passes ``comfy.ops.manual_cast`` so the weights stream under ComfyUI's
            memory management).

    Raises:
        ValueError: ``cfg.dim`` is 0 (resolve the width with ``cfg.with_dim`` first).
    """

    def __init__(self, cfg: EncoderConfig, ops=TORCH_OPS) -> None:
        super().__init__()
        if cfg.dim <= 0:
            raise ValueError("EncoderConfig.dim is 0: resolve it to the DiT width with cfg.with_dim(D) first")
        self.cfg = cfg
        self.cross = None
        if not cfg.use_hr:
            self.hr = None
            return
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
        self.hr = nn.Sequential(*layers)
        self.proj = ops.Conv3d(ch, cfg.dim, 1)
        if cfg.cross_attention:
            self.cross = nn.ModuleList(
                MemoryCrossAttention(cfg.dim, ch, cfg.attn_heads, ops) for _ in range(cfg.dit_blocks))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform init of every layer (comfy.ops layers skip init), zero bias, zero output projection."""
        for m in self.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.ndim >= 2:
                fan_in = w[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                with torch.no_grad():
                    w.uniform_(-bound * math.sqrt(3), bound * math.sqrt(3), generator=generator)
            elif isinstance(w, torch.Tensor):
                with torch.no_grad():
                    w.fill_(1.0)
            b = getattr(m, "bias", None)
            if isinstance(b, torch.Tensor):
                with torch.no_grad():
                    b.zero_()
        zero = [self.proj] if self.hr is not None else []
        zero += [layer.out for layer in self.cross] if self.cross is not None else []
        with torch.no_grad():
            for layer in zero:
                layer.weight.zero_()
                layer.bias.zero_()

    def forward(self, latent: torch.Tensor, with_hidden: bool = False):
        """HR branch: ``[B, C, T, h, w]`` latent (model-space, i.e. after ``process_latent_in``) ->
        ``[B, D, Tm, Hm, Wm]`` on the memory grid of :func:`memory.grid.memory_grid`. With ``with_hidden``, returns
        ``(y, hidden)`` with the last hidden states before the output projection, ``[B, hr_channels[-1], Tm, Hm, Wm]``
        (the keys of the cross-attention add-on; None without an HR branch).

        Raises:
            ValueError: wrong channel count or a segment shorter than one memory time step.
        """
        cfg = self.cfg
        if latent.ndim != 5 or latent.shape[1] != cfg.latent_channels:
            raise ValueError(f"expected a [B, {cfg.latent_channels}, T, h, w] latent, got {tuple(latent.shape)}")
        grid = memory_grid(tuple(latent.shape[2:]), cfg)
        if min(grid) < 1:
            raise ValueError(
                f"latent of {tuple(latent.shape[2:])} (T, h, w) is smaller than one memory token at rate "
                f"{cfg.rate_str}; use longer segments or a larger resolution")
        if self.hr is None:
            y = latent.new_zeros((latent.shape[0], cfg.dim, *grid))
            return (y, None) if with_hidden else y
        hidden = self.hr(latent)
        y = self.proj(hidden)[:, :, : grid[0], : grid[1], : grid[2]]
        if with_hidden:
            return y, hidden[:, :, : grid[0], : grid[1], : grid[2]]
        return y


def lr_frames(frames: torch.Tensor, latent_frames: int, cfg: EncoderConfig) -> torch.Tensor:
    """Pixel-space downsample of one segment for the LR branch.

    Args:
        frames: ``[F, H, W, 3]`` float in 0..1 (ComfyUI IMAGE), the segment's video frames.
        latent_frames: ``T``, the segment's latent length; the LR clip is sized so that the DiT's own VAE turns
            it into exactly ``T // rt`` latent frames and its patchifier into ``(Ht // rh, Wt // rw)`` tokens.
    Returns:
        ``[F_lr, H_lr, W_lr, 3]`` float 0..1 with ``F_lr = ft * (T // rt - 1) + 1`` frames picked evenly over
        the segment (causal VAE: first latent = 1 frame) and ``H_lr = (Ht // rh) * ph * fh`` (area resize).
    Raises:
        ValueError: frames are not ``[F, H, W, 3]``.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected IMAGE frames [F, H, W, 3], got {tuple(frames.shape)}")
    ft, fh, fw = cfg.vae_stride
    pt, ph, pw = cfg.patch_size
    f, height, width, _ = frames.shape
    tm, hm, wm = memory_grid((latent_frames, height // fh, width // fw), cfg)
    if min(tm, hm, wm) < 1:
        raise ValueError(f"segment of {latent_frames} latent frames at {width}x{height} is below one memory token")
    n = ft * (tm - 1) + 1
    if n == 1:
        idx = torch.tensor([(f - 1) // 2])
    else:
        idx = torch.linspace(0, f - 1, n).round().long()
    clip = frames[idx].movedim(-1, 1).float()  # [F_lr, 3, H, W]
    clip = F.interpolate(clip, size=(hm * ph * fh, wm * pw * fw), mode="area")
    return clip.movedim(1, -1).clamp(0, 1)


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


__all__ = ["HistoryEncoder", "MemoryCrossAttention", "lr_frames", "combine_branches", "token_grid", "memory_grid"]
