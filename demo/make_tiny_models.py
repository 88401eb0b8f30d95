"""Write the embedded-default tiny models as safetensors files into a ComfyUI models folder.

Usage: python demo/make_tiny_models.py --comfyui-dir DIR --out MODELS_DIR [--families wan21,hunyuan_video]

Writes MODELS_DIR/diffusion_models/framememory_tiny_wan21.safetensors (stock UNETLoader),
MODELS_DIR/vae/framememory_tiny_wan21_vae.safetensors (stock VAELoader) and
MODELS_DIR/memory_encoders/framememory_tiny_wan21_encoder.safetensors (Load Memory Encoder); with
``--families ...,hunyuan_video`` also the HunyuanVideo trio framememory_tiny_hunyuan{,_vae,_encoder}.safetensors
(its VAE is HunyuanVideo's real-size VAE, 493 MB: ComfyUI's VAE detection fixes its widths); with
``--families ...,wan22`` also the Wan 2.2 TI2V 5B-shaped trio framememory_tiny_wan22{,_vae,_encoder}.safetensors
(its VAE is the real-size Wan 2.2 VAE, 1.41 GB in bf16, for the same reason). Random weights,
seeded: the video they make is NOT meaningful imagery.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import tyro

from framememory.headless.comfy_import import import_comfyui

FOLDERS = {"dit": "diffusion_models", "vae": "vae", "encoder": "memory_encoders"}
STEMS = {"wan21": "framememory_tiny_wan21", "hunyuan_video": "framememory_tiny_hunyuan", "wan22": "framememory_tiny_wan22"}


def _save_atomic(path: str, state_dict: dict) -> None:
    # absolute imports of the installed package: this file also runs as a script (no parent package then)
    from framememory.memory.io import save_safetensors_atomic

    save_safetensors_atomic(path, state_dict, {})


def _family_parts(family: str, seed: int):
    """(DiT state dict, VAE state dict factory, encoder config) of one family's tiny models."""
    if family == "wan21":
        from framememory.demo.tiny_models import tiny_encoder_config, tiny_wan21_dit, tiny_wan21_vae

        return tiny_wan21_dit(seed).state_dict(), lambda: tiny_wan21_vae(seed + 1).state_dict(), tiny_encoder_config()
    if family == "hunyuan_video":
        from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit, tiny_hunyuan_encoder_config, tiny_hunyuan_vae_state_dict

        return (tiny_hunyuan_dit(seed).state_dict(), lambda: tiny_hunyuan_vae_state_dict(seed + 1),
                tiny_hunyuan_encoder_config(rate="2x2x2"))
    from framememory.demo.tiny_wan22 import real_wan22_vae_state_dict, tiny_wan22_dit, tiny_wan22_encoder_config

    return tiny_wan22_dit(seed).state_dict(), lambda: real_wan22_vae_state_dict(seed + 1), tiny_wan22_encoder_config()


def write_family(out: str, family: str = "wan21", seed: int = 0, vae: bool = True) -> dict[str, str]:
    """Write one family's tiny DiT, VAE (``vae=False``: skip it) and memory encoder into the models folder ``out``
    (atomically). The encoder's HR output projection is random, not zero, so the HR branch is exercised.
    Returns {kind: path} with kinds dit, vae, encoder."""
    import torch

    dit_sd, vae_sd, cfg = _family_parts(family, seed)
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import save_encoder

    paths = {kind: os.path.join(out, FOLDERS[kind], f"{STEMS[family]}{suffix}.safetensors")
             for kind, suffix in (("dit", ""), ("vae", "_vae"), ("encoder", "_encoder")) if vae or kind != "vae"}
    _save_atomic(paths["dit"], dit_sd)
    if vae:
        _save_atomic(paths["vae"], vae_sd())
    enc = HistoryEncoder(cfg)
    enc.reset_parameters(torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        enc.hr.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed + 3))
    save_encoder(paths["encoder"], enc.state_dict(), cfg)
    return paths


@dataclass(frozen=True)
class Args:
    """Write the pack's tiny random models (DiT, VAE, memory encoder) of some families into a ComfyUI models folder."""

    out: str
    """ComfyUI models folder to write into"""
    comfyui_dir: Optional[str] = None
    """ComfyUI source folder (default: $COMFYUI_DIR, else .cache/ComfyUI)"""
    seed: int = 0
    """seed of the random weights"""
    families: str = "wan21"
    """comma-separated families to write, of wan21, wan22, hunyuan_video"""


def main(args: Args) -> None:
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in STEMS]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; choose from {', '.join(STEMS)}")
    import_comfyui(args.comfyui_dir, cpu=True)
    for family in families:
        for kind, path in write_family(args.out, family, args.seed).items():
            print(f"wrote {family} {kind}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print("NOTE: these are tiny RANDOM models: the video they generate is not meaningful imagery.")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
