"""The training and evaluation runs of the small-scale reproduction (training/reproduce.py, steps 3-5 of its
docstring): the base DiT (pretrained once per seed and cached), Stage I per variant with its held-out frame-query
metrics, and the Stage II arms, each a row of the result."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
import time

from .reproduce_config import CACHE_DIR, PAPER_V1, REPO_ROOT, VARIANTS, Preset, log
from .reproduce_data import WindowDataset


def make_dit(p: Preset, seed: int):
    """ComfyUI's own ``WanModel`` (t2v) at the preset's width/depth, seeded init (``demo.tiny_models.init_weights``)."""
    from framememory.demo.tiny_models import tiny_wan21_dit

    return tiny_wan21_dit(seed=seed, dim=p.dim, ffn_dim=p.ffn, num_heads=p.heads, num_layers=p.layers)


def pretrain_base(dm, dataset, p: Preset, seed: int, device) -> dict:
    """Base pretraining (stand-in for pretrained Wan weights, :func:`training.pretrain.pretrain_dit`): every DiT
    weight trained as a video generator of ``p.segment``-frame windows (``t ~ L(p.timestep_loc, 1)``, the fixed
    stand-in text, no memory) for ``p.base_steps`` steps of ``p.batch_size``. Returns ``{"losses", "seconds",
    "final_loss"}``; ``dm`` is left frozen in eval mode."""
    import torch

    from framememory.training.pretrain import pretrain_dit

    def next_batch(g):
        items = [dataset[i] for i in torch.randint(0, len(dataset), (p.batch_size,), generator=g).tolist()]
        return torch.stack([it["latent"] for it in items]), torch.stack([it["context"] for it in items])

    return pretrain_dit(dm, next_batch, steps=p.base_steps, lr=p.base_lr, warmup_steps=p.warmup_steps,
                        timestep_loc=p.timestep_loc, seed=seed, device=device, mixed_precision=p.mixed_precision,
                        log=log)


def build_encoder(kind: str, rate: str, p: Preset, dm, seed: int):
    """The history encoder of one variant (module docstring), seeded; ``dm`` gives the width and, for the Large
    Patchifier, the patch embedding it starts from."""
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training.baselines import LargePatchifier

    cfg = EncoderConfig(family="wan21", dim=int(dm.dim), rate=rate, hr_channels=tuple(p.hr_channels),
                        attn_heads=p.attn_heads, use_hr=kind != "only_lr", use_lr=kind != "without_lr",
                        memory_timestep="shared" if kind == "shared_timestep" else "zero")
    if kind == "large_patchifier":
        return LargePatchifier(dataclasses.replace(cfg, use_lr=False), patch_embedding=dm.patch_embedding)
    enc = HistoryEncoder(cfg)
    enc.reset_parameters(torch.Generator().manual_seed(seed + 1))
    return enc


def memory_tokens(cfg, p: Preset) -> int:
    from framememory.memory.grid import memory_grid

    tm, hm, wm = memory_grid((p.history, p.height // 8, p.width // 8), cfg)
    return tm * hm * wm



@dataclass
class RunContext:
    """What the per-seed training and evaluation of :func:`run` share (built once per run)."""

    p: Preset
    preset_name: str
    eval_seed: int                   # seed of the held-out queries and noises (same for every variant)
    device: object                   # torch.device of training and evaluation
    vae: object                      # the fitted training.standin_vae.PatchPCAVAE, on ``device``
    fit_key: str                     # hash of the training clips and frame settings (cache file names)
    train1: WindowDataset            # Stage I histories, ``p.history`` latent frames
    train2: WindowDataset            # Stage II (history, next segment) windows, ``p.history + p.segment`` frames
    train_base: WindowDataset        # base pretraining windows, ``p.segment`` frames
    eval1_items: list                # held-out histories (dicts with ``latent``, ``context``, ``frames``)
    eval2_items: list                # held-out (history, segment) windows (dicts with ``latent``, ``context``)
    common: dict                     # TrainArgs fields shared by Stage I and Stage II
    vae_kind: str = "standin"        # "standin" (PatchPCAVAE) or "lab" (training.reproduce_labvae.LabVideoVAE)
    variants: tuple = VARIANTS       # the Stage I variants run (--paper-rows-only: the five rows of the v1 table)



def _variant_data(ctx: "RunContext", dataset, cfg):
    """The training data of an encoder of config ``cfg`` (None: no encoder): with the lab VAE the windows carrying
    the real LR latent of ``cfg``'s rate when it has an LR branch; the stand-in's windows as they are."""
    if ctx.vae_kind != "lab":
        return dataset
    return dataset.with_lr(cfg.rate_str if cfg is not None and cfg.use_lr else None)


def common_train_args(p: Preset) -> dict:
    """The ``TrainArgs`` fields Stage I and Stage II runs share."""
    return dict(batch_size=p.batch_size, learning_rate=p.lr, lora_rank=p.lora_rank, mixed_precision=p.mixed_precision,
                warmup_steps=p.warmup_steps, log_every=50, segment_frames=p.segment, timestep_loc=p.timestep_loc)


def _lr_fn(vae, cfg):
    """The LR branch's input for an encoder of config ``cfg``: ``latent [B, C, T, h, w] -> vae.lr_latent(latent,
    cfg.rate)`` when ``cfg.use_lr`` and ``vae`` is the stand-in, else None (the lab VAE's LR latents come with the
    data: :func:`_variant_data`, the held-out items' ``"lr_latents"``)."""
    return (lambda x, _r=cfg.rate: vae.lr_latent(x, _r)) if cfg.use_lr and hasattr(vae, "lr_latent") else None


def _render(ctx: "RunContext"):
    """The frame-query ``render`` hook of the lab VAE (:meth:`LabVideoVAE.render`), None for the stand-in."""
    return ctx.vae.render if ctx.vae_kind == "lab" else None


def base_dit_file(p: Preset, preset_name: str, seed: int, fit_key: str, vae_kind: str) -> Path:
    """The base DiT's cache file under ``CACHE_DIR``: preset, seed, sizes, steps, the data key ``fit_key`` and, for
    a VAE other than the stand-in, its kind (the stand-in's names predate the kind; no other VAE shares them)."""
    base_key = f"{p.dim}x{p.layers}x{p.heads}_{p.base_steps}steps_loc{p.timestep_loc:g}_{p.segment}f"
    if vae_kind != "standin":
        base_key += f"_vae-{vae_kind}"
    return CACHE_DIR / f"base_dit_{preset_name}_seed{seed}_{base_key}_{fit_key}.safetensors"


def base_dit(ctx: RunContext, seed: int):
    """The base DiT of ``seed``: loaded from ``CACHE_DIR`` or pretrained (:func:`pretrain_base`) and cached; frozen,
    eval mode, on ``ctx.device``. Returns ``(dit, info)`` (info: the cache file, or pretraining seconds and the
    final loss, mean of the last 20 steps)."""
    p = ctx.p
    base = make_dit(p, seed)
    base_file = base_dit_file(p, ctx.preset_name, seed, ctx.fit_key, ctx.vae_kind)
    if base_file.exists():
        from safetensors.torch import load_file

        base.load_state_dict(load_file(str(base_file)))
        info = {"cached": str(base_file.relative_to(REPO_ROOT))}
        log(f"base DiT seed {seed}: loaded {base_file.name}")
    else:
        log(f"base DiT seed {seed}: pretraining {p.base_steps} steps")
        trained = pretrain_base(base, ctx.train_base, p, seed, ctx.device)
        from framememory.memory.io import save_safetensors_atomic

        save_safetensors_atomic(str(base_file), base.state_dict(), {})
        tail = trained["losses"][-20:]
        info = {"seconds": trained["seconds"], "final_loss": sum(tail) / len(tail)}
    base.to(ctx.device).eval()
    for prm in base.parameters():
        prm.requires_grad_(False)
    return base, info


def ceiling_row(ctx: RunContext, base) -> dict:
    """Reference row: frame-query PSNR / SSIM of the ground-truth latent frames through the VAE (no sampling)."""
    from framememory.training import evaluate

    def passthrough(history, omega):
        from framememory.training.stages import gather_frames

        return gather_frames(history.expand(omega.shape[0], -1, -1, -1, -1), omega)

    ref = evaluate.frame_query_metrics(base, None, ctx.eval1_items, ctx.vae, seed=ctx.eval_seed,
                                       queries_per_clip=ctx.p.eval_queries, predict=passthrough, render=_render(ctx))
    log(f"VAE ceiling ({ctx.vae_kind}): PSNR {ref['psnr']:.2f} SSIM {ref['ssim']:.3f} over {ref['n']} frames")
    return {"variant": "VAE ceiling (ground-truth latent)", "rate": "-", "tokens": "-",
            "psnr": ref["psnr"], "ssim": ref["ssim"], "seed": "-", "train_s": 0.0}


def base_row(ctx: RunContext, base, seed: int) -> dict:
    """Reference row: the base DiT without memory (frame-query PSNR / SSIM and held-out Stage I loss)."""
    from framememory.training import evaluate

    p = ctx.p
    t0 = time.perf_counter()
    m = evaluate.frame_query_metrics(base, None, ctx.eval1_items, ctx.vae, seed=ctx.eval_seed,
                                     queries_per_clip=p.eval_queries, steps=p.eval_steps, render=_render(ctx))
    loss = evaluate.frame_query_loss(base, None, ctx.eval1_items, seed=ctx.eval_seed, n_t=p.n_t)
    row = {"variant": "Base DiT, no memory", "rate": "-", "tokens": 0, "psnr": m["psnr"], "ssim": m["ssim"],
           "loss": loss, "seed": seed, "train_s": 0.0, "eval_s": time.perf_counter() - t0}
    log(f"seed {seed} base DiT without memory: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f}")
    return row


def _stage1_variant(ctx: RunContext, base, seed: int, name: str, rate: str, kind: str):
    """Stage I of one variant (:data:`VARIANTS`) on a copy of ``base``, then its held-out frame-query metrics and
    losses (own memory, another clip's memory). Returns ``(row, encoder)``."""
    from framememory.training import evaluate
    from .loop import TrainArgs, train

    p, items, eval_seed = ctx.p, ctx.eval1_items, ctx.eval_seed
    label = f"{name} {rate}"
    dm = copy.deepcopy(base)
    enc = build_encoder(kind, rate, p, dm, seed)
    cfg = enc.cfg
    lr_fn = _lr_fn(ctx.vae, cfg)
    log(f"seed {seed} Stage I {label}: {memory_tokens(cfg, p)} memory tokens, "
        f"{sum(q.numel() for q in enc.parameters())} encoder parameters")
    res = train(TrainArgs(stage=1, steps=p.stage1_steps, seed=seed, **ctx.common), dm, enc,
                _variant_data(ctx, ctx.train1, cfg), lr_fn=lr_fn)
    t0 = time.perf_counter()
    m = evaluate.frame_query_metrics(dm, enc, items, ctx.vae, seed=eval_seed,
                                     queries_per_clip=p.eval_queries, steps=p.eval_steps, lr_fn=lr_fn,
                                     render=_render(ctx))
    loss = evaluate.frame_query_loss(dm, enc, items, seed=eval_seed, n_t=p.n_t, lr_fn=lr_fn)
    shuffled = evaluate.frame_query_loss(dm, enc, items, seed=eval_seed, n_t=p.n_t, lr_fn=lr_fn,
                                         shuffle_memory=True)
    row = {"variant": label, "rate": rate, "tokens": memory_tokens(cfg, p), "psnr": m["psnr"],
           "ssim": m["ssim"], "loss": loss, "loss_shuffled": shuffled, "memory_gain": shuffled - loss,
           "psnr_vs_vae": m["psnr_vae"], "ssim_vs_vae": m["ssim_vae"], "frames": m["n"],
           "seed": seed, "train_s": res["seconds"], "eval_s": time.perf_counter() - t0,
           "final_loss": res["final_loss"], "steps": res["steps"], "paper_v1": PAPER_V1.get(label)}
    log(f"seed {seed} {label}: PSNR {m['psnr']:.2f} SSIM {m['ssim']:.3f}, held-out loss {loss:.4f} "
        f"(other clip's memory {shuffled:.4f}) (train {res['seconds']:.0f} s, final loss "
        f"{res['final_loss']:.4f})")
    del dm
    return row, enc


def stage1_rows(ctx: RunContext, base, seed: int):
    """Stage I rows of every variant of :data:`VARIANTS`, in order. Returns ``(rows, the Proposed 4x4x2 encoder)``."""
    rows, proposed_442 = [], None
    for name, rate, kind in ctx.variants:
        row, enc = _stage1_variant(ctx, base, seed, name, rate, kind)
        rows.append(row)
        if row["variant"] == "Proposed 4x4x2":
            proposed_442 = enc
    return rows, proposed_442


def _stage2_arm(ctx: RunContext, base, seed: int, arm: str, enc) -> dict:
    """Stage II of one arm (a new LoRA on a copy of ``base`` with encoder ``enc``, None: no memory): held-out
    next-segment loss before and after ``p.stage2_steps`` steps. Returns its row."""
    from framememory.training import evaluate
    from .loop import TrainArgs, train

    p, items, eval_seed = ctx.p, ctx.eval2_items, ctx.eval_seed
    dm = copy.deepcopy(base)
    lr_fn = _lr_fn(ctx.vae, enc.cfg) if enc is not None else None
    before = evaluate.next_segment_loss(base, enc, items, seed=eval_seed, n_t=p.n_t,
                                        segment_frames=p.segment, lr_fn=lr_fn)
    log(f"seed {seed} Stage II {arm}: held-out loss before {before:.4f}")
    res = train(TrainArgs(stage=2, steps=p.stage2_steps, seed=seed, **ctx.common), dm, enc,
                _variant_data(ctx, ctx.train2, enc.cfg if enc is not None else None), lr_fn=lr_fn)
    after = evaluate.next_segment_loss(dm, enc, items, seed=eval_seed, n_t=p.n_t,
                                       segment_frames=p.segment, lr_fn=lr_fn)
    row = {"arm": arm, "rate": "4x4x2" if enc is not None else "-",
           "heldout_loss": after, "heldout_loss_before": before, "seed": seed,
           "train_s": res["seconds"], "final_train_loss": res["final_loss"]}
    log(f"seed {seed} Stage II {arm}: held-out next-segment loss {after:.4f} "
        f"(train {res['seconds']:.0f} s)")
    del dm
    return row


def stage2_rows(ctx: RunContext, base, seed: int, proposed_442) -> list[dict]:
    """Stage II rows of the three arms (Stage I encoder, no memory, encoder without Stage I); none when
    ``p.stage2_steps`` is 0."""
    if ctx.p.stage2_steps <= 0:
        return []
    arms = [("memory (Stage I encoder)", copy.deepcopy(proposed_442)),
            ("no memory", None),
            ("memory, encoder without Stage I", build_encoder("proposed", "4x4x2", ctx.p, base, seed))]
    return [_stage2_arm(ctx, base, seed, arm, enc) for arm, enc in arms]

