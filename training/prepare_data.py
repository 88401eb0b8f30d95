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

import argparse
import logging
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _drop_repo_root_from_path() -> None:
    """`python training/prepare_data.py` puts training/ first on sys.path (harmless); drop the repo root if present."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != REPO_ROOT]


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input_dir", help="folder of videos (mp4/avi/mov/mkv/webm via PyAV, animated webp/gif via Pillow)")
    ap.add_argument("--out", required=True, help="output folder of shards and manifest.json")
    ap.add_argument("--vae", required=True, help="VAE safetensors file (e.g. wan_2.1_vae.safetensors)")
    text = ap.add_mutually_exclusive_group(required=True)
    text.add_argument("--text-encoder", nargs="+", help="ComfyUI text encoder file(s), loaded with --clip-type "
                      "(Wan: umt5-xxl; HunyuanVideo: clip_l and llava_llama3)")
    text.add_argument("--stand-in-text", action="store_true", help="the pack's weightless demo text encoder")
    ap.add_argument("--clip-type", default="wan", choices=CLIP_TYPES,
                    help="text encoder type: wan (default) or hunyuan_video (also stores the pooled CLIP-L embedding)")
    ap.add_argument("--width", type=int, default=832, help="frame width, multiple of 16 (default 832)")
    ap.add_argument("--height", type=int, default=480, help="frame height, multiple of 16 (default 480)")
    ap.add_argument("--fps", type=float, default=16.0, help="resample videos to this frame rate (default 16)")
    ap.add_argument("--frames", type=int, default=81, help="video frames per chunk, 4k+1 (default 81)")
    ap.add_argument("--stride", type=int, default=0, help="frames between chunk starts (default: --frames)")
    ap.add_argument("--max-chunks", type=int, default=0, help="chunks per video at most (default: all)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"],
                    help="storage dtype of latents and text conditions (default bfloat16)")
    ap.add_argument("--lr-rates", nargs="+", default=["4x4x2"],
                    help="rates HxWxT whose LR-branch latents the shards carry (the history encoder's rate; "
                         "default 4x4x2)")
    ap.add_argument("--default-prompt", default="", help="prompt for videos without captions (default: empty)")
    ap.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR") or os.path.join(REPO_ROOT, ".cache", "ComfyUI"),
                    help="ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)")
    ap.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    _drop_repo_root_from_path()
    if not os.path.isdir(os.path.join(args.comfyui_dir, "comfy")):
        ap.error(f"no ComfyUI at {args.comfyui_dir} (set --comfyui-dir or COMFYUI_DIR)")
    sys.path.insert(0, os.path.abspath(args.comfyui_dir))
    import comfy.cli_args

    if args.cpu:
        comfy.cli_args.args.cpu = True
    from framememory.training.data import ClipSettings, prepare_dataset

    try:
        cfg = ClipSettings(width=args.width, height=args.height, fps=args.fps, chunk_frames=args.frames,
                           stride=args.stride, max_chunks=args.max_chunks, dtype=args.dtype,
                           default_prompt=args.default_prompt, lr_rates=tuple(args.lr_rates))
    except ValueError as e:
        ap.error(str(e))
    encode_video, encode_text = build_encoders(args.vae, args.text_encoder, args.stand_in_text, args.clip_type)
    manifest = prepare_dataset(args.input_dir, args.out, cfg, encode_video, encode_text, progress=not args.no_progress)
    run = manifest["run"]
    print(f"{manifest['num_shards']} shards in {args.out} ({run['written']} written, {run['skipped']} already there); "
          f"{run['failed']} videos failed" + (": " + ", ".join(f["source"] for f in manifest["failed"]) if run["failed"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
