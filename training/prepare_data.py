"""Precompute latents and text conditions of a video folder into safetensors shards (see training/data.py).

Usage:
  python training/prepare_data.py VIDEOS_DIR --out SHARDS_DIR --vae wan_2.1_vae.safetensors \\
      --text-encoder umt5_xxl_fp8_e4m3fn_scaled.safetensors [--width 832 --height 480 --fps 16 --frames 81]
  python training/prepare_data.py VIDEOS_DIR --out SHARDS_DIR --vae VAE.safetensors --stand-in-text --cpu
  # HunyuanVideo: its VAE and both text encoders; shards also get the pooled CLIP-L embedding (the DiT's y)
  python training/prepare_data.py VIDEOS_DIR --out SHARDS_DIR --vae hunyuan_video_vae_bf16.safetensors \\
      --clip-type hunyuan_video --text-encoder clip_l.safetensors llava_llama3_fp8_scaled.safetensors --fps 24

The VAE file loads through ComfyUI's stock detection (comfy.sd.VAE), the text encoder(s) through
comfy.sd.load_clip with type ``--clip-type`` (wan, or hunyuan_video, which also stores ``pooled`` [768]);
``--stand-in-text`` uses the pack's weightless demo text encoder instead (tests, smoke runs: its conditions carry no
meaning; with --clip-type hunyuan_video it gives a pooled vector too). Rerun the same command to resume: finished
shards are skipped. Captions: ``<video>.json`` sidecars ``{"shots": [{"start_s", "end_s", "prompt"}]}`` or
``captions.csv`` (video,start_s,end_s,prompt) in VIDEOS_DIR.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import tyro

from framememory.headless.comfy_import import import_comfyui

CLIP_TYPES = ("wan", "hunyuan_video")


def build_encoders(vae_path: str, text_encoder, stand_in_text: bool, clip_type: str = "wan"):
    """(encode_video, encode_text) from ComfyUI models. Requires ComfyUI on sys.path.

    ``text_encoder``: one file or a list of files (HunyuanVideo: CLIP-L and LLaVA-Llama-3). ``clip_type``: ``wan``
    (``encode_text`` -> ``[L, 4096]``) or ``hunyuan_video`` (-> ``([L, 4096], pooled [768])``)."""
    import torch

    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    if vae.first_stage_model is None:
        raise SystemExit(f"ComfyUI could not detect a VAE in {vae_path}")
    pooled = clip_type == "hunyuan_video"
    if stand_in_text:
        from framememory.demo.text_encoder import StandInTextEncoder

        clip = StandInTextEncoder(pooled_dim=768 if pooled else None)
    else:
        paths = [text_encoder] if isinstance(text_encoder, str) else list(text_encoder)
        clip = comfy.sd.load_clip(ckpt_paths=paths, clip_type=getattr(comfy.sd.CLIPType, clip_type.upper()))

    def encode_video(frames: torch.Tensor) -> torch.Tensor:  # [F, H, W, 3] 0..1 -> [1, C, T, h, w]
        return vae.encode(frames[..., :3])

    def encode_text(prompt: str):  # -> [L, D], or ([L, D], pooled [P]) for hunyuan_video
        cond, extra = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0]
        if not pooled:
            return cond[0]
        if extra.get("pooled_output") is None:
            raise SystemExit("the text encoder gave no pooled output: HunyuanVideo needs CLIP-L among --text-encoder")
        return cond[0], extra["pooled_output"][0]

    return encode_video, encode_text


@dataclass(frozen=True)
class Args:
    """Precompute latents and text conditions of a video folder into safetensors shards."""

    input_dir: tyro.conf.Positional[str]
    """folder of videos (mp4/avi/mov/mkv/webm via PyAV, animated webp/gif via Pillow)"""
    out: str
    """output folder of shards and manifest.json"""
    vae: str
    """VAE safetensors file (e.g. wan_2.1_vae.safetensors)"""
    text_encoder: Optional[tuple[str, ...]] = None
    """ComfyUI text encoder file(s), loaded with --clip-type (Wan: umt5-xxl; HunyuanVideo: clip_l and llava_llama3);
    or --stand-in-text"""
    stand_in_text: bool = False
    """the pack's weightless demo text encoder (instead of --text-encoder)"""
    clip_type: Literal[CLIP_TYPES] = "wan"  # type: ignore[valid-type]
    """text encoder type: wan or hunyuan_video (also stores the pooled CLIP-L embedding)"""
    width: int = 832
    """frame width, multiple of 16"""
    height: int = 480
    """frame height, multiple of 16"""
    fps: float = 16.0
    """resample videos to this frame rate"""
    frames: int = 81
    """video frames per chunk, 4k+1"""
    stride: int = 0
    """frames between chunk starts (0: --frames)"""
    max_chunks: int = 0
    """chunks per video at most (0: all)"""
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    """storage dtype of latents and text conditions"""
    lr_rates: tuple[str, ...] = ("4x4x2",)
    """rates HxWxT whose LR-branch latents the shards carry (the history encoder's rate)"""
    default_prompt: str = ""
    """prompt for videos without captions"""
    comfyui_dir: Optional[str] = None
    """ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)"""
    cpu: bool = False
    """run ComfyUI on the CPU"""
    no_progress: bool = False
    """no progress bar"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n")[0], config=(tyro.conf.FlagCreatePairsOff,))
    if bool(args.text_encoder) == args.stand_in_text:
        raise SystemExit("one of --text-encoder and --stand-in-text is required (not both)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import_comfyui(args.comfyui_dir, cpu=args.cpu)
    from framememory.training.data import ClipSettings, prepare_dataset

    try:
        cfg = ClipSettings(width=args.width, height=args.height, fps=args.fps, chunk_frames=args.frames,
                           stride=args.stride, max_chunks=args.max_chunks, dtype=args.dtype,
                           default_prompt=args.default_prompt, lr_rates=tuple(args.lr_rates))
    except ValueError as e:
        raise SystemExit(str(e)) from None
    encode_video, encode_text = build_encoders(args.vae, args.text_encoder, args.stand_in_text, args.clip_type)
    manifest = prepare_dataset(args.input_dir, args.out, cfg, encode_video, encode_text, progress=not args.no_progress)
    run = manifest["run"]
    print(f"{manifest['num_shards']} shards in {args.out} ({run['written']} written, {run['skipped']} already there); "
          f"{run['failed']} videos failed" + (": " + ", ".join(f["source"] for f in manifest["failed"]) if run["failed"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
