"""Shared helpers of the benchmarks: machine description, result files, text tables. The pack itself is the
installed package ``framememory`` (``pip install -e .``, done by scripts/setup.sh); ``scripts/`` goes on sys.path
for the main job's evaluation module ``example_eval`` (long_run.py, memory_modes.py)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def machine() -> dict:
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, rows: list[dict], extra: dict | None = None) -> str:
    out = os.path.join(ROOT, "benchmarks", "results", f"{name}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"benchmark": name, "machine": machine(), "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                   **(extra or {}), "rows": rows}, f, indent=2)
    return out


def print_table(rows: list[dict], cols: list[str], digits: int | None = None) -> None:
    """Print ``rows`` as a text table of the columns ``cols``; ``digits``: floats rounded to that many decimals."""
    def fmt(v) -> str:
        return f"{v:.{digits}f}" if digits is not None and isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))


# ---- the lab set's rows (issue 22) ----------------------------------------------------------------------------------
LAB = "framememory_lab_wan21"
LAB_ROW_FILES = {  # row -> (encoder file, LoRA file) in the lab folder; first existing LoRA wins, with its note
    "off": (f"{LAB}_encoder", [(f"{LAB}_nomemory_lora", "no-memory LoRA"),
                               (f"{LAB}_lora", "memory LoRA, memory removed")]),
    "sliding": (f"{LAB}_encoder", [(f"{LAB}_sliding_lora", "sliding-window LoRA"),
                                   (f"{LAB}_lora", "memory LoRA")]),
    "fp": (f"{LAB}_encoder", [(f"{LAB}_lora", "")]),
    "frame_preservation": (f"{LAB}_encoder", [(f"{LAB}_lora", "")]),
    "fp_4x4x2": (f"{LAB}_4x4x2_encoder", [(f"{LAB}_4x4x2_lora", "")]),
    "pack_forcing": (f"{LAB}_packforcing_encoder", [(f"{LAB}_packforcing_lora", "")]),
    "video_ssm": (f"{LAB}_videossm", [(f"{LAB}_videossm_lora", "")]),
    "stage1": (f"{LAB}_encoder", [(f"{LAB}_stage1_lora", "Stage I LoRA")]),
}


def fetch_heldout(names) -> None:
    """Fetch the clips ``names`` (file names in .cache/media) that are missing, with
    ``training.media.fetch_media`` (tree.avi from Debian's opencv-doc, the held-out webps from ComfyUI's templates
    package; bikes and carphone come with scripts/setup.sh). Raises SystemExit naming each clip still missing and
    why, before any model runs."""
    from pathlib import Path

    from framememory.training.media import fetch_media

    want = tuple(dict.fromkeys(os.path.basename(n) for n in names))
    missing = fetch_media(Path(ROOT) / ".cache" / "media", want=want)["missing"]
    if missing:
        raise SystemExit("clips missing from .cache/media: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))


def lab_set_files(lab_dir: str, row: str) -> dict:
    """The lab files a benchmark row uses (:data:`LAB_ROW_FILES`): ``{"files": {"dit", "vae", "encoder", "lora": path},
    "note": which LoRA stands in, or ""}`` when they exist, else ``{"missing": [file names]}`` (the row is reported
    "not trained"). The "off" row takes the no-memory LoRA when the lab set has one (the honest floor), else the
    memory LoRA with memory removed; "sliding" likewise its own LoRA. Raises KeyError for an unknown row."""
    encoder, loras = LAB_ROW_FILES[row]
    path = lambda stem: os.path.join(lab_dir, stem + ".safetensors")  # noqa: E731
    lora, note = next(((path(s), n) for s, n in loras if os.path.isfile(path(s))), (path(loras[0][0]), ""))
    files = {"dit": path(LAB), "vae": path(f"{LAB}_vae"), "encoder": path(encoder), "lora": lora}
    missing = [os.path.basename(p) for p in files.values() if not os.path.isfile(p)]
    return {"missing": missing} if missing else {"files": files, "note": note}


def load_lab_set(lab_dir: str, files: dict, vae=None):
    """``(MODEL with the LoRA, VAE, memory encoder)`` from :func:`lab_set_files`' files, loaded as the stock nodes load
    them (``training.lab.load_lab_model``'s calls: Load Diffusion Model, LoraLoaderModelOnly, Load VAE, Load Memory
    Encoder); ``vae``: an already loaded VAE of the set to share. Needs ComfyUI importable (``long_run.setup``)."""
    import comfy.sd
    import comfy.utils

    from framememory.models.encoding import MemoryEncoder

    model = comfy.sd.load_diffusion_model(files["dit"])
    model, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(files["lora"], safe_load=True),
                                             1.0, 0)
    vae = vae or comfy.sd.VAE(sd=comfy.utils.load_torch_file(files["vae"]))
    return model, vae, MemoryEncoder.from_file(files["encoder"])


def vae_pass(vae, frames):
    """uint8 ``[F, H, W, 3]`` (F = 1 + 4k) encoded and decoded by ``vae`` as one stream (``models.vae_stream``): what
    the reference rows "last frame through the VAE" and "VAE ceiling" are cut from (scripts/scores.py)."""
    import torch

    from framememory.memory.frames import to_uint8
    from framememory.models.vae_stream import VideoStream

    latent = VideoStream(vae, "encode", time_stride=4).encode(torch.from_numpy(frames).float() / 255.0)
    return to_uint8(VideoStream(vae, "decode", time_stride=4).decode(latent)).numpy().reshape(frames.shape)
