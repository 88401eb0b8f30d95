"""Stage I / Stage II training of a memory encoder + LoRA on Accelerate (arXiv 2512.23851; loop: training/loop.py).

Prepare shards first (training/prepare_data.py), then, for example::

  # Stage I (frame-query pretraining), one GPU or one CPU process:
  accelerate launch --num_processes 1 training/train.py --stage 1 --data shards/ --dit wan2.1_t2v_1.3B_bf16.safetensors \\
      --out runs/stage1 --window 12 --steps 20000 --mixed-precision bf16 --save-every 1000
  # Stage II (autoregressive fine-tuning): new LoRA, the Stage I encoder keeps training:
  accelerate launch training/train.py --stage 2 --data shards/ --dit wan2.1_t2v_1.3B_bf16.safetensors \\
      --encoder runs/stage1/encoder_stage1.safetensors --out runs/stage2 --window 16 --segment-frames 4
  # several GPUs: accelerate launch --config_file training/accelerate/ddp.yaml training/train.py ...  (or fsdp.yaml)
  # resume after an interruption: the same command plus --resume latest

FSDP without GPUs: ``training/accelerate/fsdp_cpu.yaml`` runs the FSDP path of fsdp.yaml (FSDP v1, one unit per Wan
block, SHARDED_STATE_DICT checkpoints, use_orig_params) with 2 CPU processes over gloo. It is for checking that path
(sharding, sharded checkpoints and --resume, the gathered export) on a machine without GPUs (tests/test_fsdp_cpu.py),
not for speed. Accelerate alone would make such a launch plain DDP (MULTI_CPU); training/loop.py switches it to
FSDP, and the log line says ``2 process(es) (FSDP, cpu)``::

  accelerate launch --config_file training/accelerate/fsdp_cpu.yaml training/train.py --stage 1 --data shards/ \
      --dit DIT.safetensors --out runs/fsdp_cpu --window 8 --lora-rank 4 --steps 4 --save-every 2
  # then the same command with --steps 6 --resume latest; exports as a single-process run

HunyuanVideo (T2V 1.0, e.g. hunyuan_video_t2v_720p_bf16.safetensors): shards need the pooled CLIP-L embedding, so
prepare them with its VAE and both text encoders, then pass its DiT (the family is detected from the file)::

  python training/prepare_data.py VIDEOS --out shards_hv/ --vae hunyuan_video_vae_bf16.safetensors \\
      --clip-type hunyuan_video --text-encoder clip_l.safetensors llava_llama3_fp8_scaled.safetensors --fps 24
  accelerate launch training/train.py --stage 1 --data shards_hv/ --dit hunyuan_video_t2v_720p_bf16.safetensors \\
      --dit-dtype bfloat16 --mixed-precision bf16 --out runs/hv_stage1 --window 12 --steps 20000
  # several GPUs with FSDP: --config_file training/accelerate/fsdp_hunyuan.yaml (wraps double / single blocks)

``python training/train.py ...`` is the same as one process. Outputs in --out: ``checkpoints/step_N`` (with
--save-every), ``log.jsonl``, ``encoder_stageS.safetensors`` (for ``models/memory_encoders/``) and
``lora_stageS.safetensors`` (ComfyUI LoRA keys, for ``models/loras/`` and LoraLoaderModelOnly on the same DiT).
Shards hold the VAE's latents; they are mapped to the DiT's model space (``process_in`` of its family's ComfyUI latent
format) on loading. ``--tiny-dit`` (or ``--tiny-dit hunyuan_video``) trains the pack's tiny random Wan (HunyuanVideo)
DiT (smoke tests; no meaning).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import tyro

from framememory.headless.comfy_import import import_comfyui


def load_dit(path: str, dtype: str):
    """A trainable DiT from a diffusion-model file via ComfyUI's own detection (``comfy.sd``): Wan 2.1 T2V/I2V
    (``comfy.ldm.wan.model.WanModel``, 1.3B or 14B) or HunyuanVideo T2V
    (``comfy.ldm.hunyuan_video.model.HunyuanVideo``), weights in ``dtype`` (``float32`` / ``bfloat16`` /
    ``float16``). Raises SystemExit for any other model."""
    import torch

    import comfy.sd
    import comfy.utils
    from framememory.training.dits import dit_family

    sd = comfy.utils.load_torch_file(path, safe_load=True)
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": getattr(torch, dtype)})
    if patcher is None:
        raise SystemExit(f"ComfyUI could not detect a diffusion model in {path}")
    dm = patcher.model.diffusion_model
    try:
        dit_family(dm)
    except TypeError as e:
        raise SystemExit(f"{path}: {e}") from None
    return dm.to(getattr(torch, dtype))


def tiny_dit(family: str, seed: int):
    """The pack's tiny random DiT of ``family`` (``wan21`` or ``hunyuan_video``), for smoke tests."""
    if family == "hunyuan_video":
        from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit

        return tiny_hunyuan_dit(seed=seed)
    from framememory.demo.tiny_models import tiny_wan21_dit

    return tiny_wan21_dit(seed=seed)


def build_encoder(dm, args):
    """The history encoder to train: loaded from --encoder (Stage I result; several files: one EncoderSet trained
    together) or new from --rate/--hr-channels (``A+B``, e.g. ``4x4x2+2x2x8``: an EncoderSet); with --memory-type
    pack_forcing the (Stage I) encoder gets PackForcing's settings, with video_ssm new (or loaded) VideoSSM state
    modules (issue 12; Stage II only)."""
    import torch

    from framememory.memory.encoder import EncoderSet
    from framememory.training.dits import dit_family

    if args.no_memory:
        return None
    family = dit_family(dm)
    width = family.width(dm)
    kind = getattr(args, "memory_type", "frame_preservation")
    if kind == "video_ssm" and args.stage == 1:
        raise SystemExit("--memory-type video_ssm has no Stage I (VideoSSM trains its state modules in Stage II)")
    parts = [_load_part(path, family, width) for path in
             ([args.encoder] if isinstance(args.encoder, str) else list(args.encoder or []))]
    if kind == "video_ssm":
        return parts[0] if parts else _new_state_memory(dm, family, width, args)
    if not parts:
        parts = _new_encoders(family, width, args)
        for i, part in enumerate(parts):  # seeded (--seed): the same command gives the same start on every process
            part.reset_parameters(torch.Generator().manual_seed(getattr(args, "seed", 0) + 1 + i))
    if kind == "pack_forcing":
        if len(parts) > 1:
            raise SystemExit("--memory-type pack_forcing takes one encoder")
        parts[0].cfg = dataclasses.replace(parts[0].cfg, memory_type="pack_forcing", sink_latent_frames=args.sink_frames,
                                           overlap_latent_frames=args.recent_frames, top_k=args.top_k)
    return parts[0] if len(parts) == 1 else EncoderSet(parts)


def _load_part(path: str, family, width: int):
    """A trained encoder (HistoryEncoder) or VideoSSM state file (StateMemory) from ``path``, checked against the DiT
    (the class is the file's design's: :func:`memory.designs.network_class`)."""
    from framememory.memory.designs import network_class
    from framememory.memory.io import load_encoder_file

    sd, cfg = load_encoder_file(path)
    if cfg.dim != width or cfg.family != family.name:
        raise SystemExit(f"{path} is for {cfg.family} width {cfg.dim}, the DiT is {family.name} width {width}")
    enc = network_class(cfg.memory_type)(cfg)
    enc.load_state_dict(sd)
    return enc


def _new_encoders(family, width: int, args) -> list:
    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder

    chans = tuple(int(c) for c in args.hr_channels.split(","))
    return [HistoryEncoder(EncoderConfig(family=family.name, dim=width, rate=rate, hr_channels=chans,
                                         attn_heads=args.attn_heads, use_hr=not args.only_lr,
                                         use_lr=not args.without_lr))
            for rate in args.rate.split("+")]


def _new_state_memory(dm, family, width: int, args):
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.designs.video_ssm import StateMemory

    net = StateMemory(EncoderConfig(family=family.name, dim=width, memory_type="video_ssm", use_hr=False,
                                    dit_blocks=len(dm.blocks), ssm_heads=args.ssm_heads, ssm_key_dim=args.ssm_key_dim,
                                    sink_latent_frames=args.sink_frames, overlap_latent_frames=args.recent_frames))
    net.reset_parameters(torch.Generator().manual_seed(getattr(args, "seed", 0) + 2))
    return net


@dataclass(frozen=True)
class Args:
    """Stage I / Stage II training of a memory encoder + LoRA (flags: the module docstring's examples)."""

    stage: Literal[1, 2]
    """1: frame-query pretraining, 2: autoregressive"""
    data: str
    """shard folder written by training/prepare_data.py"""
    out: str
    """output folder (checkpoints, log.jsonl, exported encoder and LoRA)"""
    dit: Optional[str] = None
    """diffusion model file, family detected by ComfyUI: Wan 2.1 T2V/I2V (1.3B, 14B) or HunyuanVideo T2V
    (bf16/fp16/fp32; HunyuanVideo needs shards with pooled text, see above); or --tiny-dit"""
    tiny_dit: Optional[Literal["wan21", "hunyuan_video"]] = None
    """the pack's tiny random DiT of that family (--tiny-dit alone: wan21; smoke tests only); or --dit"""
    dit_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the frozen DiT weights (bfloat16 halves memory)"""
    encoder: Optional[tuple[str, ...]] = None
    """encoder file(s) to continue from (Stage II: the Stage I encoder; several files: the parts of an encoder set,
    trained together); excludes --no-memory"""
    no_memory: bool = False
    """Stage II without memory tokens (baseline)"""
    rate: str = "4x4x2"
    """new encoder: compression HxWxT; A+B (e.g. 4x4x2+2x2x8) trains a set of encoders whose tokens are concatenated
    (one file per part)"""
    hr_channels: str = "64,128,256,512"
    """new encoder: HR branch widths"""
    attn_heads: int = 8
    """new encoder: heads of the HR attention"""
    only_lr: bool = False
    """new encoder without HR branch (ablation)"""
    without_lr: bool = False
    """new encoder without LR branch (ablation)"""
    memory_type: Literal["frame_preservation", "pack_forcing", "video_ssm"] = "frame_preservation"
    """memory design (issue 12). pack_forcing: Stage II with sink + top-K mid blocks + recent frames, selection and
    RoPE re-packing in every step (start from the Stage I encoder); video_ssm: Stage II of new VideoSSM state modules
    (no Stage I)"""
    sink_frames: int = 2
    """pack_forcing / video_ssm: sink latent frames"""
    recent_frames: int = 2
    """pack_forcing / video_ssm: recent latent frames"""
    top_k: int = 16
    """pack_forcing: mid blocks kept per forward (paper: 16)"""
    ssm_heads: int = 12
    """video_ssm: state heads per block (D divisible)"""
    ssm_key_dim: int = 64
    """video_ssm: state key width"""
    steps: int = 1000
    """optimizer steps"""
    batch_size: int = 1
    """samples per micro-batch and process"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    learning_rate: Annotated[float, tyro.conf.arg(aliases=("--lr",))] = 1e-4
    """LoRA learning rate"""
    encoder_learning_rate: Annotated[Optional[float], tyro.conf.arg(aliases=("--encoder-lr",))] = None
    """encoder learning rate (default: --learning-rate)"""
    lora_rank: int = 128
    """LoRA rank (paper: 128)"""
    lora_alpha: Optional[float] = None
    """LoRA alpha (default: rank)"""
    mixed_precision: Optional[Literal["no", "bf16", "fp16"]] = None
    """autocast precision (default: what accelerate config says, else no)"""
    seed: int = 0
    """seed of the new encoder, the LoRA and every random draw of the run"""
    omega_frames: int = 1
    """Stage I: |Omega| latent frames regenerated per sample"""
    segment_frames: int = 4
    """Stage II: latent frames of the next segment"""
    window: int = 0
    """latent frames per sample, random crop (0: whole shard)"""
    timestep_loc: float = 0.0
    """diffusion time t ~ logit-normal L(loc, 1); loc > 0 trains more at high noise"""
    guidance: float = 1.0
    """HunyuanVideo: embedded guidance during training (1.0: the unguided flow target; ignored for Wan)"""
    save_every: int = 0
    """optimizer steps between checkpoints (0: none)"""
    resume: Optional[str] = None
    """'latest' or a checkpoint folder"""
    log_every: int = 10
    """optimizer steps between log lines"""
    warmup_steps: int = 0
    """linear learning-rate warm-up steps"""
    max_grad_norm: float = 1.0
    """gradient clipping (0: off)"""
    num_workers: int = 0
    """DataLoader workers"""
    report_to: Optional[str] = None
    """Accelerate tracker: tensorboard, wandb, ... (default none)"""
    comfyui_dir: Optional[str] = None
    """ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)"""


def _tiny_dit_default(argv: list[str]) -> list[str]:
    """``argv`` with ``wan21`` after a bare ``--tiny-dit`` (one followed by nothing or by another flag): the flag's
    value is optional, as it always was."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--tiny-dit" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("wan21")
    return out


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line (default ``sys.argv[1:]``) as :class:`Args`. Raises SystemExit on a bad or contradicting
    flag (tyro's usage message, or the reason)."""
    a = tyro.cli(Args, args=_tiny_dit_default(list(sys.argv[1:] if argv is None else argv)),
                 description=__doc__.split("\n")[0], config=(tyro.conf.FlagCreatePairsOff,))
    if (a.dit is None) == (a.tiny_dit is None):
        raise SystemExit("one of --dit and --tiny-dit is required (not both)")
    if a.encoder and a.no_memory:
        raise SystemExit("--encoder and --no-memory exclude each other")
    if a.stage == 1 and a.no_memory:
        raise SystemExit("--no-memory is a Stage II baseline; Stage I trains an encoder")
    if a.only_lr and a.without_lr:
        raise SystemExit("--only-lr and --without-lr exclude each other")
    return a


def _train_args(a: Args):
    """The :class:`training.loop.TrainArgs` of the command line. Raises SystemExit on settings it refuses."""
    from framememory.training.loop import TrainArgs

    mixed = a.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    try:
        return TrainArgs(stage=a.stage, steps=a.steps, batch_size=a.batch_size, learning_rate=a.learning_rate,
                         encoder_learning_rate=a.encoder_learning_rate, lora_rank=a.lora_rank,
                         lora_alpha=a.lora_alpha, grad_accum=a.grad_accum, mixed_precision=mixed, seed=a.seed,
                         omega_frames=a.omega_frames, segment_frames=a.segment_frames, window=a.window,
                         timestep_loc=a.timestep_loc, guidance=a.guidance, output_dir=a.out,
                         save_every=a.save_every, resume=a.resume, log_every=a.log_every,
                         warmup_steps=a.warmup_steps, max_grad_norm=a.max_grad_norm, num_workers=a.num_workers,
                         report_to=a.report_to)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None


def _dataset(a: Args, dm, encoder):
    """The shards of ``a.data`` in ``dm``'s model space, with the LR latents of ``encoder``'s rate(s) (none without an
    LR branch). Raises SystemExit when the shards do not fit."""
    from framememory.memory.encoder import EncoderSet, encoder_parts
    from framememory.training.data import ModelSpaceDataset, ShardDataset
    from framememory.training.dits import dit_family

    lr_rate = None
    if isinstance(encoder, EncoderSet):
        lr_rate = tuple(p.cfg.rate_str for p in encoder_parts(encoder))
    elif encoder is not None and encoder.cfg.use_lr and encoder.cfg.memory_type != "video_ssm":  # VideoSSM: no LR branch
        lr_rate = encoder.cfg.rate_str
    try:
        return ModelSpaceDataset(ShardDataset(a.data, lr_rate=lr_rate), dit_family(dm).latent_format())
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None


def _import_comfyui(comfyui_dir: str | None) -> None:
    """ComfyUI importable (:func:`framememory.headless.comfy_import.import_comfyui`), on this process's GPU
    (``LOCAL_RANK``, set before ComfyUI picks its device), on the CPU without CUDA."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    import_comfyui(comfyui_dir, cpu=not torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    _import_comfyui(a.comfyui_dir)
    from accelerate.state import PartialState

    from framememory.training.loop import train

    args = _train_args(a)
    dm = tiny_dit(a.tiny_dit, a.seed) if a.tiny_dit else load_dit(a.dit, a.dit_dtype)
    encoder = build_encoder(dm, a)
    result = train(args, dm, encoder, _dataset(a, dm, encoder))
    if PartialState().is_main_process:
        print(f"stage {a.stage}: {result['steps']} steps in {result['seconds']:.1f} s, final loss "
              f"{result['final_loss']:.4f}; wrote " + ", ".join(result["exported"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
