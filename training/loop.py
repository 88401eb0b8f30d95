"""The training loop of Stage I / Stage II (arXiv 2512.23851, docs/design.md section 1) on Hugging Face Accelerate.

One loop for both stages (``TrainArgs.stage``), the losses are :mod:`training.stages`. What Accelerate gives:

* **Processes / devices**: whatever ``accelerate launch`` (or ``accelerate config``) set up: one CPU process, one GPU,
  several GPUs with DDP, or FSDP (``training/accelerate/*.yaml``; ``fsdp_cpu.yaml``: FSDP over gloo on CPU, which
  Accelerate alone would run as DDP: :func:`make_accelerator` switches it). The DiT and the encoder are one
  :class:`StageModule`, so DDP/FSDP wrap a single forward that returns the loss.
* **Mixed precision** (``no`` / ``bf16`` / ``fp16``: autocast around the forward), **gradient accumulation**
  (``accelerator.accumulate``: gradients sync and the optimizer steps every ``grad_accum`` micro-batches),
  gradient clipping.
* **Checkpoints**: ``accelerator.save_state`` into ``OUT/checkpoints/step_NNNNNNN`` (optimizer, learning-rate scheduler, sampler epoch,
  RNG states, the step counter and, through a save hook, only the *trainable* weights: LoRA + encoder, not the
  frozen base DiT); ``resume`` continues exactly: every random draw of a micro-batch (Omega, mask levels, noise,
  diffusion time, window crop) comes from a generator seeded by ``(seed, micro-batch index, process)``, and the
  data order from Accelerate's seedable sampler plus ``skip_first_batches``, so a resumed run takes the same next
  step as an uninterrupted one (tested).
* **Logging**: every ``log_every`` optimizer steps the loss (mean over the accumulation window and processes),
  the learning rate and the throughput (samples/s) go to the console, ``OUT/log.jsonl`` and Accelerate's trackers.

Data: a map-style dataset of dicts ``{"latent": [C, T, h, w], "context" or "text": [L, 4096]}`` plus, for
HunyuanVideo, ``"pooled": [768]`` (the CLIP-L pooled text embedding, the DiT's ``y``); latents in model space
(:class:`training.data.ShardDataset` gives whole chunks of VAE latents; ``training/train.py`` maps them to model space
with the family's latent format). With ``window`` > 0 each sample is a random crop
of ``window`` latent frames. Stage I: the (cropped) sample is the history H. Stage II: its last ``segment_frames``
latent frames are the next segment X, the frames before are the history.

DiT: ComfyUI's ``WanModel`` (Wan 2.1) or ``HunyuanVideo`` (T2V); the family (:func:`training.dits.dit_family`) picks
the LoRA targets, the forward with memory and the text inputs. FSDP: ``fsdp.yaml`` wraps Wan blocks,
``fsdp_hunyuan.yaml`` HunyuanVideo's double and single blocks.

Names: ``lr`` is the paper's LR (low-resolution) branch (``lr_latent``, ``lr_fn``, as in :mod:`training.stages` and
the shards); learning rates are spelled out (``TrainArgs.learning_rate``), except torch's param-group key ``"lr"`` and
the ``"lr"`` column of ``log.jsonl``.

LoRA: :func:`training.stages.add_lora` (peft, rank 128 by default) is injected into the DiT by :func:`train`;
"new LoRA" for Stage II means: call :func:`train` on a fresh base DiT with the Stage I encoder.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..memory.encoder import encoder_parts
from . import stages
from .accelerator import (CHECKPOINTS, export_trained, latest_checkpoint, make_accelerator, sync_module_states_on_cpu,
                          trainable_only_hooks)
from .dits import DEFAULT_GUIDANCE, dit_family
from .lr_schedule import warmup_cosine


@dataclass(frozen=True)
class TrainArgs:
    """Settings of one training run (CLI flags of ``training/train.py`` map one to one)."""

    stage: int = 1                       # 1: frame-query pretraining, 2: autoregressive fine-tuning
    steps: int = 100                     # optimizer steps
    batch_size: int = 1                  # samples per micro-batch and process
    learning_rate: float = 1e-4          # learning rate of the LoRA
    encoder_learning_rate: float | None = None  # learning rate of the encoder (None: learning_rate)
    lora_rank: int = 128                 # paper: 128
    lora_alpha: float | None = None      # None: = rank (scale 1)
    grad_accum: int = 1                  # micro-batches per optimizer step
    mixed_precision: str = "no"          # no | bf16 | fp16
    seed: int = 0
    omega_frames: int = 1                # Stage I: |Omega| per sample
    segment_frames: int = 4              # Stage II: latent frames of the next segment (Wan: 4 = about 1 s)
    window: int = 0                      # latent frames per sample (random crop); 0: the whole sample
    timestep_loc: float = 0.0            # diffusion time t ~ L(timestep_loc, 1) (stages.LogitNormal; > 0: more noise)
    guidance: float = DEFAULT_GUIDANCE   # HunyuanVideo embedded guidance in training (Wan: unused)
    output_dir: str | None = None        # checkpoints, log.jsonl, exported encoder/LoRA; None: nothing written
    save_every: int = 0                  # optimizer steps between checkpoints; 0: only the final export
    resume: str | None = None            # a checkpoint folder, or "latest" (newest under output_dir/checkpoints)
    log_every: int = 10                  # optimizer steps between log lines
    warmup_steps: int = 0                # linear learning-rate warm-up (torch LinearLR)
    min_learning_rate_frac: float = 1.0  # cosine decay to this fraction of the learning rate after the warm-up
                                         # (1.0: constant)
    history_choices: tuple = ()          # Stage II: history lengths (latent frames) drawn per micro-batch; () = window
    max_grad_norm: float = 1.0           # gradient clipping; 0: off
    num_workers: int = 0                 # DataLoader workers
    report_to: str | None = None         # an Accelerate tracker ("tensorboard", "wandb", ...) or None

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("steps", "batch_size", "grad_accum", "lora_rank", "omega_frames", "segment_frames", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.history_choices and (self.stage != 2 or min(self.history_choices) < 1):
            raise ValueError(f"history_choices is for Stage II and needs lengths >= 1, got {self.history_choices}")
        if self.resume and not self.output_dir and self.resume == "latest":
            raise ValueError("resume='latest' needs output_dir (where checkpoints/ is)")


class TrainState:
    """Counters saved with every checkpoint (``accelerator.register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0    # optimizer steps done
        self.micro = 0   # micro-batches done (this process)

    def state_dict(self) -> dict:
        return {"step": self.step, "micro": self.micro}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.micro = int(d["step"]), int(d["micro"])


def collate(items: list[dict]) -> dict:
    """Stack ``latent`` ``[C, T, h, w]`` -> ``[B, C, T, h, w]`` float32; ``context`` (or ``text``) ``[L, D]`` ->
    ``[B, L_max, D]`` float32, zero-padded like Wan's own text padding, with ``context_lengths`` ``[B]`` int64 (the
    unpadded ``L``); ``lr_latent`` (when every item has one) stacked like ``latent``; ``pooled`` ``[P]`` (or ``[1, P]``) -> ``[B, P]`` float32 when the items have it (HunyuanVideo).
    Raises ValueError on unequal latent shapes, or when only some items have ``pooled``."""
    shapes = {tuple(it["latent"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"samples of one batch must have equal latent shapes, got {sorted(shapes)}; "
                         "use --window to crop, or batch_size 1")
    latent = torch.stack([it["latent"].float() for it in items])
    ctx = [(it["context"] if "context" in it else it["text"]).float() for it in items]
    ctx = [c[0] if c.ndim == 3 else c for c in ctx]
    n = max(c.shape[0] for c in ctx)
    context = torch.stack([F.pad(c, (0, 0, 0, n - c.shape[0])) for c in ctx])
    out = {"latent": latent, "context": context, "context_lengths": torch.tensor([c.shape[0] for c in ctx])}
    if all("lr_latent" in it for it in items):
        first = items[0]["lr_latent"]
        if isinstance(first, (list, tuple)):  # an EncoderSet's LR latents, one per part
            out["lr_latent"] = [torch.stack([it["lr_latent"][i].float() for it in items]) for i in range(len(first))]
        else:
            out["lr_latent"] = torch.stack([it["lr_latent"].float() for it in items])
    if all("cut" in it for it in items):  # leave-and-return sequences: where the return may start (crop_stage2)
        out["cut"] = torch.stack([torch.as_tensor(it["cut"], dtype=torch.int64) for it in items])
    has_pooled = sum("pooled" in it for it in items)
    if has_pooled:
        if has_pooled != len(items):
            raise ValueError("some samples of a batch carry a pooled text embedding and some do not")
        out["pooled"] = torch.stack([it["pooled"].float().reshape(-1) for it in items])
    return out


def crop_windows(latent: torch.Tensor, window: int, generator: torch.Generator, lr_latent=None, unit: int = 1,
                 lr_units: list[int] | None = None):
    """Random crop of ``window`` latent frames per sample, starting on a memory time step (a multiple of ``unit``
    latent frames), with the matching LR latent frames: ``[B, C, T, h, w]`` -> ``[B, C, window, h, w]`` and
    ``[B, C, T // unit, h', w']`` -> ``[B, C, window // unit, h', w']`` (None stays None). An EncoderSet's list of LR
    latents is cropped part by part with ``lr_units`` (each part's own step). Returns ``(latent, lr_latent)``.
    Raises ValueError when ``T < window``."""
    t = latent.shape[2]
    if window <= 0 or window == t:
        return latent, lr_latent
    if t < window:
        raise ValueError(f"samples have {t} latent frames, fewer than window={window}")
    starts = (torch.randint(0, (t - window) // unit + 1, (latent.shape[0],), generator=generator) * unit).tolist()
    out = torch.stack([latent[b, :, s: s + window] for b, s in enumerate(starts)])

    def crop_lr_latent(x, u):
        return torch.stack([x[b, :, s // u: (s + window) // u] for b, s in enumerate(starts)])

    if lr_latent is None:
        return out, None
    if isinstance(lr_latent, (list, tuple)):
        return out, [crop_lr_latent(x, u) for x, u in zip(lr_latent, lr_units or [unit] * len(lr_latent))]
    return out, crop_lr_latent(lr_latent, unit)


def crop_stage2(latent: torch.Tensor, history: int, segment: int, generator: torch.Generator, lr_latent=None,
                unit: int = 1, cut: torch.Tensor | None = None, lr_units: list[int] | None = None):
    """Stage II windows of ``history + segment`` latent frames per sample, starting on a memory time step, like
    :func:`crop_windows`; for leave-and-return samples the start is chosen by ``cut`` ``[B, 2]`` int64 =
    ``(first latent frame of the return, last latent frame of the first shot)``: the next segment lies in the return
    and, where ``history`` is long enough, the history starts inside the first shot (so it holds shot A, the cutaway,
    and the segment is A's continuation); where it is not, the history starts as early as it can (cutaway only).
    ``cut`` None or a row ``(0, T)``: any start. Returns ``(latent, lr_latent, returns)``: ``returns`` counts the
    samples whose history holds the first shot before a cut. Raises ValueError when ``T < history + segment``."""
    b, t = latent.shape[0], latent.shape[2]
    window = history + segment
    if t < window:
        raise ValueError(f"samples have {t} latent frames, fewer than history {history} + segment {segment}")
    starts, returns = [], 0
    for i in range(b):
        cand = list(range(0, t - window + 1, unit))
        if cut is not None and int(cut[i, 0]) > 0:
            seg_min, a_last = int(cut[i, 0]), int(cut[i, 1])
            after = [s for s in cand if s + history >= seg_min] or cand[-1:]
            both = [s for s in after if s <= a_last]
            cand = both or after[:1]
            returns += bool(both)
        starts.append(cand[int(torch.randint(0, len(cand), (1,), generator=generator))])
    out = torch.stack([latent[i, :, s: s + window] for i, s in enumerate(starts)])

    def crop_lr_latent(x, u):
        return torch.stack([x[i, :, s // u: (s + window) // u] for i, s in enumerate(starts)])

    if lr_latent is None:
        return out, None, returns
    if isinstance(lr_latent, (list, tuple)):
        return out, [crop_lr_latent(x, u) for x, u in zip(lr_latent, lr_units or [unit] * len(lr_latent))], returns
    return out, crop_lr_latent(lr_latent, unit), returns


class StageModule(torch.nn.Module):
    """The DiT (``dm``, with LoRA) and the history encoder (or None: no memory) as one module whose forward is
    the loss of one micro-batch, so Accelerate's DDP / FSDP wrappers see one forward.

    The LR branch's input (:func:`training.stages.encode_history`) is the batch's ``lr_latent`` (precomputed in the
    shards; Stage I masks it with :func:`training.stages.mask_lr_latent`), or ``lr_fn(latent) -> LR latent`` (a VAE
    run in the loop, e.g. the reproduction's linear stand-in; Stage I applies it to the masked history)."""

    def __init__(self, dm: torch.nn.Module, encoder: torch.nn.Module | None, args: TrainArgs,
                 lr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.dm = dm
        self.encoder = encoder
        self.args = args
        self.lr_fn = lr_fn
        self.stage_cfg = stages.StageConfig(omega_frames=args.omega_frames, guidance=args.guidance,
                                            timesteps=stages.LogitNormal(args.timestep_loc, 1.0))

    def time_units(self) -> list[int]:
        """Latent frames per memory time step of each encoder part (``[1]`` without an encoder)."""
        if self.encoder is None:
            return [1]
        return [p.cfg.patch_size[0] * p.cfg.rate[2] for p in encoder_parts(self.encoder)]

    def time_unit(self) -> int:
        """Latent frames that windows and history lengths align to: the least common multiple of the parts' steps."""
        return math.lcm(*self.time_units())

    def forward(self, latent: torch.Tensor, context: torch.Tensor, seed: int, pooled: torch.Tensor | None = None,
                lr_latent: torch.Tensor | None = None, cut: torch.Tensor | None = None) -> torch.Tensor:
        """Loss (float32 scalar) of one micro-batch; every random draw comes from ``seed`` (CPU generator).
        ``latent`` ``[B, C, T, h, w]``, ``context`` ``[B, L, 4096]``, ``pooled`` ``[B, 768]`` (HunyuanVideo),
        ``lr_latent`` ``[B, C, T // rt, h', w']`` (model space) or None, ``cut`` ``[B, 2]`` (:func:`crop_stage2`;
        Stage II with ``history_choices``). Stage II with ``history_choices`` draws the history length of the
        micro-batch from them and crops with :func:`crop_stage2`; counts go to ``self.last_crop``."""
        g = torch.Generator().manual_seed(seed)
        rt, units = self.time_unit(), self.time_units()
        lr_units = units if isinstance(lr_latent, (list, tuple)) else None
        if self.args.stage == 2 and self.args.history_choices:
            choices = self.args.history_choices
            h = choices[int(torch.randint(0, len(choices), (1,), generator=g))]
            latent, lr_latent, returns = crop_stage2(latent, h, self.args.segment_frames, g, lr_latent, rt, cut,
                                                     lr_units)
            self.last_crop = {"history": h, "returns": returns, "samples": latent.shape[0]}
        else:
            latent, lr_latent = crop_windows(latent, self.args.window, g, lr_latent, rt, lr_units=lr_units)
        if self.args.stage == 1:
            if self.encoder is None:
                raise ValueError("Stage I trains an encoder: pass one")
            prep = stages.prepare_stage1(latent, self.stage_cfg, g, lr_latent=lr_latent,
                                         rt=units if isinstance(lr_latent, (list, tuple)) else rt)
            lr_input = self.lr_fn(prep.masked) if self.lr_fn is not None else prep.lr_masked
            loss, _ = stages.stage1_loss(self.dm, self.encoder, latent, context, prep, self.stage_cfg, lr_latent=lr_input,
                                         pooled=pooled)
            return loss
        k = self.args.segment_frames
        if latent.shape[2] <= k or (latent.shape[2] - k) % rt:
            raise ValueError(f"Stage II needs samples of segment_frames={k} latent frames plus a history of whole "
                             f"memory time steps ({rt} latent frames each), got {latent.shape[2]}")
        history, target = latent[:, :, :-k], latent[:, :, -k:]
        lr_input = None  # the LR branch's input of the history
        if self.encoder is not None and self.lr_fn is not None:
            lr_input = self.lr_fn(history)
        elif isinstance(lr_latent, (list, tuple)):
            lr_input = [x[:, :, : history.shape[2] // u] for x, u in zip(lr_latent, units)]
        elif lr_latent is not None and self.encoder is not None:
            lr_input = lr_latent[:, :, : history.shape[2] // rt]
        loss, _ = stages.stage2_loss(self.dm, self.encoder, history, target, context, cfg=self.stage_cfg,
                                     generator=g, lr_latent=lr_input, pooled=pooled)
        return loss


def micro_seed(seed: int, micro: int, process: int) -> int:
    """Seed of the random draws of micro-batch ``micro`` on process ``process`` (independent of RNG history)."""
    return (seed * 1_000_003 + micro * 8191 + process * 131) % (2 ** 63)




@dataclass
class _TrainRun:
    """What the step loop of :func:`train` works on: the prepared Accelerate objects (``module``, ``optimizer``,
    ``loader``), the counters and the loss / throughput bookkeeping (times in seconds of ``time.perf_counter``)."""

    args: TrainArgs
    accelerator: object                  # accelerate.Accelerator
    module: torch.nn.Module              # the prepared StageModule
    optimizer: torch.optim.Optimizer     # the prepared AdamW
    loader: object                       # the prepared DataLoader
    state: TrainState
    family: object                       # training.dits family of the DiT
    scheduler: object                    # learning-rate scheduler (training.lr_schedule.warmup_cosine), stepped per step
    log: Callable[[str], None]
    log_file: Path | None                # OUT/log.jsonl on the main process, else None
    params: list[torch.Tensor] = dataclasses.field(default_factory=list)  # every optimized tensor (clipping)
    losses: list[float] = dataclasses.field(default_factory=list)  # per optimizer step, mean over processes
    window: list[torch.Tensor] = dataclasses.field(default_factory=list)  # micro-batch losses of this step
    t0: float = 0.0                      # start of the step loop
    t_log: float = 0.0                   # time of the last log line (t0 before the first)
    samples_log: int = 0                 # samples (all processes) since the last log line
    crops: dict = dataclasses.field(default_factory=lambda: {"samples": 0, "returns": 0})  # crop_stage2 counts


def _check_inputs(args: TrainArgs, dm: torch.nn.Module, dataset, accelerator):
    """The family of ``dm`` (:func:`training.dits.dit_family`), after checking that ``dataset`` fills one batch on
    every process and carries ``pooled`` where the family needs it. Raises ValueError; TypeError (a DiT of no
    trainable family)."""
    if len(dataset) < args.batch_size * accelerator.num_processes:
        raise ValueError(f"dataset has {len(dataset)} samples, fewer than one batch "
                         f"({args.batch_size} x {accelerator.num_processes} processes)")
    family = dit_family(dm)
    if family.needs_pooled(dm) and "pooled" not in dataset[0]:
        raise ValueError(f"{family.name} needs a pooled text embedding per sample ('pooled' [768]); the dataset has "
                         "none: prepare shards with training/prepare_data.py --clip-type hunyuan_video")
    return family


def _make_optimizer(args: TrainArgs, dm: torch.nn.Module,
                    encoder: torch.nn.Module | None) -> tuple[torch.optim.Optimizer, int, int]:
    """Inject a fresh LoRA into ``dm`` (in place), put ``encoder`` in train mode and build AdamW (no weight decay)
    over param group 0: the LoRA at ``args.learning_rate``, and group 1 (only when the encoder has trainable
    parameters): those at ``args.encoder_learning_rate or args.learning_rate``. Returns ``(optimizer, LoRA tensors,
    encoder tensors)`` (the last two: counts)."""
    lora = stages.add_lora(dm, rank=args.lora_rank, alpha=args.lora_alpha)
    enc_params = [p for p in encoder.parameters() if p.requires_grad] if encoder is not None else []
    if encoder is not None:
        encoder.train()
    groups = [{"params": lora, "lr": args.learning_rate}]  # "lr": torch's key of a group's learning rate
    if enc_params:
        groups.append({"params": enc_params, "lr": args.encoder_learning_rate or args.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    return optimizer, len(lora), len(enc_params)


def _prepare(args: TrainArgs, accelerator, module: StageModule, optimizer: torch.optim.Optimizer, loader, scheduler):
    """``accelerator.prepare`` of the module, optimizer and loader, a :class:`TrainState` and the learning-rate ``scheduler``
    registered for checkpointing (the scheduler is not prepared: Accelerate would step it once per process), the
    trainable-only checkpoint hooks and (``args.report_to``) the trackers.
    Returns ``(module, optimizer, loader, state)``, the first three wrapped by Accelerate."""
    sync_module_states_on_cpu(accelerator, module)
    module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(scheduler)
    trainable_only_hooks(accelerator)
    if args.report_to:
        accelerator.init_trackers("framememory", config={k: v for k, v in dataclasses.asdict(args).items()
                                                         if isinstance(v, (int, float, str, bool))})
    return module, optimizer, loader, state


def _resume(args: TrainArgs, accelerator, state: TrainState, log: Callable[[str], None]) -> None:
    """Load ``args.resume`` (a checkpoint folder, or "latest": :func:`latest_checkpoint`) into the prepared objects
    and ``state``; nothing when ``args.resume`` is empty. Raises FileNotFoundError (no checkpoint), ValueError (a
    checkpoint that does not fit the model)."""
    if args.resume:
        path = latest_checkpoint(args.output_dir) if args.resume == "latest" else args.resume
        accelerator.load_state(path)
        log(f"resumed from {path} at step {state.step}")


def _log_file(args: TrainArgs, accelerator) -> Path | None:
    """``OUT/log.jsonl`` (its folder created) on the main process when ``args.output_dir`` is set, else None."""
    log_file = Path(args.output_dir) / "log.jsonl" if args.output_dir and accelerator.is_main_process else None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    return log_file


def _epoch_batches(accelerator, loader, state: TrainState):
    """The batches of the epoch that micro-batch ``state.micro`` falls in, from that micro-batch on (the sampler's
    epoch set, the ones done skipped)."""
    n = len(loader)
    epoch, skip = divmod(state.micro, n)
    loader.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip) if skip else loader


def _micro_step(run: _TrainRun, batch: dict) -> torch.Tensor:
    """Forward and backward of one micro-batch (:func:`collate` output) inside ``accelerator.accumulate``; the
    optimizer steps (at the scheduler's learning rate, with clipping) when the accumulation window is complete. Returns the
    loss (float32 scalar, attached). Raises ValueError: unequal text lengths in a batch for a DiT without text mask."""
    args, accelerator, optimizer, state = run.args, run.accelerator, run.optimizer, run.state
    lengths = batch["context_lengths"]
    if not run.family.zero_padded_text and lengths.min() != lengths.max():
        raise ValueError(f"{run.family.name}: the samples of a batch have text lengths {lengths.tolist()}; its DiT "
                         "has no per-sample text mask, so zero padding would change the condition: use "
                         "--batch-size 1 (and --grad-accum for larger batches)")
    with accelerator.accumulate(run.module):
        loss = run.module(batch["latent"], batch["context"],
                          micro_seed(args.seed, state.micro, accelerator.process_index), batch.get("pooled"),
                          batch.get("lr_latent"), batch.get("cut"))
        accelerator.backward(loss)
        if accelerator.sync_gradients and args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(run.params, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state.micro += 1
    return loss


def _end_step(run: _TrainRun) -> None:
    """Close one optimizer step: count it, record its loss (mean over the accumulation window and processes), write
    the log record every ``log_every`` steps (and at the last) and the checkpoint every ``save_every`` steps
    (``OUT/checkpoints/step_NNNNNNN``). Raises FloatingPointError on a non-finite loss."""
    args, state = run.args, run.state
    state.step += 1
    step_loss = run.accelerator.reduce(torch.stack(run.window).mean(), reduction="mean").item()
    run.window.clear()
    if not math.isfinite(step_loss):
        raise FloatingPointError(f"loss became {step_loss} at step {state.step}: lower --learning-rate or use fp32")
    run.losses.append(step_loss)
    if state.step % args.log_every == 0 or state.step == args.steps:
        _write_log_record(run, step_loss)  # the learning rate this step used
    run.scheduler.step()
    if args.output_dir and args.save_every and state.step % args.save_every == 0:
        run.accelerator.save_state(str(Path(args.output_dir) / CHECKPOINTS / f"step_{state.step:07d}"))


def _write_log_record(run: _TrainRun, step_loss: float) -> None:
    """One log record of the current step (loss, mean loss of the last ``log_every`` steps, learning rate of group 0,
    samples/s since the last record, elapsed seconds): a console line, a line of ``log.jsonl`` (main process) and
    the trackers (``report_to``)."""
    args, state, losses = run.args, run.state, run.losses
    now = time.perf_counter()
    rec = {"stage": args.stage, "step": state.step, "loss": step_loss,
           "loss_avg": sum(losses[-args.log_every:]) / len(losses[-args.log_every:]),
           "lr": run.optimizer.param_groups[0]["lr"],  # the learning rate (log.jsonl key)
           "samples_per_s": run.samples_log / max(now - run.t_log, 1e-9),
           "elapsed_s": now - run.t0}
    if run.crops["samples"]:
        rec["return_frac"] = run.crops["returns"] / run.crops["samples"]
    run.t_log, run.samples_log = now, 0
    run.log(f"stage {args.stage} step {state.step}/{args.steps} loss {rec['loss_avg']:.4f} "
            f"lr {rec['lr']:.2e} {rec['samples_per_s']:.2f} samples/s")
    if run.log_file is not None:
        with open(run.log_file, "a") as f:
            f.write(json.dumps(rec) + "\n")
    if args.report_to:
        run.accelerator.log({k: rec[k] for k in ("loss", "loss_avg", "lr", "samples_per_s")}, step=state.step)


def _run_steps(run: _TrainRun) -> None:
    """Micro-batches until ``run.state.step`` reaches ``args.steps`` (continuing a resumed run where it stopped)."""
    args, accelerator, state = run.args, run.accelerator, run.state
    while state.step < args.steps:
        for batch in _epoch_batches(accelerator, run.loader, state):
            loss = _micro_step(run, batch)
            run.samples_log += batch["latent"].shape[0] * accelerator.num_processes
            run.window.append(loss.detach().float())
            crop = getattr(accelerator.unwrap_model(run.module), "last_crop", None)
            if crop is not None:
                run.crops["samples"] += crop["samples"]
                run.crops["returns"] += crop["returns"]
            if not accelerator.sync_gradients:
                continue
            _end_step(run)
            if state.step >= args.steps:
                break


def train(args: TrainArgs, dm: torch.nn.Module, encoder: torch.nn.Module | None, dataset,
          lr_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, accelerator=None, log=None) -> dict:
    """Train Stage ``args.stage``: inject a fresh LoRA into ``dm`` (in place; pass a fresh copy of the base DiT),
    train it together with every parameter of ``encoder`` (None: Stage II without memory).

    Args:
        dm: ComfyUI ``WanModel`` (family wan21) or ``HunyuanVideo`` T2V (family hunyuan_video), fp32 or bf16
            weights, any device (Accelerate moves it).
        encoder: :class:`memory.encoder.HistoryEncoder` (or a module with ``.cfg`` and the same call, e.g. a
            baseline), its config's width = the DiT's width; None only for Stage II.
        dataset: map-style dataset of ``{"latent": [C, T, h, w], "context"|"text": [L, 4096]}`` (model-space
            latents), plus ``"pooled": [768]`` for HunyuanVideo.
        lr_fn: see :class:`StageModule`. accelerator: an existing ``Accelerator`` (default :func:`make_accelerator`).
        log: callable taking one str (default ``accelerator.print``).
    Returns:
        ``{"steps", "losses" (per optimizer step, mean over processes), "final_loss" (mean of the last 10),
        "seconds", "samples_per_s", "exported": {"lora", "encoder"} paths, "module" (the unwrapped StageModule)}``.
    Raises:
        ValueError: bad settings, a dataset too small for one batch, a checkpoint that does not fit, a HunyuanVideo
            dataset without ``pooled``. TypeError: a DiT of no trainable family.
    """
    from accelerate.utils import set_seed

    accelerator = accelerator or make_accelerator(args)
    log = log or accelerator.print
    set_seed(args.seed)
    family = _check_inputs(args, dm, dataset, accelerator)
    optimizer, n_lora, n_enc = _make_optimizer(args, dm, encoder)
    scheduler = warmup_cosine(optimizer, args.steps, args.warmup_steps, args.min_learning_rate_frac)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate, num_workers=args.num_workers)
    module = StageModule(dm, encoder, args, lr_fn)
    module, optimizer, loader, state = _prepare(args, accelerator, module, optimizer, loader, scheduler)
    log(f"stage {args.stage}: {accelerator.num_processes} process(es) ({accelerator.distributed_type.value}, "
        f"{accelerator.device}), mixed precision {accelerator.mixed_precision}, {len(dataset)} samples, "
        f"{n_lora} LoRA tensors + {n_enc} encoder tensors trainable")
    _resume(args, accelerator, state, log)
    run = _TrainRun(args, accelerator, module, optimizer, loader, state, family, scheduler, log,
                    _log_file(args, accelerator), params=[p for g in optimizer.param_groups for p in g["params"]])
    run.t0 = run.t_log = time.perf_counter()
    start_micro = state.micro
    _run_steps(run)
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - run.t0
    exported = export_trained(accelerator, module, args, state)
    if args.report_to:
        accelerator.end_training()
    tail = run.losses[-10:]
    return {"steps": state.step, "losses": run.losses,
            "final_loss": sum(tail) / len(tail) if tail else float("nan"), "seconds": seconds,
            "samples_per_s": (state.micro - start_micro) * args.batch_size * accelerator.num_processes / max(seconds, 1e-9),
            "exported": exported, "module": accelerator.unwrap_model(module),
            "return_frac": run.crops["returns"] / run.crops["samples"] if run.crops["samples"] else None}


__all__ = ["TrainArgs", "TrainState", "StageModule", "collate", "crop_windows", "crop_stage2", "micro_seed",
           "latest_checkpoint", "make_accelerator", "train", "CHECKPOINTS"]
