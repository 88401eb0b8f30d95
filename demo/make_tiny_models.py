"""Write the embedded-default tiny models as safetensors files into a ComfyUI models folder.

Usage: python demo/make_tiny_models.py --comfyui-dir DIR --out MODELS_DIR

Writes MODELS_DIR/diffusion_models/framememory_tiny_wan21.safetensors (stock UNETLoader),
MODELS_DIR/vae/framememory_tiny_wan21_vae.safetensors (stock VAELoader) and
MODELS_DIR/memory_encoders/framememory_tiny_wan21_encoder.safetensors (Load Memory Encoder). Random weights,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui-dir", default=os.environ.get("COMFYUI_DIR"), required=os.environ.get("COMFYUI_DIR") is None,
                    help="ComfyUI source folder (default: $COMFYUI_DIR)")
    ap.add_argument("--out", required=True, help="ComfyUI models folder to write into")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.comfyui_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    for kind, path in write_tiny_models(args.out, args.seed).items():
        print(f"wrote {kind}: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print("NOTE: these are tiny RANDOM models: the video they generate is not meaningful imagery.")


if __name__ == "__main__":
    main()
