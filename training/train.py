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

import argparse
import dataclasses
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __package__:  # imported as framememory.training.train: the library API is training/loop.py
    from .loop import TrainArgs, train  # noqa: F401


def _setup_imports(comfyui_dir: str) -> None:
    """ComfyUI on sys.path (CPU unless CUDA is there), the repository root off it; ``framememory`` itself is the
    installed package (``pip install -e .``)."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != REPO_ROOT]
    if not os.path.isdir(os.path.join(comfyui_dir, "comfy")):
        raise SystemExit(f"no ComfyUI at {comfyui_dir} (set --comfyui-dir or COMFYUI_DIR)")
    sys.path.insert(0, os.path.abspath(comfyui_dir))
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before ComfyUI picks its device
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True


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
    """A trained encoder (HistoryEncoder) or VideoSSM state file (StateMemory) from ``path``, checked against the DiT."""
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import load_encoder_file
    from framememory.memory.state_memory import StateMemory

    sd, cfg = load_encoder_file(path)
    if cfg.dim != width or cfg.family != family.name:
        raise SystemExit(f"{path} is for {cfg.family} width {cfg.dim}, the DiT is {family.name} width {width}")
    enc = (StateMemory if cfg.memory_type == "video_ssm" else HistoryEncoder)(cfg)
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
    from framememory.memory.state_memory import StateMemory

    net = StateMemory(EncoderConfig(family=family.name, dim=width, memory_type="video_ssm", use_hr=False,
                                    dit_blocks=len(dm.blocks), ssm_heads=args.ssm_heads, ssm_key_dim=args.ssm_key_dim,
                                    sink_latent_frames=args.sink_frames, overlap_latent_frames=args.recent_frames))
    net.reset_parameters(torch.Generator().manual_seed(getattr(args, "seed", 0) + 2))
    return net


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=int, choices=[1, 2], required=True, help="1: frame-query pretraining, 2: autoregressive")
    ap.add_argument("--data", required=True, help="shard folder written by training/prepare_data.py")
    ap.add_argument("--out", required=True, help="output folder (checkpoints, log.jsonl, exported encoder and LoRA)")
    dit = ap.add_mutually_exclusive_group(required=True)
    dit.add_argument("--dit", help="diffusion model file, family detected by ComfyUI: Wan 2.1 T2V/I2V (1.3B, 14B) "
                     "or HunyuanVideo T2V (bf16/fp16/fp32; HunyuanVideo needs shards with pooled text, see above)")
    dit.add_argument("--tiny-dit", nargs="?", const="wan21", choices=["wan21", "hunyuan_video"],
                     help="the pack's tiny random DiT of that family (default wan21; smoke tests only)")
    ap.add_argument("--dit-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the frozen DiT weights (default float32; bfloat16 halves memory)")
    enc = ap.add_mutually_exclusive_group()
    enc.add_argument("--encoder", nargs="+", help="encoder file(s) to continue from (Stage II: the Stage I encoder; "
                     "several files: the parts of an encoder set, trained together)")
    enc.add_argument("--no-memory", action="store_true", help="Stage II without memory tokens (baseline)")
    ap.add_argument("--rate", default="4x4x2", help="new encoder: compression HxWxT (default 4x4x2); A+B (e.g. "
                    "4x4x2+2x2x8) trains a set of encoders whose tokens are concatenated (one file per part)")
    ap.add_argument("--hr-channels", default="64,128,256,512", help="new encoder: HR branch widths")
    ap.add_argument("--attn-heads", type=int, default=8, help="new encoder: heads of the HR attention")
    ap.add_argument("--only-lr", action="store_true", help="new encoder without HR branch (ablation)")
    ap.add_argument("--without-lr", action="store_true", help="new encoder without LR branch (ablation)")
    mode = ap.add_argument_group("memory design (issue 12)")
    mode.add_argument("--memory-type", default="frame_preservation", choices=["frame_preservation", "pack_forcing", "video_ssm"],
                      help="pack_forcing: Stage II with sink + top-K mid blocks + recent frames, selection and RoPE "
                           "re-packing in every step (start from the Stage I encoder); video_ssm: Stage II of new "
                           "VideoSSM state modules (no Stage I)")
    mode.add_argument("--sink-frames", type=int, default=2, help="pack_forcing / video_ssm: sink latent frames")
    mode.add_argument("--recent-frames", type=int, default=2, help="pack_forcing / video_ssm: recent latent frames")
    mode.add_argument("--top-k", type=int, default=16, help="pack_forcing: mid blocks kept per forward (paper: 16)")
    mode.add_argument("--ssm-heads", type=int, default=12, help="video_ssm: state heads per block (D divisible)")
    mode.add_argument("--ssm-key-dim", type=int, default=64, help="video_ssm: state key width")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    ap.add_argument("--batch-size", type=int, default=1, help="samples per micro-batch and process")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--lr", type=float, default=1e-4, help="LoRA learning rate")
    ap.add_argument("--encoder-lr", type=float, default=None, help="encoder learning rate (default: --lr)")
    ap.add_argument("--lora-rank", type=int, default=128, help="LoRA rank (paper: 128)")
    ap.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    ap.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                    help="autocast precision (default: what accelerate config says, else no)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omega-frames", type=int, default=1, help="Stage I: |Omega| latent frames regenerated per sample")
    ap.add_argument("--segment-frames", type=int, default=4, help="Stage II: latent frames of the next segment")
    ap.add_argument("--window", type=int, default=0, help="latent frames per sample, random crop (default: whole shard)")
    ap.add_argument("--timestep-loc", type=float, default=0.0,
                    help="diffusion time t ~ logit-normal L(loc, 1); loc > 0 trains more at high noise (default 0)")
    ap.add_argument("--guidance", type=float, default=1.0,
                    help="HunyuanVideo: embedded guidance during training (default 1.0: the unguided flow target; "
                         "ignored for Wan)")
    ap.add_argument("--save-every", type=int, default=0, help="optimizer steps between checkpoints (0: none)")
    ap.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    ap.add_argument("--log-every", type=int, default=10, help="optimizer steps between log lines")
    ap.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--report-to", default=None, help="Accelerate tracker: tensorboard, wandb, ... (default none)")
    ap.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or os.path.join(REPO_ROOT, ".cache", "ComfyUI"),
                    help="ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)")
    return ap, ap.parse_args(argv)


def main(argv=None) -> int:
    ap, a = parse_args(argv)
    if a.stage == 1 and a.no_memory:
        ap.error("--no-memory is a Stage II baseline; Stage I trains an encoder")
    if a.only_lr and a.without_lr:
        ap.error("--only-lr and --without-lr exclude each other")
    _setup_imports(a.comfyui_dir)
    from accelerate.state import PartialState

    from framememory.training.data import ModelSpaceDataset, ShardDataset
    from framememory.training.dits import dit_family
    from framememory.training.loop import TrainArgs, train

    mixed = a.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    try:
        args = TrainArgs(stage=a.stage, steps=a.steps, batch_size=a.batch_size, lr=a.lr, encoder_lr=a.encoder_lr,
                         lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, grad_accum=a.grad_accum, mixed_precision=mixed,
                         seed=a.seed, omega_frames=a.omega_frames, segment_frames=a.segment_frames, window=a.window,
                         timestep_loc=a.timestep_loc, guidance=a.guidance,
                         output_dir=a.out, save_every=a.save_every, resume=a.resume, log_every=a.log_every,
                         warmup_steps=a.warmup_steps, max_grad_norm=a.max_grad_norm, num_workers=a.num_workers,
                         report_to=a.report_to)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    dm = tiny_dit(a.tiny_dit, a.seed) if a.tiny_dit else load_dit(a.dit, a.dit_dtype)
    encoder = build_encoder(dm, a)
    from framememory.memory.encoder import EncoderSet, encoder_parts

    lr_rate = None
    if isinstance(encoder, EncoderSet):
        lr_rate = tuple(p.cfg.rate_str for p in encoder_parts(encoder))
    elif encoder is not None and encoder.cfg.use_lr and encoder.cfg.memory_type != "video_ssm":  # VideoSSM: no LR branch
        lr_rate = encoder.cfg.rate_str
    try:
        dataset = ModelSpaceDataset(ShardDataset(a.data, lr_rate=lr_rate), dit_family(dm).latent_format())
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    result = train(args, dm, encoder, dataset)
    if PartialState().is_main_process:
        print(f"stage {a.stage}: {result['steps']} steps in {result['seconds']:.1f} s, final loss "
              f"{result['final_loss']:.4f}; wrote " + ", ".join(result["exported"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
