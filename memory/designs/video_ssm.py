"""VideoSSM (arXiv 2512.04519, "Autoregressive Long Video Generation with Hybrid State-Space Memory"): a local window
of uncompressed frames (sink + recent) and a global memory, a gated delta-rule state per DiT block.

**Local memory** (:func:`context`): the history's first ``sink_latent_frames`` and last ``recent_latent_frames``
latent frames, uncompressed (the DiT's own first projection at rate 1x1x1, :mod:`.context`).

**Global memory**: history tokens that leave the local window are *absorbed* into one state per DiT block,
``S [H, dv, dk]`` per sample (``H`` heads, ``dv = D // H``, ``dk`` key width), by the gated delta rule

    S <- alpha_n * S @ (I - beta_n k_n k_n^T) + beta_n v_n k_n^T        (one history token n at a time)

with a data-dependent decay ``alpha`` in (0, 1] and injection strength ``beta`` in (0, 1). Each DiT block's video
tokens *read* their block's state with an L2-normalised query (``o = S q``), weighted by a position-aware router gate
(distance to the newest absorbed frame), through a zero-initialised output projection whose result is added to the
block output (an untrained module adds nothing; the read-out in the DiT: ``models/state_readout.py``).

:func:`gated_delta_rule` is the recurrence for a whole sequence, in the exact chunked (WY / UT-transform) form: within a
chunk of ``C`` tokens the updates are one unit-lower-triangular solve, across chunks a short sequential loop. On CUDA,
fla's Triton kernel (``fla.ops.gated_delta_rule.chunk_gated_delta_rule``, package ``fla-core``) is used when it can be
imported (set ``FRAMEMEMORY_FLA=0`` to keep the torch path); fla is optional and not a requirement.
:func:`gated_delta_rule_reference` is the literal per-token loop (tests).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import EncoderConfig
from ..encoder import TORCH_OPS
from .context import Context, HistoryView, assemble, local_context

NAME = "video_ssm"
TITLE = "VideoSSM"  # the name people read (the Storyboard's summary)
ENCODED = False  # reads no Fig. 2 tokens: the state absorbs patch-embedded frames
SINGLE_ENCODER = True  # runs one encoder file (its state modules), not a combination
FOLLOWS_MEMORY_TIMESTEP = False  # training: the memory tokens always get the zero-timestep modulation
# NETWORK = StateMemory (set below the class): what an encoder file of this memory_type holds
PER_BLOCK_STATE = True  # frames leaving the window are absorbed into a state per DiT block (EncoderConfig.dit_blocks)
MEMORY_GROWS = False  # bounded: sink + recent frames attended, the state has a fixed size


@dataclass(frozen=True)
class VideoSSMConfig:
    """VideoSSM's local window (from an encoder file's ``EncoderConfig``: :func:`config`; the state's sizes stay in the
    ``EncoderConfig``: ``dit_blocks``, ``ssm_heads``, ``ssm_key_dim``, read by :class:`StateMemory`)."""

    sink_latent_frames: int = 1    # the history's first latent frames, uncompressed (attention sink)
    recent_latent_frames: int = 3  # the last latent frames, uncompressed (EncoderConfig.overlap_latent_frames)

    def encoder_fields(self) -> dict:
        """The ``EncoderConfig`` fields that hold these settings."""
        return {"sink_latent_frames": self.sink_latent_frames, "overlap_latent_frames": self.recent_latent_frames}


DEFAULTS = VideoSSMConfig().encoder_fields()  # what a file made for another design runs VideoSSM with


def config(cfgs: Sequence[EncoderConfig]) -> VideoSSMConfig:
    """The settings of the (one) resolved encoder config ``cfgs[0]``."""
    return VideoSSMConfig(cfgs[0].sink_latent_frames, cfgs[0].overlap_latent_frames)


def encoder_config(cfg: EncoderConfig, name: str, weighted: bool) -> EncoderConfig:
    """The encoder file's config ``cfg`` as VideoSSM runs it: a video_ssm file as it is; an untrained encoder of
    another design (``weighted`` False) with :data:`DEFAULTS` and no state modules (local window only).

    Raises:
        ValueError: a weighted file of another design (it has no state modules); ``name`` names it.
    """
    if cfg.memory_type == NAME:
        return cfg
    if weighted:
        raise ValueError(f"memory encoder '{name}' is a {cfg.memory_type} encoder with no VideoSSM state "
                         "modules: load a video_ssm file (e.g. framememory_lab_wan21_videossm.safetensors) or the "
                         "untrained encoder (local window only)")
    return dataclasses.replace(cfg, memory_type=NAME, ssm_heads=0, **DEFAULTS)


def context(history: HistoryView, cfg: VideoSSMConfig) -> Context:
    """Sink + recent frames uncompressed, and the state of every block after absorbing the frames between them
    (``history.absorb``; None without state modules). ``pack`` = ``(0, 1, S, R)``. Raises ValueError for an empty
    history."""
    sink, recent, s, r = local_context(history.embed, history.latents, history.frames, cfg.sink_latent_frames,
                                       cfg.recent_latent_frames)
    tokens, positions, _ = assemble(sink, None, recent)
    pack = torch.tensor([0, 1, s, r], dtype=torch.long)
    return Context(tokens, positions, pack=pack, state=history.absorb(s, history.frames - r))


USE_FLA = os.environ.get("FRAMEMEMORY_FLA", "1") != "0"  # use fla's Triton kernel for CUDA tensors when importable
ALPHA_INIT = 0.99   # decay gate at initialisation (bias logit(0.99), zero weights)
BETA_INIT_LOGIT = -2.0  # injection gate at initialisation: sigmoid(-2) ~ 0.12


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (gradcheck), float32 otherwise."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_delta_inputs(k, v, alpha, beta, state) -> None:
    """Raise ValueError unless the shapes of :func:`gated_delta_rule`'s arguments agree."""
    if k.ndim != 4 or v.ndim != 4 or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k [B, H, N, dk] and v [B, H, N, dv] disagree: {tuple(k.shape)}, {tuple(v.shape)}")
    if alpha.shape != k.shape[:3] or beta.shape != k.shape[:3]:
        raise ValueError(f"alpha and beta must be {tuple(k.shape[:3])}, got {tuple(alpha.shape)}, {tuple(beta.shape)}")
    want = (*k.shape[:2], v.shape[-1], k.shape[-1])
    if state is not None and tuple(state.shape) != want:
        raise ValueError(f"state must be {want} [B, H, dv, dk], got {tuple(state.shape)}")


def gated_delta_rule(k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                     state: torch.Tensor | None = None, chunk_size: int = 64) -> torch.Tensor:
    """Final state of the gated delta rule over a sequence (VideoSSM's global memory update, arXiv 2512.04519).

    Args:
        k: ``[B, H, N, dk]`` L2-normalised keys. v: ``[B, H, N, dv]`` values.
        alpha: ``[B, H, N]`` decay gate in (0, 1]. beta: ``[B, H, N]`` injection gate in (0, 1).
        state: ``[B, H, dv, dk]`` initial state, or None (zeros).
        chunk_size: tokens per chunk of the torch path (any N; a remainder chunk is padded with identity steps).
    Returns:
        ``[B, H, dv, dk]`` float32 (float64 for float64 ``k``): for each token n in order
        ``S <- alpha_n * S @ (I - beta_n k_n k_n^T) + beta_n v_n k_n^T``. Differentiable in every input.
    Raises:
        ValueError: shapes disagree, or ``chunk_size < 1``.
    """
    _check_delta_inputs(k, v, alpha, beta, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = _compute_dtype(k)
    if k.shape[2] == 0:
        return k.new_zeros(*k.shape[:2], v.shape[-1], k.shape[-1], dtype=dtype) if state is None else state.to(dtype)
    if k.is_cuda and dtype == torch.float32 and _fla_chunk() is not None:
        return _fla_final_state(k, v, alpha, beta, state, chunk_size)
    return _chunked_final_state(*(t.to(dtype) for t in (k, v, alpha, beta)),
                                None if state is None else state.to(dtype), chunk_size)


def _chunked_final_state(k, v, alpha, beta, state, chunk_size: int) -> torch.Tensor:
    """Torch path of :func:`gated_delta_rule` (same arguments, one float dtype), the chunked WY form.

    Within a chunk with cumulative decays ``G_s = prod_{r<=s} alpha_r``, the new values
    ``u_s = beta_s (v_s - alpha_s S_{s-1} k_s)`` solve ``(I + A) U = diag(beta) V - diag(beta G) K S_0^T`` with
    ``A[s, r] = beta_s (G_s / G_r) k_s.k_r`` (r < s); then ``S_C = G_C S_0 + sum_s (G_C / G_s) u_s k_s^T``.
    """
    b, h, n, dk = k.shape
    dv = v.shape[-1]
    c = min(chunk_size, n)
    pad = (-n) % c  # identity steps: k = v = 0, alpha = 1, beta = 0
    log_a = F.pad(alpha.log(), (0, pad))
    k, v, beta = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad)), F.pad(beta, (0, pad))
    k, v = (rearrange(t, "b h (m c) d -> b h m c d", c=c) for t in (k, v))
    log_g, beta = (rearrange(t, "b h (m c) -> b h m c", c=c) for t in (log_a, beta))
    log_g = log_g.cumsum(-1)  # log G_s within each chunk
    strict = torch.ones(c, c, dtype=torch.bool, device=k.device).tril(-1)
    decay = (log_g[..., :, None] - log_g[..., None, :]).masked_fill(~strict, -math.inf).exp()  # G_s / G_r, r < s
    k_beta = k * beta[..., None]
    a = (k_beta @ k.transpose(-1, -2)) * decay
    eye = torch.eye(c, dtype=k.dtype, device=k.device)
    rhs = torch.cat([v * beta[..., None], k_beta * log_g.exp()[..., None]], dim=-1)
    u0, w = torch.linalg.solve_triangular(a + eye, rhs, upper=False, unitriangular=True).split([dv, dk], dim=-1)
    k_end = k * (log_g[..., -1:] - log_g).exp()[..., None]  # (G_C / G_s) k_s
    g_end = log_g[..., -1].exp()  # G_C per chunk [b, h, m]
    s = k.new_zeros(b, h, dv, dk) if state is None else state
    for i in range(k.shape[2]):
        u = u0[:, :, i] - w[:, :, i] @ s.transpose(-1, -2)  # [b, h, c, dv]
        s = s * g_end[:, :, i, None, None] + u.transpose(-1, -2) @ k_end[:, :, i]
    return s


@functools.lru_cache(maxsize=1)
def _fla_chunk():
    """fla's ``chunk_gated_delta_rule`` (Triton, CUDA only), or None when fla-core is not installed / disabled."""
    if not USE_FLA:
        return None
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None
    except Exception as exc:  # a broken optional install must not break the torch path
        logging.warning("framememory: fla is installed but failed to import (%s); using the torch gated delta rule", exc)
        return None
    return chunk_gated_delta_rule


def _fla_final_state(k, v, alpha, beta, state, chunk_size: int) -> torch.Tensor:
    """CUDA path of :func:`gated_delta_rule` through fla (layout ``[B, N, H, .]``, log decay ``g``, state
    ``[B, H, dk, dv]``). The queries are the keys; fla's per-token outputs are discarded."""
    kt, vt = (t.float().transpose(1, 2).contiguous() for t in (k, v))
    g = alpha.float().clamp_min(torch.finfo(torch.float32).tiny).log().transpose(1, 2).contiguous()
    bt = beta.float().transpose(1, 2).contiguous()
    h0 = None if state is None else state.float().transpose(-1, -2).contiguous()
    _, final = _fla_chunk()(kt, kt, vt, g, bt, initial_state=h0, output_final_state=True,
                            chunk_size=chunk_size if chunk_size in (16, 32, 64) else 64)
    return final.float().transpose(-1, -2)


def gated_delta_rule_reference(k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                               state: torch.Tensor | None = None) -> torch.Tensor:
    """The literal per-token loop of :func:`gated_delta_rule` (same arguments and result; slow, for tests)."""
    _check_delta_inputs(k, v, alpha, beta, state)
    dtype = _compute_dtype(k)
    k, v, alpha, beta = (t.to(dtype) for t in (k, v, alpha, beta))
    s = k.new_zeros(*k.shape[:2], v.shape[-1], k.shape[-1]) if state is None else state.to(dtype)
    for n in range(k.shape[2]):
        kn, vn = k[:, :, n], v[:, :, n]
        an, bn = alpha[:, :, n, None, None], beta[:, :, n, None, None]
        outer_kk = kn[..., :, None] * kn[..., None, :]  # k_n k_n^T [B, H, dk, dk]
        s = an * s @ (torch.eye(k.shape[-1], dtype=dtype, device=k.device) - bn * outer_kk) \
            + bn * vn[..., :, None] * kn[..., None, :]
    return s


def _project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; the input goes to the weight dtype unless the layer casts its weights itself (comfy.ops
    ``manual_cast``: weights are cast to the input dtype)."""
    if not getattr(layer, "comfy_cast_weights", False) and x.dtype != layer.weight.dtype:
        x = x.to(layer.weight.dtype)
    return layer(x)


class StateMemory(nn.Module):
    """VideoSSM's global memory (arXiv 2512.04519) for a DiT with ``L = cfg.dit_blocks`` blocks of width
    ``D = cfg.dim``: one gated delta-rule state ``[H, dv, dk]`` per block (``H = cfg.ssm_heads``,
    ``dk = cfg.ssm_key_dim``, ``dv = D // H``).

    Per block i:

    * absorb, from a history token x ``[D]``: ``k = l2norm(W_k x)`` per head ``[H, dk]``, ``v = W_v x`` ``[H, dv]``,
      decay ``alpha = sigmoid(W_a x + b_a)`` and injection ``beta = sigmoid(W_b x + b_b)`` per head (one fused
      Linear ``absorb_proj`` for all blocks: rows ``[k | v | a | b]`` per block);
    * read-out, for a video token h ``[D]`` (the block's output hidden state): ``q = l2norm(W_q h)`` per head,
      ``o = S q`` ``[H, dv]``; position-aware router ``g = sigmoid(W_g h + w_d * log1p(distance) + b_g)`` per head
      (``distance``: latent frames between the token and the newest absorbed frame; ``read_proj.i`` holds
      ``[W_q | W_g]``, ``distance_weight[i]`` is ``w_d``); output ``W_o (g * o)`` ``[D]`` (``out.i``, zero-initialised).

    Args:
        cfg: ``dim``, ``dit_blocks``, ``ssm_heads``, ``ssm_key_dim`` (``ssm_heads`` divides ``dim``).
        ops: namespace with a ``Linear`` class (``torch.nn`` by default; ComfyUI passes ``comfy.ops.manual_cast``).
    Raises:
        ValueError: a size is 0 or ``ssm_heads`` does not divide ``dim``.
    """

    def __init__(self, cfg: EncoderConfig, ops=TORCH_OPS) -> None:
        super().__init__()
        d, blocks, heads, dk = cfg.dim, cfg.dit_blocks, cfg.ssm_heads, cfg.ssm_key_dim
        if min(d, blocks, heads, dk) < 1 or d % heads:
            raise ValueError(f"StateMemory needs dim, dit_blocks, ssm_heads, ssm_key_dim >= 1 and ssm_heads dividing "
                             f"dim; got dim {d}, dit_blocks {blocks}, ssm_heads {heads}, ssm_key_dim {dk}")
        self.cfg = cfg
        self.dim, self.blocks, self.heads, self.key_dim, self.value_dim = d, blocks, heads, dk, d // heads
        self.absorb_proj = ops.Linear(d, blocks * self._absorb_width)
        self.read_proj = nn.ModuleList(ops.Linear(d, heads * dk + heads) for _ in range(blocks))
        self.out = nn.ModuleList(ops.Linear(d, d) for _ in range(blocks))
        self.distance_weight = nn.Parameter(torch.zeros(blocks, heads))
        self.reset_parameters()

    @property
    def _absorb_width(self) -> int:
        """Rows of ``absorb_proj`` per block: ``H*dk`` keys, ``H*dv`` values, ``H`` decay, ``H`` injection."""
        return self.heads * (self.key_dim + self.value_dim + 2)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Deterministic init (from ``generator``; comfy.ops layers skip their own init): LeCun-uniform key, value and
        query rows (bound ``sqrt(3 / D)``); zero weights on the gate rows (decay, injection, router) so the gates start
        at their biases whatever the hidden-state scale: ``alpha = 0.99``, ``beta = sigmoid(-2)``, router 0.5 with
        ``w_d = 0``; zero output projections ``W_o`` (an untrained module adds nothing); other biases zero."""
        h, dk, dv = self.heads, self.key_dim, self.value_dim
        bound = math.sqrt(3.0 / self.dim)
        with torch.no_grad():
            for layer in [self.absorb_proj, *self.read_proj]:
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()
            w = self.absorb_proj.weight.view(self.blocks, self._absorb_width, self.dim)
            bias = self.absorb_proj.bias.view(self.blocks, self._absorb_width)
            w[:, h * (dk + dv):].zero_()
            bias[:, h * (dk + dv): h * (dk + dv + 1)].fill_(math.log(ALPHA_INIT / (1.0 - ALPHA_INIT)))
            bias[:, h * (dk + dv + 1):].fill_(BETA_INIT_LOGIT)
            for layer in self.read_proj:
                layer.weight[h * dk:].zero_()
            for layer in self.out:
                layer.weight.zero_()
                layer.bias.zero_()
            self.distance_weight.zero_()

    def state_numel(self) -> int:
        """Floats in one sample's state: ``L * H * dv * dk``."""
        return self.blocks * self.heads * self.value_dim * self.key_dim

    def absorb(self, tokens: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """Absorb history tokens into every block's state (one batched :func:`gated_delta_rule`, batch ``B * L``).

        Args:
            tokens: ``[B, N, D]`` history tokens in ``(t, h, w)`` order, any float dtype.
            state: ``[B, L, H, dv, dk]`` state to continue, or None (zeros).
        Returns:
            ``[B, L, H, dv, dk]`` float32 (float64 for float64 tokens and weights). Absorbing A then B equals
            absorbing ``cat(A, B)``.
        """
        b, n, _ = tokens.shape
        h, dk, dv = self.heads, self.key_dim, self.value_dim
        shape = (b, self.blocks, h, dv, dk)
        if state is not None and tuple(state.shape) != shape:
            raise ValueError(f"state must be {shape} [B, L, H, dv, dk], got {tuple(state.shape)}")
        proj = _project(self.absorb_proj, tokens)
        proj = rearrange(proj.to(_compute_dtype(proj)), "b n (l f) -> (b l) n f", l=self.blocks)
        k, v, a, beta = proj.split([h * dk, h * dv, h, h], dim=-1)
        k = F.normalize(rearrange(k, "x n (h d) -> x h n d", h=h), dim=-1, eps=1e-6)
        v = rearrange(v, "x n (h d) -> x h n d", h=h)
        alpha, beta = (rearrange(t, "x n h -> x h n").sigmoid() for t in (a, beta))
        s0 = None if state is None else state.reshape(b * self.blocks, h, dv, dk)
        return gated_delta_rule(k, v, alpha, beta, s0).reshape(shape)

    def read(self, index: int, x: torch.Tensor, state: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """Block ``index``'s read-out of its state, to be ADDED to the block output.

        Args:
            index: DiT block, ``0 <= index < L``.
            x: ``[B, n, D]`` the block's output hidden states of the video tokens (any float dtype).
            state: ``[B, H, dv, dk]`` this block's state (``absorb(...)[:, index]``).
            distance: ``[n]`` float, latent frames between each token and the newest absorbed frame (>= 0).
        Returns:
            ``[B, n, D]`` in ``x``'s dtype: ``W_o (g * S q)`` (zeros while ``W_o`` is zero).
        """
        h, dk = self.heads, self.key_dim
        qg = _project(self.read_proj[index], x)
        q, gate = qg.split([h * dk, h], dim=-1)
        q = F.normalize(rearrange(q.float(), "b n (h d) -> b n h d", h=h), dim=-1, eps=1e-6)
        o = torch.einsum("bhvk,bnhk->bnhv", state.to(x.dtype), q.to(x.dtype))  # [B, n, H, dv]
        dist = torch.log1p(distance.to(device=x.device, dtype=torch.float32))
        w_d = self.distance_weight[index].to(x.device).float()  # a raw parameter: ComfyUI's partial load may leave it on the CPU
        g = torch.sigmoid(gate.float() + dist[:, None] * w_d)  # [B, n, H]
        y = rearrange(o * g.to(o.dtype)[..., None], "b n h v -> b n (h v)")
        return _project(self.out[index], y).to(x.dtype)


NETWORK = StateMemory  # what an encoder file of this memory_type holds: the state modules

__all__ = ["NAME", "TITLE", "NETWORK", "VideoSSMConfig", "DEFAULTS", "config", "encoder_config", "context",
           "gated_delta_rule", "gated_delta_rule_reference", "StateMemory"]
