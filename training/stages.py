"""The two training stages of arXiv 2512.23851 as plain, testable loss functions (no launcher, no I/O).

The DiT is ComfyUI's own model class, called directly with the memory wrapper and block patches of its inference
adapter in ``transformer_options`` (as ``tests/test_wan_adapter.py`` / ``tests/test_hunyuan_adapter.py`` do), with
LoRA injected by ``peft``: ``comfy.ldm.wan.model.WanModel`` (family ``wan21``, :mod:`models.families.wan21`) or
``comfy.ldm.hunyuan_video.model.HunyuanVideo`` T2V (family ``hunyuan_video``,
:mod:`models.families.hunyuan_video`). The losses
are family-agnostic; what differs per family (forward with memory and per-frame RoPE, first projection, LoRA targets,
text conditioning) is a small object from :func:`training.dits.dit_family`, chosen from the DiT's class. The history
encoder is :class:`memory.encoder.HistoryEncoder` (HR branch; trainable) plus an LR branch (below). All latents are in
*model space* (after ``process_latent_in``), ``[B, C, T, h, w]``.

Rectified flow, as ComfyUI's Wan and HunyuanVideo (``ModelSamplingDiscreteFlow``, multiplier 1000):
``X_t = (1 - t) X_0 + t eps``, the DiT gets timestep ``1000 t`` and predicts the velocity ``eps - X_0``; loss = MSE
to that target.

**Text conditioning.** ``context`` ``[B, L, 4096]`` for every family; HunyuanVideo also needs ``pooled`` ``[B, 768]``
(CLIP-L ``pooled_output``, the DiT's ``y``) and gets the embedded guidance ``StageConfig.guidance`` (default 1.0, see
:data:`training.dits.DEFAULT_GUIDANCE`); Wan ignores both.

**Noise-level distribution.** ``L(m, s)`` (:class:`LogitNormal`) is the shifted logit-normal
``t = sigmoid(m + s z)``, ``z ~ N(0, 1)``: the SD3 logit-normal with location ``m`` (shift towards noise for
``m > 0``) and scale ``s``. Stage I masks every non-Omega history frame with ``L(0.2, 1)`` (median level
``sigmoid(0.2) = 0.55``; each masked latent frame gets its own level). The paper does not give the distribution of
the *diffusion* time ``t`` of the regenerated frames / next segment; we use ``L(0, 1)`` (SD3 default) for both stages,
configurable in :class:`StageConfig`.

**Stage I (frame-query pretraining).** Per sample, ``omega_frames`` distinct latent-frame indices Omega are drawn
uniformly (sorted; the same count for every sample so the batch stacks, different indices per sample). The encoder
sees the whole masked history ``mask(H, Omega)`` (Omega frames bit-identical to ``H``, every other frame
``(1 - s) H + s eps'``), its memory tokens sit at the history's own times ``0 .. T-1`` (``t_start = 0``), and the DiT
regenerates only ``H[Omega]``: its video tokens get RoPE positions ``(t, h, w)`` with ``t`` their *original* index in
``H`` (the family's block patches replace the contiguous ``0 .. k-1`` positions the DiT would build, Wan's
``rope_encode`` / HunyuanVideo's ``img_ids``, by ``omega``: the positions those frames have in the full clip), so each
regenerated frame is a positional query into the memory. Loss = MSE over the Omega frames only.

**Stage II (autoregressive fine-tuning).** Clean full history ``H`` -> memory tokens at times ``-T_H .. -1``
(``t_start = -T_H``, as at inference: the segment being generated starts at time 0); rectified flow on the next
segment ``X`` only.

**One encoder path.** The memory tokens come from :class:`memory.encoder.HistoryEncoder` (Fig. 2), the module the
nodes run at inference, with the DiT's own first projection as ``embed`` (:meth:`training.dits.DitFamily.embed`,
frozen, no LoRA) and the *real* LR latent: the DiT's VAE of :func:`memory.encoder.lr_clip` of the history's frames
(``lr_latent``, model space), precomputed in the shards by ``training/data.py`` (one VAE stream per chunk, as
inference streams it) or made in the loop by an ``lr_fn`` (the reproduction's linear stand-in VAE). Stage I masks the
LR latent like the history (:func:`mask_lr_latent`): LR frame ``j`` covers latent frames ``j*rt .. j*rt+rt-1`` and
takes the *lowest* noise level among them (clean when it covers an Omega frame), so every regenerated frame's LR
token is clean, as its HR input is.

**Add-ons in training.** Cross-attention (``EncoderConfig.cross_attention``): the encoder's hidden states and its
layers go through the same block patches as at inference (:func:`dit_forward`), so the layers learn. Overlap window
(``overlap_latent_frames``): Stage II appends the history's last N latent frames uncompressed
(:func:`memory.encoder.overlap_window`, as ``models.encoding.next_memory``); Stage I does not (the window would hold
the queried frames themselves). Memory-token timestep: ``EncoderConfig.memory_timestep`` (``"zero"`` by default)
picks the adapter's modulation rule in training as at inference.

**LoRA** (:func:`add_lora`): ``peft.LoraConfig(r=128, lora_alpha=r, target_modules=<regex>)`` injected in place
with ``peft.inject_adapter_in_model`` (the model stays a ``WanModel`` / ``HunyuanVideo`` with its own forward),
targeting the family's attention and MLP linears (:attr:`training.dits.DitFamily.lora_targets`): Wan every block's
self-attention and cross-attention ``q, k, v, o`` and the FFN linears ``ffn.0``, ``ffn.2``; HunyuanVideo every double
block's ``img_attn`` / ``txt_attn`` ``qkv``, ``proj`` and ``img_mlp`` / ``txt_mlp`` ``0``, ``2`` and every single
block's ``linear1``, ``linear2``. ComfyUI's ``disable_weight_init.Linear`` / ``manual_cast.Linear`` are
``torch.nn.Linear`` subclasses, so peft wraps them with its ``lora.Linear`` (tested); base weights are frozen, only
``lora_A`` / ``lora_B`` (and the encoder) train.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..memory import designs
from ..memory.designs import HistoryView
from ..memory.encoder import HistoryEncoder, encoder_parts
from ..memory.grid import memory_positions
from .dits import DEFAULT_GUIDANCE, HUNYUAN, WAN, dit_family

TIMESTEP_MULTIPLIER = 1000.0  # ComfyUI flow model_sampling (Wan, HunyuanVideo): the DiT's timestep = 1000 * sigma
LORA_TARGETS = WAN.lora_targets  # Wan 2.1 (kept under this name); per family: dit_family(dm).lora_targets
HUNYUAN_LORA_TARGETS = HUNYUAN.lora_targets


@dataclass(frozen=True)
class LogitNormal:
    """Shifted logit-normal ``L(loc, scale)``: ``t = sigmoid(loc + scale * z)``, ``z ~ N(0, 1)``, in (0, 1)."""

    loc: float = 0.0
    scale: float = 1.0

    def sample(self, shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        z = torch.randn(shape, generator=generator, device=generator.device if generator is not None else device)
        t = torch.sigmoid(self.loc + self.scale * z)
        return t if device is None else t.to(device)


@dataclass(frozen=True)
class StageConfig:
    """Hyper-parameters of the loss functions (module docstring)."""

    omega_frames: int = 1                                          # |Omega| per sample (Stage I)
    mask_levels: LogitNormal = field(default_factory=lambda: LogitNormal(0.2, 1.0))  # noise of non-Omega frames
    timesteps: LogitNormal = field(default_factory=lambda: LogitNormal(0.0, 1.0))    # diffusion time t
    guidance: float = DEFAULT_GUIDANCE                             # HunyuanVideo embedded guidance (Wan: unused)


# ----------------------------------------------------------------------------------------------------- LoRA


def add_lora(dm: torch.nn.Module, rank: int = 128, alpha: float | None = None, targets: str | None = None,
             dropout: float = 0.0, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Inject LoRA into ``dm`` in place (peft) and freeze every non-LoRA parameter.

    Args:
        rank: LoRA rank (paper: 128). alpha: ``lora_alpha`` (default ``rank``: scale 1).
        targets: regex of module names (``re.fullmatch``); default the family's attention and MLP linears
            (module docstring; :attr:`training.dits.DitFamily.lora_targets`).
    Returns:
        the LoRA parameters (``requires_grad`` True).
    Raises:
        ImportError: peft is not installed. ValueError: no module matches ``targets``. TypeError: ``targets`` is
        None and the DiT is of no trainable family.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if targets is None:
        targets = dit_family(dm).lora_targets

    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=targets,
                        lora_dropout=dropout, bias="none")
    inject_adapter_in_model(config, dm, adapter_name=adapter_name)
    params = []
    for name, p in dm.named_parameters():
        is_lora = "lora_" in name
        p.requires_grad_(is_lora)
        if is_lora:
            params.append(p)
    if not params:
        raise ValueError(f"no module of the model matches the LoRA targets {targets!r}")
    return params


def lora_state_dict(dm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of ``dm`` under peft's names (``blocks.0.self_attn.q.lora_A.default.weight``,
    ``double_blocks.0.img_attn.qkv.lora_A.default.weight``)."""
    return {k: v for k, v in dm.state_dict().items() if "lora_" in k}


# ------------------------------------------------------------------------------------------ memory encoding


def encode_history(dm, encoder, latent: torch.Tensor, t_start: float, lr_latent=None,
                   overlap: bool = False) -> SimpleNamespace:
    """Memory of a history for training: the context of the encoder's memory design (:mod:`memory.designs`, the
    function inference runs), with Fig. 2 (:class:`memory.encoder.HistoryEncoder`, a drop-in with the same call such as
    ``training.baselines.LargePatchifier``, or an :class:`memory.encoder.EncoderSet`) as the compressor.

    The design: Frame Preservation (Stage I, ``overlap`` False: without the overlap window); in Stage II (``overlap``
    True) the design of ``cfg.memory_type`` (PackForcing: sink + Fig. 2 tokens of the mid history + recent frames with
    partition labels, the DiT's wrapper selects the top-K mid blocks and re-packs RoPE in the forward; VideoSSM, the
    encoder a :class:`memory.designs.video_ssm.StateMemory`: sink + recent frames and the state after absorbing the
    frames between them, differentiable); the sliding-window baseline for :class:`training.baselines.SlidingWindow`.

    Args:
        latent: ``[B, C, T, h, w]`` model-space history. t_start: DiT time of its first latent frame (Stage II:
            ``-T``; the windows of the other designs sit at ``-N .. -1`` whatever it is).
        lr_latent: ``[B, C, Tm, h', w']`` model-space LR latent (module docstring), required when the encoder has an
            LR branch; for an EncoderSet a list with one per part (None for parts without LR branch).
        overlap: Stage II (the overlap-window add-on's uncompressed tokens, the longest window of the parts, and the
            encoder's own memory design).
    Returns:
        ``tokens [B, M, D]`` (the parts' tokens concatenated), ``positions2 [B, M, 3]`` int64 (twice the RoPE
        positions, as ``models/conds.py``), ``hidden [B, M_h, Ch]`` or None and ``cross`` (the cross-attention add-on's
        hidden states and layers, from the part that has it), ``memory_t0`` (the timestep rule), ``extra`` (the
        design's conds by key, batched) and ``readout`` (the VideoSSM read-out modules, else None).
    Raises:
        ValueError: a part with an LR branch has no LR latent (prepare the shards with ``training/prepare_data.py``),
        or shapes off the memory grid.
    """
    from ..models.conds import BLOCKS_KEY, PACK_KEY, STATE_KEY

    design, parts, cfg = _training_design(encoder_parts(encoder), overlap)
    batch = _TrainingHistory(dm, parts, latent, t_start, lr_latent)
    ctx = design.context(HistoryView(latent.shape[2], batch.embed, batch.latents, batch.compressed,
                                     batch.hidden, batch.absorb), cfg)
    b = latent.shape[0]
    pos2 = (ctx.positions * 2).round().long()[None].expand(b, -1, -1).to(latent.device)
    keys = {"blocks": BLOCKS_KEY, "pack": PACK_KEY, "state": STATE_KEY}
    extra = {keys[k]: (v if k == "state" else v[None].expand(b, -1)).to(latent.device)
             for k, v in ctx.extras().items()}
    memory_t0 = parts[0].cfg.memory_timestep == "zero" if design.FOLLOWS_MEMORY_TIMESTEP else True
    return SimpleNamespace(tokens=ctx.tokens, positions2=pos2, hidden=ctx.hidden,
                           cross=batch.cross if ctx.hidden is not None else None, memory_t0=memory_t0, extra=extra,
                           readout=parts[0] if ctx.state is not None else None)


def _training_design(parts: list, overlap: bool) -> tuple:
    """``(design module, parts it reads, its config)`` for :func:`encode_history`: the sliding-window baseline for a
    part with ``memory_design`` (:class:`training.baselines.SlidingWindow`); else in Stage II (``overlap``) the design
    of ``cfg.memory_type``, in Stage I Frame Preservation without the overlap window (it would hold the queried
    frames themselves)."""
    mode = getattr(parts[0], "memory_design", None) or (parts[0].cfg.memory_type if overlap else "frame_preservation")
    design = designs.design(mode)
    parts = parts[:1] if design.SINGLE_ENCODER else parts
    cfg = design.config([p.cfg for p in parts])
    if not overlap and design is designs.frame_preservation:
        cfg = dataclasses.replace(cfg, overlap_latent_frames=0)
    return design, parts, cfg


class _TrainingHistory:
    """The :class:`memory.designs.HistoryView` callables of a training batch: the clean (or masked) model-space
    history ``latent`` ``[B, C, T, h, w]`` and the encoder ``parts`` that read it."""

    def __init__(self, dm, parts: list, latent: torch.Tensor, t_start: float, lr_latent) -> None:
        self.dm, self.parts, self.latent, self.t_start, self.lr_latent = dm, parts, latent, t_start, lr_latent
        self.hidden_states, self.cross = None, None

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """The DiT's frozen first projection."""
        return dit_family(self.dm).embed(self.dm, z)

    def latents(self, lo: int, hi: int) -> torch.Tensor | None:
        """Latent frames ``lo .. hi - 1`` as float32, None when empty."""
        return self.latent[:, :, lo:hi].float() if hi > lo else None

    def hidden(self) -> torch.Tensor | None:
        """The cross-attention add-on's hidden states ``[B, M_h, Ch]`` (after :meth:`compressed`)."""
        return self.hidden_states

    def compressed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fig. 2 over the history, every part: ``(tokens [B, M, D], positions [M, 3] float64)`` at ``t_start``."""
        lrs = list(self.lr_latent) if isinstance(self.lr_latent, (list, tuple)) else [self.lr_latent]
        if len(lrs) != len(self.parts):
            raise ValueError(f"{len(self.parts)} encoders need {len(self.parts)} LR latents, got {len(lrs)}")
        tokens, positions = [], []
        for part, lr in zip(self.parts, lrs):
            cfg = part.cfg
            if cfg.use_lr and lr is None:
                raise ValueError(f"the encoder's LR branch needs the LR latent of the history (rate {cfg.rate_str}): "
                                 "shards from training/prepare_data.py carry it (--lr-rates), or pass an lr_fn")
            t_i, h_i = part(self.latent.float(), lr, self.embed)
            tokens.append(t_i)
            positions.append(memory_positions(part.grid(self.latent), cfg, t_start=self.t_start, dtype=torch.float64))
            if h_i is not None and (self.hidden_states is None or cfg.cross_attention):
                self.hidden_states, self.cross = h_i, getattr(part, "cross", None)
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=0)

    def absorb(self, start: int, end: int) -> torch.Tensor:
        """VideoSSM's state ``[B, L, H, dv, dk]`` after absorbing latent frames ``start .. end - 1`` (zeros when
        none), differentiable in the state modules."""
        part, evicted = self.parts[0], self.latents(start, end)
        if evicted is not None:
            return part.absorb(self.embed(evicted).flatten(2).transpose(1, 2))
        cfg, b = part.cfg, self.latent.shape[0]
        return self.latent.new_zeros(b, cfg.dit_blocks, cfg.ssm_heads, cfg.dim // cfg.ssm_heads, cfg.ssm_key_dim)


def mask_lr_latent(lr_latent: torch.Tensor, omega: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor,
                   rt: int) -> torch.Tensor:
    """Stage I's mask on the LR latent (module docstring): LR frame ``j`` ``[B, C, Tm, h', w']`` gets the lowest level
    of the latent frames ``j*rt .. j*rt+rt-1`` it covers (``levels`` ``[B, T]``; Omega frames ``omega`` ``[B, k]`` count
    as 0): ``(1 - s) lr + s noise``."""
    b, t = levels.shape
    lv = levels.to(lr_latent).clone()
    lv.scatter_(1, omega.to(lr_latent.device), 0.0)
    tm = lr_latent.shape[2]
    s = lv[:, : tm * rt].reshape(b, tm, rt).amin(dim=2)[:, None, :, None, None]  # [B, 1, Tm, 1, 1]
    return (1 - s) * lr_latent + s * noise.to(lr_latent)


# ------------------------------------------------------------------------------------------ DiT forward


def frame_rope(dm, frame_times: torch.Tensor, ht: int, wt: int) -> torch.Tensor:
    """RoPE of video tokens whose latent frames sit at times ``frame_times`` ``[B, k]`` (any order), on a
    ``ht x wt`` token grid, in the layout of the family's ``pe``: Wan ``[B, k*ht*wt, 1, d/2, 2, 2]`` (matching
    ``WanModel.rope_encode`` for contiguous times), HunyuanVideo ``[B, 1, k*ht*wt, d/2, 2, 2]`` (``pe_embedder`` of
    ``img_ids``). Positions: :func:`training.dits.frame_ids`."""
    return dit_family(dm).frame_rope(dm, frame_times, ht, wt)


def dit_forward(dm, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, memory: SimpleNamespace | None,
                frame_times: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
                guidance: float | torch.Tensor | None = None) -> torch.Tensor:
    """Velocity prediction of the DiT with memory, through its family's inference patches (:mod:`training.dits`).

    Args:
        x_t: ``[B, C, k, h, w]`` noisy latent (model space). t: ``[B]`` sigma in [0, 1] (the DiT gets ``1000 t``).
        context: ``[B, L, 4096]`` text embeddings. memory: :func:`encode_history`'s result (tokens, positions,
            cross-attention hidden states and layers, timestep rule), or None (no memory).
        frame_times: ``[B, k]`` RoPE times of the k frames (None: ``0..k-1``, the DiT's own positions).
        pooled: ``[B, 768]`` HunyuanVideo's pooled text embedding ``y`` (required there; Wan ignores it).
        guidance: HunyuanVideo's embedded guidance, a float or ``[B]`` (None: :data:`training.dits.DEFAULT_GUIDANCE`;
            Wan ignores it).
    Returns:
        ``[B, C, k, h, w]`` in the DiT's output dtype.
    Raises:
        TypeError: untrainable DiT family. ValueError: HunyuanVideo without (or with a mis-shaped) ``pooled``.
    """
    return dit_family(dm).forward(dm, x_t, t * TIMESTEP_MULTIPLIER, context, memory,
                                  frame_times=frame_times, pooled=pooled, guidance=guidance)


def flow_pair(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow: ``(X_t = (1 - t) X_0 + t eps, target eps - X_0)``, ``t`` ``[B]``."""
    tt = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - tt) * x0 + tt * eps, eps - x0


# ------------------------------------------------------------------------------------------------- Stage I


def sample_omega(batch: int, frames: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, k]`` sorted distinct latent-frame indices per sample, uniform over ``0 .. frames-1``."""
    if not 1 <= k <= frames:
        raise ValueError(f"omega_frames must be in 1..{frames} (history length), got {k}")
    scores = torch.rand(batch, frames, generator=generator)
    return scores.argsort(dim=1)[:, :k].sort(dim=1).values


def mask_history(history: torch.Tensor, omega: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``mask(H, Omega)``: frames in ``omega`` ``[B, k]`` bit-identical to ``history`` ``[B, C, T, h, w]``, every
    other frame ``f`` becomes ``(1 - levels[b, f]) H + levels[b, f] noise`` (``levels`` ``[B, T]``)."""
    b, _, t = history.shape[:3]
    keep = torch.zeros(b, t, dtype=torch.bool, device=history.device)
    keep.scatter_(1, omega.to(history.device), True)
    s = levels.to(history)[:, None, :, None, None]
    noised = (1 - s) * history + s * noise
    return torch.where(keep[:, None, :, None, None], history, noised)


def gather_frames(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, :, idx[b]]``: ``[B, C, T, h, w]``, ``[B, k]`` -> ``[B, C, k, h, w]``."""
    b, c, _, h, w = x.shape
    index = idx.to(x.device)[:, None, :, None, None].expand(b, c, idx.shape[1], h, w)
    return torch.gather(x, 2, index)


def prepare_stage1(history: torch.Tensor, cfg: StageConfig = StageConfig(), generator: torch.Generator | None = None,
                   lr_latent=None, rt=1) -> SimpleNamespace:
    """All random draws of one Stage I step (so the loss itself is a deterministic function):
    ``omega`` ``[B, k]``, ``levels`` ``[B, T]`` ~ ``cfg.mask_levels``, ``masked`` = :func:`mask_history`,
    ``t`` ``[B]`` ~ ``cfg.timesteps``, ``eps`` ``[B, C, k, h, w]``, and with a clean ``lr_latent`` (time rate ``rt``)
    ``lr_masked`` = :func:`mask_lr_latent` (its noise drawn last; for an EncoderSet lists of LR latents and rates, one
    per part, None entries kept). Random numbers come from ``generator`` (CPU)."""
    b, c, t, h, w = history.shape
    omega = sample_omega(b, t, cfg.omega_frames, generator)
    levels = cfg.mask_levels.sample((b, t), generator)
    mask_noise = torch.randn(history.shape, generator=generator).to(history)
    masked = mask_history(history, omega, levels, mask_noise)
    ts = cfg.timesteps.sample((b,), generator).to(history.device)
    eps = torch.randn((b, c, cfg.omega_frames, h, w), generator=generator).to(history)
    lr_masked = None
    if isinstance(lr_latent, (list, tuple)):  # an EncoderSet: one LR latent (and rate) per part
        units = rt if isinstance(rt, (list, tuple)) else [rt] * len(lr_latent)
        lr_masked = [None if lr is None else mask_lr_latent(lr, omega, levels,
                                                           torch.randn(lr.shape, generator=generator), u)
                     for lr, u in zip(lr_latent, units)]
    elif lr_latent is not None:
        lr_noise = torch.randn(lr_latent.shape, generator=generator)
        lr_masked = mask_lr_latent(lr_latent, omega, levels, lr_noise, rt)
    return SimpleNamespace(omega=omega.to(history.device), levels=levels, masked=masked, t=ts, eps=eps,
                           lr_masked=lr_masked)


def stage1_loss(dm, encoder: HistoryEncoder, history: torch.Tensor, context: torch.Tensor, prep: SimpleNamespace,
                cfg: StageConfig = StageConfig(), lr_latent: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None):
    """Frame-query pretraining loss ``|| (eps - H[Omega]) - G((H[Omega])_t, t, c, phi(mask(H, Omega))) ||^2``.

    Args:
        history: ``H`` ``[B, C, T, h, w]`` clean, model space; only ``H[Omega]`` enters the loss as the target (the
            encoder sees ``prep.masked``). context: ``[B, L, 4096]`` text embeddings. prep: :func:`prepare_stage1`.
        lr_latent: the *masked* history's LR latent (default ``prep.lr_masked``; module docstring).
        pooled: ``[B, 768]`` pooled text embedding (HunyuanVideo; see :func:`dit_forward`).
    Returns:
        ``(loss, pred)``: scalar float32 MSE over the Omega frames; ``pred`` ``[B, C, k, h, w]``.
    """
    lr = prep.lr_masked if lr_latent is None else lr_latent
    memory = encode_history(dm, encoder, prep.masked, t_start=0.0, lr_latent=lr)
    x0 = gather_frames(history, prep.omega)
    x_t, target = flow_pair(x0, prep.t, prep.eps)
    pred = dit_forward(dm, x_t, prep.t, context, memory, frame_times=prep.omega, pooled=pooled, guidance=cfg.guidance)
    return F.mse_loss(pred.float(), target.float()), pred


def stage2_loss(dm, encoder: HistoryEncoder | None, history: torch.Tensor, target: torch.Tensor, context: torch.Tensor,
                t: torch.Tensor | None = None, eps: torch.Tensor | None = None, cfg: StageConfig = StageConfig(),
                generator: torch.Generator | None = None, lr_latent: torch.Tensor | None = None,
                pooled: torch.Tensor | None = None):
    """Autoregressive fine-tuning loss: memory of the clean history ``H`` ``[B, C, T_H, h, w]`` (LR latent
    ``lr_latent``) at times ``-T_H .. -1``, with the overlap-window add-on when configured; rectified flow on the
    next segment ``X`` = ``target`` ``[B, C, T_X, h, w]`` only (its frames at times ``0 .. T_X-1``). ``t`` ``[B]`` /
    ``eps`` are drawn (``cfg.timesteps``, ``generator``) when None. ``encoder`` None: the same loss without memory
    tokens (the no-memory baseline). ``pooled``: ``[B, 768]`` (HunyuanVideo). Returns ``(loss, pred)``: scalar
    float32 MSE, ``[B, C, T_X, h, w]``."""
    b = target.shape[0]
    if t is None:
        t = cfg.timesteps.sample((b,), generator).to(target.device)
    if eps is None:
        eps = torch.randn(target.shape, generator=generator).to(target)
    memory = None
    if encoder is not None:
        memory = encode_history(dm, encoder, history, t_start=-float(history.shape[2]), lr_latent=lr_latent,
                                overlap=True)
    x_t, velocity = flow_pair(target, t, eps)
    pred = dit_forward(dm, x_t, t, context, memory, pooled=pooled, guidance=cfg.guidance)
    return F.mse_loss(pred.float(), velocity.float()), pred


def trainable_parameters(dm, encoder) -> list[torch.nn.Parameter]:
    """LoRA parameters of ``dm`` plus every encoder parameter (all with ``requires_grad``)."""
    enc = [] if encoder is None else [p for p in encoder.parameters() if p.requires_grad]
    return [p for p in dm.parameters() if p.requires_grad] + enc


__all__ = ["LogitNormal", "StageConfig", "add_lora", "lora_state_dict", "encode_history", "mask_lr_latent", "frame_rope",
           "dit_forward", "flow_pair", "sample_omega", "mask_history", "gather_frames", "prepare_stage1",
           "stage1_loss", "stage2_loss", "trainable_parameters", "TIMESTEP_MULTIPLIER", "LORA_TARGETS",
           "HUNYUAN_LORA_TARGETS", "dit_family"]
