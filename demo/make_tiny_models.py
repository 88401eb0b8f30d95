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

import argparse
import importlib.util
import os
import sys

DIT_FILE = "framememory_tiny_wan21.safetensors"
VAE_FILE = "framememory_tiny_wan21_vae.safetensors"
ENCODER_FILE = "framememory_tiny_wan21_encoder.safetensors"
HUNYUAN_FILES = {"dit": "framememory_tiny_hunyuan.safetensors", "vae": "framememory_tiny_hunyuan_vae.safetensors",
                 "encoder": "framememory_tiny_hunyuan_encoder.safetensors"}


def _import_pack(name: str = "framememory"):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"), submodule_search_locations=[root])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def write_tiny_models(out: str, seed: int = 0) -> dict[str, str]:
    """Write the three files (atomically; existing identical files are rewritten). Returns {kind: path}."""
    import torch
    from safetensors.torch import save_file

    pack = _import_pack()
    from framememory.demo.tiny_models import tiny_encoder_config, tiny_wan21_dit, tiny_wan21_vae  # noqa: E402
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import save_encoder

    del pack
    paths = {
        "dit": os.path.join(out, "diffusion_models", DIT_FILE),
        "vae": os.path.join(out, "vae", VAE_FILE),
        "encoder": os.path.join(out, "memory_encoders", ENCODER_FILE),
    }
    for kind, module in (("dit", tiny_wan21_dit(seed)), ("vae", tiny_wan21_vae(seed + 1))):
        os.makedirs(os.path.dirname(paths[kind]), exist_ok=True)
        tmp = paths[kind] + ".tmp"
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp)
        os.replace(tmp, paths[kind])
    cfg = tiny_encoder_config()
    torch.manual_seed(seed + 2)
    enc = HistoryEncoder(cfg)
    enc.reset_parameters(torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():  # a random (untrained) but non-zero HR output so the HR branch is exercised
        enc.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed + 3))
    save_encoder(paths["encoder"], enc.state_dict(), cfg)
    return paths


def _save_atomic(path: str, state_dict: dict) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path + ".tmp")
    os.replace(path + ".tmp", path)


def write_tiny_hunyuan_models(out: str, seed: int = 0) -> dict[str, str]:
    """Write the tiny HunyuanVideo DiT, HunyuanVideo's VAE (real size, random, bf16) and a 2x2x2 memory encoder
    for the DiT (atomically). Returns {kind: path} with kinds dit, vae, encoder."""
    import torch

    _import_pack()
    from framememory.demo.tiny_hunyuan import tiny_hunyuan_dit, tiny_hunyuan_encoder_config, tiny_hunyuan_vae_state_dict
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import save_encoder

    folders = {"dit": "diffusion_models", "vae": "vae", "encoder": "memory_encoders"}
    paths = {kind: os.path.join(out, folders[kind], name) for kind, name in HUNYUAN_FILES.items()}
    _save_atomic(paths["dit"], tiny_hunyuan_dit(seed).state_dict())
    _save_atomic(paths["vae"], tiny_hunyuan_vae_state_dict(seed + 1))
    cfg = tiny_hunyuan_encoder_config(rate="2x2x2")
    enc = HistoryEncoder(cfg)
    enc.reset_parameters(torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():  # a random (untrained) but non-zero HR output so the HR branch is exercised
        enc.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed + 3))
    save_encoder(paths["encoder"], enc.state_dict(), cfg)
    return paths


WAN22_FILES = {"dit": "framememory_tiny_wan22.safetensors", "vae": "framememory_tiny_wan22_vae.safetensors",
               "encoder": "framememory_tiny_wan22_encoder.safetensors"}


def write_tiny_wan22_models(out: str, seed: int = 0, vae: bool = True) -> dict[str, str]:
    """Write the tiny Wan 2.2 5B-shaped DiT, a 4x4x2 memory encoder for it and (``vae=True``) the real-size Wan 2.2
    VAE with random bf16 weights (atomically). Returns {kind: path} with kinds dit, encoder (and vae)."""
    import torch

    _import_pack()
    from framememory.demo.tiny_wan22 import real_wan22_vae_state_dict, tiny_wan22_dit, tiny_wan22_encoder_config
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import save_encoder

    folders = {"dit": "diffusion_models", "vae": "vae", "encoder": "memory_encoders"}
    paths = {kind: os.path.join(out, folders[kind], name) for kind, name in WAN22_FILES.items() if vae or kind != "vae"}
    _save_atomic(paths["dit"], tiny_wan22_dit(seed).state_dict())
    if vae:
        _save_atomic(paths["vae"], real_wan22_vae_state_dict(seed + 1))
    cfg = tiny_wan22_encoder_config()
    enc = HistoryEncoder(cfg)
    enc.reset_parameters(torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():  # a random (untrained) but non-zero HR output so the HR branch is exercised
        enc.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed + 3))
    save_encoder(paths["encoder"], enc.state_dict(), cfg)
    return paths


WRITERS = {"wan21": write_tiny_models, "hunyuan_video": write_tiny_hunyuan_models, "wan22": write_tiny_wan22_models}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"), required=os.environ.get("COMFYUI_DIR") is None,
                    help="ComfyUI source folder (default: $COMFYUI_DIR)")
    ap.add_argument("--out", required=True, help="ComfyUI models folder to write into")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default="wan21",
                    help=f"comma-separated families to write, of {', '.join(WRITERS)} (default: wan21)")
    args = ap.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in WRITERS]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(WRITERS)}")
    sys.path.insert(0, os.path.abspath(args.comfyui_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    for family in families:
        for kind, path in WRITERS[family](args.out, args.seed).items():
            print(f"wrote {family} {kind}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print("NOTE: these are tiny RANDOM models: the video they generate is not meaningful imagery.")


if __name__ == "__main__":
    main()
