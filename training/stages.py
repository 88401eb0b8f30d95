"""The two training stages of arXiv 2512.23851 as plain, testable loss functions (no launcher, no I/O).

The DiT is ComfyUI's own ``comfy.ldm.wan.model.WanModel`` (family ``wan21``), called directly with the memory block
patches of :mod:`models.wan` in ``transformer_options`` (as ``tests/test_wan_adapter.py`` does), with LoRA injected by
``peft``. The history encoder is :class:`memory.encoder.HistoryEncoder` (HR branch; trainable) plus an LR branch
(below). All latents are in *model space* (after ``process_latent_in``), ``[B, C, T, h, w]``.

Rectified flow, as ComfyUI's Wan (``model_sampling`` CONST, multiplier 1000): ``X_t = (1 - t) X_0 + t eps``,
the DiT gets timestep ``1000 t`` and predicts the velocity ``eps - X_0``; loss = MSE to that target.

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
regenerates only ``H[Omega]``: its video tokens get RoPE time positions at their *original* indices in ``H`` (block
patch :func:`_frame_pe_patch` replaces the contiguous ``0 .. k-1`` positions of ``WanModel.rope_encode`` by
``omega``), so each regenerated frame is a positional query into the memory. Loss = MSE over the Omega frames only.

**Stage II (autoregressive fine-tuning).** Clean full history ``H`` -> memory tokens at times ``-T_H .. -1``
(``t_start = -T_H``, as at inference: the segment being generated starts at time 0); rectified flow on the next
segment ``X`` only.

**LR branch in training (stand-in).** At inference the LR branch is: pixel-space downsample (``lr_frames``) -> the
DiT's VAE -> the DiT's ``patch_embedding``. Stage I's history is *masked in latent space*, so there are no pixels to
downsample and no VAE in this loop. Stand-in used here (:func:`lr_branch`): the DiT's own ``patch_embedding`` (frozen,
no LoRA, under ``no_grad``; for I2V models through :func:`models.wan.model_input`) on the *full-resolution* (masked)
latent, giving ``[B, D, T, Ht, Wt]``, then average pooling with kernel = stride = ``(rt, rh, rw)`` onto the memory grid
``(T // rt, Ht // rh, Wt // rw)`` (floored, as :func:`memory.grid.memory_grid`). Since the patch embedding is affine,
this equals the patch embedding of the latent averaged over ``rt`` frames and ``rh x rw`` tokens; it is *not* the same
as the VAE of downsampled pixels (the VAE is non-linear), so a full training run should feed precomputed LR latents
(``lr_latent=``: VAE of ``lr_frames`` of the history; for Stage I, of the masked history's decoded pixels or, cheaper,
of the clean history with the stand-in only for the masked frames) when it wants the inference-time LR branch exactly.

**LoRA** (:func:`add_lora`): ``peft.LoraConfig(r=128, lora_alpha=r, target_modules=<regex>)`` injected in place
with ``peft.inject_adapter_in_model`` (the model stays a ``WanModel`` with its own forward), targeting every block's
self-attention and cross-attention ``q, k, v, o`` and the FFN linears ``ffn.0``, ``ffn.2``. ComfyUI's
``disable_weight_init.Linear`` / ``manual_cast.Linear`` are ``torch.nn.Linear`` subclasses, so peft wraps them with its
``lora.Linear`` (tested); base weights are frozen, only ``lora_A`` / ``lora_B`` (and the encoder) train.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..memory.encoder import HistoryEncoder, combine_branches
from ..memory.grid import memory_grid, memory_positions

TIMESTEP_MULTIPLIER = 1000.0  # ComfyUI CONST model_sampling: the DiT's timestep = 1000 * sigma
LORA_TARGETS = r"blocks\.\d+\.(?:(?:self_attn|cross_attn)\.(?:q|k|v|o)|ffn\.(?:0|2))"


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
    use_lr: bool | None = None                                     # None: follow the encoder config's use_lr


# ----------------------------------------------------------------------------------------------------- LoRA


def add_lora(dm: torch.nn.Module, rank: int = 128, alpha: float | None = None, targets: str = LORA_TARGETS,
             dropout: float = 0.0, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """Inject LoRA into ``dm`` in place (peft) and freeze every non-LoRA parameter.

    Args:
        rank: LoRA rank (paper: 128). alpha: ``lora_alpha`` (default ``rank``: scale 1).
        targets: regex of module names (``re.fullmatch``), default every block's attention q/k/v/o and FFN linears.
    Returns:
        the LoRA parameters (``requires_grad`` True).
    Raises:
        ImportError: peft is not installed. ValueError: no module matches ``targets``.
    """
    from peft import LoraConfig, inject_adapter_in_model

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
    """The LoRA tensors of ``dm`` under peft's names (``blocks.0.self_attn.q.lora_A.default.weight``)."""
    return {k: v for k, v in dm.state_dict().items() if "lora_" in k}


# ------------------------------------------------------------------------------------------ memory encoding


def lr_branch(dm, latent: torch.Tensor, cfg) -> torch.Tensor:
    """LR-branch stand-in (module docstring): frozen ``patch_embedding`` of the full-resolution latent, average-pooled
    to the memory grid. ``[B, C, T, h, w]`` -> ``[B, D, Tm, Hm, Wm]`` float32 (no grad)."""
    from ..models.wan import model_input

    rh, rw, rt = cfg.rate
    grid = memory_grid(tuple(latent.shape[2:]), cfg)
    with torch.no_grad():
        y = dm.patch_embedding(model_input(dm, latent.float())).float()  # [B, D, T, Ht, Wt]
        y = F.avg_pool3d(y, kernel_size=(rt, rh, rw), stride=(rt, rh, rw))
    return y[:, :, : grid[0], : grid[1], : grid[2]]


def encode_history(dm, encoder: HistoryEncoder, latent: torch.Tensor, t_start: float,
                   lr_latent: torch.Tensor | None = None, use_lr: bool | None = None):
    """Memory tokens of a history for training: ``(tokens [B, M, D], positions2 [B, M, 3] int64)``.

    HR branch: ``encoder(latent)`` (with grad). LR branch: ``patch_embedding(lr_latent)`` when a precomputed LR latent
    (VAE of :func:`memory.encoder.lr_frames`) is given, else the stand-in :func:`lr_branch`. Positions are
    :func:`memory.grid.memory_positions` from ``t_start``, doubled (``memory_positions2``, as in ``models/conds.py``).
    """
    cfg = encoder.cfg
    use_lr = cfg.use_lr if use_lr is None else use_lr
    hr = encoder(latent.float()) if cfg.use_hr else None
    lr = None
    if use_lr:
        if lr_latent is not None:
            with torch.no_grad():
                from ..models.wan import model_input
                lr = dm.patch_embedding(model_input(dm, lr_latent.float())).float()
        else:
            lr = lr_branch(dm, latent, cfg)
    tokens = combine_branches(hr, lr)
    grid = memory_grid(tuple(latent.shape[2:]), cfg)
    if tokens.shape[1] != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"memory branches give {tokens.shape[1]} tokens, expected the grid {grid}")
    pos = memory_positions(grid, cfg, t_start=t_start, dtype=torch.float64)
    pos2 = (pos * 2).round().long()[None].expand(latent.shape[0], -1, -1).to(latent.device)
    return tokens, pos2


# ------------------------------------------------------------------------------------------ DiT forward


def _frame_pe_patch(inner, frame_pe: torch.Tensor | None):
    """Wrap a memory block patch: replace the video tokens' RoPE by ``frame_pe`` ``[B, N, 1, d/2, 2, 2]`` and
    broadcast the memory RoPE to the batch (per-sample frame positions make ``pe`` batched)."""
    from ..models.conds import PATCH_KEY

    def patch(args: dict, extra: dict) -> dict:
        if frame_pe is None:
            return inner(args, extra)
        pe = frame_pe.to(device=args["pe"].device, dtype=args["pe"].dtype)
        mem = args["transformer_options"].get(PATCH_KEY)
        if mem is not None and mem["freqs"].shape[0] != pe.shape[0]:
            mem["freqs"] = mem["freqs"].expand(pe.shape[0], *mem["freqs"].shape[1:])
        return inner({**args, "pe": pe}, extra)

    return patch


def frame_rope(dm, frame_times: torch.Tensor, ht: int, wt: int) -> torch.Tensor:
    """RoPE of video tokens whose latent frames sit at times ``frame_times`` ``[B, k]`` (any order), on a
    ``ht x wt`` token grid: ``[B, k*ht*wt, 1, d/2, 2, 2]``, matching ``WanModel.rope_encode`` for contiguous times."""
    b, k = frame_times.shape
    t = frame_times.to(torch.float32)[:, :, None, None].expand(b, k, ht, wt)
    h = torch.arange(ht, dtype=torch.float32, device=t.device)[None, None, :, None].expand(b, k, ht, wt)
    w = torch.arange(wt, dtype=torch.float32, device=t.device)[None, None, None, :].expand(b, k, ht, wt)
    ids = torch.stack([t, h, w], dim=-1).reshape(b, -1, 3)
    return dm.rope_embedder(ids).movedim(1, 2)


def dit_forward(dm, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor, tokens: torch.Tensor | None,
                positions2: torch.Tensor | None, frame_times: torch.Tensor | None = None) -> torch.Tensor:
    """Velocity prediction of the Wan DiT with memory: ``x_t`` ``[B, C, k, h, w]``, ``t`` ``[B]`` in [0, 1]
    (sigma), ``context`` ``[B, L, 4096]``; ``frame_times`` ``[B, k]`` RoPE times of the k frames (None: ``0..k-1``)."""
    import comfy.patcher_extension

    from ..models import wan
    from ..models.conds import PATCH_KEY

    n = len(dm.blocks)
    frame_pe = None
    if frame_times is not None:
        pt, ph, pw = dm.patch_size
        frame_pe = frame_rope(dm, frame_times, x_t.shape[3] // ph, x_t.shape[4] // pw)
    opts = {
        "patches_replace": {"dit": {("double_block", i): _frame_pe_patch(wan._block_patch(i, n), frame_pe)
                                    for i in range(n)}},
        "wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {PATCH_KEY: [wan._diffusion_wrapper]}},
    }
    kwargs = {} if tokens is None else {"memory_tokens": tokens, "memory_positions2": positions2}
    return dm(x_t, t * TIMESTEP_MULTIPLIER, context, transformer_options=opts, **kwargs)


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


def prepare_stage1(history: torch.Tensor, cfg: StageConfig = StageConfig(),
                   generator: torch.Generator | None = None) -> SimpleNamespace:
    """All random draws of one Stage I step (so the loss itself is a deterministic function):
    ``omega`` ``[B, k]``, ``levels`` ``[B, T]`` ~ ``cfg.mask_levels``, ``masked`` = :func:`mask_history`,
    ``t`` ``[B]`` ~ ``cfg.timesteps``, ``eps`` ``[B, C, k, h, w]``. Random numbers come from ``generator`` (CPU)."""
    b, c, t, h, w = history.shape
    omega = sample_omega(b, t, cfg.omega_frames, generator)
    levels = cfg.mask_levels.sample((b, t), generator)
    mask_noise = torch.randn(history.shape, generator=generator).to(history)
    masked = mask_history(history, omega, levels, mask_noise)
    ts = cfg.timesteps.sample((b,), generator).to(history.device)
    eps = torch.randn((b, c, cfg.omega_frames, h, w), generator=generator).to(history)
    return SimpleNamespace(omega=omega.to(history.device), levels=levels, masked=masked, t=ts, eps=eps)


def stage1_loss(dm, encoder: HistoryEncoder, history: torch.Tensor, context: torch.Tensor, prep: SimpleNamespace,
                cfg: StageConfig = StageConfig(), lr_latent: torch.Tensor | None = None):
    """Frame-query pretraining loss ``|| (eps - H[Omega]) - G((H[Omega])_t, t, c, phi(mask(H, Omega))) ||^2``.

    Args:
        history: ``H`` ``[B, C, T, h, w]`` clean, model space; only ``H[Omega]`` enters the loss as the target (the
            encoder sees ``prep.masked``). context: ``[B, L, 4096]`` text embeddings. prep: :func:`prepare_stage1`.
    Returns:
        ``(loss, pred)``: scalar float32 MSE over the Omega frames; ``pred`` ``[B, C, k, h, w]``.
    """
    tokens, pos2 = encode_history(dm, encoder, prep.masked, t_start=0.0, lr_latent=lr_latent, use_lr=cfg.use_lr)
    x0 = gather_frames(history, prep.omega)
    x_t, target = flow_pair(x0, prep.t, prep.eps)
    pred = dit_forward(dm, x_t, prep.t, context, tokens, pos2, frame_times=prep.omega)
    return F.mse_loss(pred.float(), target.float()), pred


# ------------------------------------------------------------------------------------------------ Stage II


def stage2_loss(dm, encoder: HistoryEncoder | None, history: torch.Tensor, target: torch.Tensor, context: torch.Tensor,
                t: torch.Tensor | None = None, eps: torch.Tensor | None = None, cfg: StageConfig = StageConfig(),
                generator: torch.Generator | None = None, lr_latent: torch.Tensor | None = None):
    """Autoregressive fine-tuning loss: memory of the clean history ``H`` ``[B, C, T_H, h, w]`` at times
    ``-T_H .. -1``; rectified flow on the next segment ``X`` = ``target`` ``[B, C, T_X, h, w]`` only (its frames at
    times ``0 .. T_X-1``). ``t`` ``[B]`` / ``eps`` are drawn (``cfg.timesteps``, ``generator``) when None.
    ``encoder`` None: the same loss without memory tokens (the no-memory baseline). Returns ``(loss, pred)``."""
    b = target.shape[0]
    if t is None:
        t = cfg.timesteps.sample((b,), generator).to(target.device)
    if eps is None:
        eps = torch.randn(target.shape, generator=generator).to(target)
    tokens = pos2 = None
    if encoder is not None:
        tokens, pos2 = encode_history(dm, encoder, history, t_start=-float(history.shape[2]), lr_latent=lr_latent,
                                      use_lr=cfg.use_lr)
    x_t, velocity = flow_pair(target, t, eps)
    pred = dit_forward(dm, x_t, t, context, tokens, pos2)
    return F.mse_loss(pred.float(), velocity.float()), pred


def trainable_parameters(dm, encoder: HistoryEncoder | None) -> list[torch.nn.Parameter]:
    """LoRA parameters of ``dm`` plus every encoder parameter (all with ``requires_grad``)."""
    enc = [] if encoder is None else [p for p in encoder.parameters() if p.requires_grad]
    return [p for p in dm.parameters() if p.requires_grad] + enc


__all__ = ["LogitNormal", "StageConfig", "add_lora", "lora_state_dict", "lr_branch", "encode_history", "frame_rope",
           "dit_forward", "flow_pair", "sample_omega", "mask_history", "gather_frames", "prepare_stage1",
           "stage1_loss", "stage2_loss", "trainable_parameters", "TIMESTEP_MULTIPLIER", "LORA_TARGETS"]
