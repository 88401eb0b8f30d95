"""The main job's models (scripts/run_example.py): which weights run (the user's, the trained lab model or tiny random
ones), where they are installed in the server's models folders, how the report describes them.

Weights come from (first match wins per key) --config JSON keys, then environment variables (:data:`WEIGHT_KEYS`);
with none, the lab model's files in :data:`LAB_DIR` (training/lab.py), else tiny random models
(demo/make_tiny_models.py).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

sys.path.insert(0, str(Path(__file__).resolve().parent))  # example_common.py (also when loaded by path)
from example_common import REPO_ROOT, ExampleError, log  # noqa: E402

WORKFLOW_TINY = REPO_ROOT / "demo" / "workflows" / "api" / "storyboard_wan21_tiny_api.json"
WORKFLOW_LAB = REPO_ROOT / "workflows" / "api" / "storyboard_wan21_lab_api.json"
LAB_DIR = Path(os.environ.get("FRAMEMEMORY_LAB_DIR") or REPO_ROOT / "lab_model")
WORKFLOW_REAL = REPO_ROOT / "workflows" / "api" / "storyboard_wan21_api.json"

# key -> (environment variable, models sub-folder, (class_type, input) that names the file)
WEIGHT_KEYS = {
    "wan_model": ("FRAMEMEMORY_WAN_MODEL", "diffusion_models", ("UNETLoader", "unet_name")),
    "t5": ("FRAMEMEMORY_T5", "text_encoders", ("CLIPLoader", "clip_name")),
    "vae": ("FRAMEMEMORY_VAE", "vae", ("VAELoader", "vae_name")),
    "encoder": ("FRAMEMEMORY_ENCODER", "memory_encoders", ("FrameMemoryLoadEncoder", "encoder_name")),
}
REQUIRED_REAL = ("wan_model", "t5", "vae")
TINY_FILES = {  # written by demo/make_tiny_models.py
    "wan_model": "framememory_tiny_wan21.safetensors",
    "vae": "framememory_tiny_wan21_vae.safetensors",
    "encoder": "framememory_tiny_wan21_encoder.safetensors",
}
LAB_FILES = {  # key -> (file in LAB_DIR, models sub-folder, (class_type, input) that names it); trained by training/lab.py
    "wan_model": ("framememory_lab_wan21.safetensors", "diffusion_models", ("UNETLoader", "unet_name")),
    "vae": ("framememory_lab_wan21_vae.safetensors", "vae", ("VAELoader", "vae_name")),
    "encoder": ("framememory_lab_wan21_encoder.safetensors", "memory_encoders", ("FrameMemoryLoadEncoder", "encoder_name")),
    "lora": ("framememory_lab_wan21_lora.safetensors", "loras", ("LoraLoaderModelOnly", "lora_name")),
}
REAL_WEIGHTS_HINT = ("Set FRAMEMEMORY_WAN_MODEL, FRAMEMEMORY_T5, FRAMEMEMORY_VAE (and FRAMEMEMORY_ENCODER) "
                     "or pass --config to use real weights.")
EMBEDDED_WARNING = ("EMBEDDED DEFAULT: tiny, randomly initialised models (no real Wan/T5/VAE/encoder weights; the "
                    f"trained lab model is not in {LAB_DIR}). The pipeline ran end to end, but the video is NOT "
                    "meaningful imagery. " + REAL_WEIGHTS_HINT)


# ---- user weights and tiny models -------------------------------------------------------------
def resolve_weights(config_path: str | None) -> dict[str, Path]:
    """{key: file} from --config (wins) and the environment; {} means the embedded default."""
    config = {}
    if config_path:
        try:
            config = json.loads(Path(config_path).read_text())
        except (OSError, ValueError) as e:
            raise ExampleError(f"cannot read --config {config_path}: {e}") from e
        unknown = set(config) - set(WEIGHT_KEYS)
        if unknown:
            raise ExampleError(f"--config {config_path}: unknown keys {sorted(unknown)}; expected {sorted(WEIGHT_KEYS)}")
    weights = {}
    for key, (env, _, _) in WEIGHT_KEYS.items():
        value = config.get(key) or os.environ.get(env)
        if value:
            weights[key] = Path(value).expanduser().resolve()
    if not weights:
        return {}
    missing = [k for k in REQUIRED_REAL if k not in weights]
    if missing:
        raise ExampleError("real weights need all of " + ", ".join(
            f"{k} ({WEIGHT_KEYS[k][0]})" for k in REQUIRED_REAL) + f"; missing: {', '.join(missing)}")
    for key, path in weights.items():
        if not path.is_file():
            raise ExampleError(f"{key} ({WEIGHT_KEYS[key][0]}): no such file {path}")
    return weights


def install_real_weights(weights: dict[str, Path], models_dir: Path) -> dict[str, str]:
    """Symlink each file into its ComfyUI models sub-folder; returns {key: file name}."""
    names = {}
    for key, path in weights.items():
        folder = models_dir / WEIGHT_KEYS[key][1]
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / path.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path)
        names[key] = path.name
        log(f"weights: {key} -> models/{WEIGHT_KEYS[key][1]}/{path.name}")
    return names


def make_tiny_models(python: str, comfyui_dir: Path, models_dir: Path) -> dict[str, str]:
    script = REPO_ROOT / "demo" / "make_tiny_models.py"
    if not script.exists():
        raise ExampleError(f"{script} is missing: cannot build the embedded default models")
    cmd = [python, str(script), "--comfyui-dir", str(comfyui_dir), "--out", str(models_dir)]
    log("weights: none given -> embedded default: " + " ".join(shlex.quote(c) for c in cmd))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ExampleError(f"demo/make_tiny_models.py failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    for line in proc.stdout.strip().splitlines():
        log("  " + line)
    names = {}
    for key, name in TINY_FILES.items():
        path = models_dir / WEIGHT_KEYS[key][1] / name
        if not path.is_file():
            raise ExampleError(f"demo/make_tiny_models.py did not write {path}")
        names[key] = name
    log(f"weights: tiny models written in {time.monotonic() - t0:.1f} s")
    return names


LAB_MODE_FILES = {  # memory mode -> the lab encoder / state file and Stage II LoRA trained for it (training/lab.py phase 6)
    "pack_forcing": {"encoder": "framememory_lab_wan21_packforcing_encoder.safetensors",
                     "lora": "framememory_lab_wan21_packforcing_lora.safetensors"},
    "video_ssm": {"encoder": "framememory_lab_wan21_videossm.safetensors",
                  "lora": "framememory_lab_wan21_videossm_lora.safetensors"},
}
MemoryMode = Literal["frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off"]  # models/memory_modes.py
MEMORY_MODES = get_args(MemoryMode)


# ---- the lab model ------------------------------------------------------------------------------
def lab_files(mode: str = "frame_preservation") -> dict[str, Path] | None:
    """{key: file} of the trained lab model for memory ``mode`` (its own encoder and LoRA for pack_forcing /
    video_ssm) when every file is in LAB_DIR, else None."""
    names = {key: name for key, (name, _, _) in LAB_FILES.items()} | LAB_MODE_FILES.get(mode, {})
    files = {key: LAB_DIR / name for key, name in names.items()}
    return files if all(p.is_file() for p in files.values()) else None


def with_memory_mode(api: dict, mode: str) -> dict:
    """The workflow with every Storyboard's memory_mode set to ``mode`` (unchanged for frame_preservation)."""
    if mode == "frame_preservation":
        return api
    api = json.loads(json.dumps(api))
    for node in api.values():
        if node.get("class_type") == "FrameMemoryStoryboard":
            node["inputs"]["memory_mode"] = mode
    return api


def install_lab_model(files: dict[str, Path], models_dir: Path) -> dict[tuple[str, str], str]:
    """Symlink the lab files into their models sub-folders; returns the workflow substitutions
    {(class_type, input): file name}."""
    subs = {}
    for key, path in files.items():
        _, folder, target = LAB_FILES[key]
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        link = models_dir / folder / path.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path.resolve())
        subs[target] = path.name
        log(f"weights: lab {key} -> models/{folder}/{path.name}")
    return subs


def lab_recipe(dit: Path) -> dict:
    """The ``framememory_recipe`` JSON of the lab DiT's safetensors metadata ({} when absent or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(dit), framework="pt") as f:
            meta = f.metadata() or {}
        recipe = json.loads(meta.get("framememory_recipe") or "{}")
        return recipe if isinstance(recipe, dict) else {}
    except Exception as e:  # noqa: BLE001 - the description only loses detail
        log(f"weights: cannot read the lab recipe from {dit.name}: {e}")
        return {}


def lab_warning(recipe: dict, width: int, height: int, stand_in_text: bool) -> str:
    """The honest description of the lab model, with the facts its recipe gives (clips, size, steps);
    ``stand_in_text``: the workflow encodes prompts with the demo stand-in text encoder."""
    clips = recipe.get("train_clips")
    clips = len(clips) if isinstance(clips, (list, tuple, dict)) else clips  # training/lab.py: {name: bytes}
    settings = recipe.get("recipe") if isinstance(recipe.get("recipe"), dict) else recipe
    size = f"{settings.get('width', width)}x{settings.get('height', height)}"
    trained = f"on {clips} real clips" if clips else "on real clips"
    extra = [f"{k.replace('_', ' ')} {settings[k]}" for k in ("base_steps", "stage1_steps", "stage2_steps", "rate")
             if k in settings]
    return (f"EMBEDDED DEFAULT: the lab model, a small Wan 2.1-architecture DiT, a reduced-width Wan VAE, a "
            f"FrameMemory encoder and a Stage II LoRA trained here {trained} at {size}"
            + (f" ({', '.join(extra)})" if extra else "")
            + (", prompts through a stand-in text encoder (no umt5)" if stand_in_text else "") + ". It is NOT Wan 2.1: "
            "its video is blurry by design. It exists to measure what memory buys when a scene comes back after a cutaway "
            "(or continues), against the real frames and trivial predictors. "
            + REAL_WEIGHTS_HINT)


# ---- the choice ---------------------------------------------------------------------------------
@dataclass
class Models:
    """Which weights the example runs: kind "user" (real weights), "lab" (the trained embedded default) or "tiny"
    (random embedded default), its workflow, and the files to install."""

    kind: str
    workflow: Path
    files: dict = field(default_factory=dict)  # {key: Path}: user weights or lab files; {} for tiny
    warning: str | None = None
    recipe: dict = field(default_factory=dict)


def choose_models(config: str | None, workflow: str | None, mode: str = "frame_preservation") -> Models:
    """User weights when given, else the lab model (the set trained for memory ``mode``) when its files are all in
    LAB_DIR, else the tiny random models. Raises ExampleError for incomplete user weights or a missing workflow file."""
    weights = resolve_weights(config)
    lab = None if weights else lab_files(mode)
    kind = "user" if weights else "lab" if lab else "tiny"
    default = {"user": WORKFLOW_REAL, "lab": WORKFLOW_LAB, "tiny": WORKFLOW_TINY}[kind]
    path = Path(workflow).resolve() if workflow else default
    if not path.is_file():
        raise ExampleError(f"workflow {path} is missing")
    models = Models(kind, path, weights or lab or {})
    if kind == "tiny":
        models.warning = EMBEDDED_WARNING
    elif kind == "lab":
        models.recipe = lab_recipe(lab["wan_model"])
        api = json.loads(path.read_text())
        sb = next((n["inputs"] for n in api.values() if n.get("class_type") == "FrameMemoryStoryboard"), {})
        stand_in = any(n.get("class_type") == "FrameMemoryDemoTextEncoder" for n in api.values())
        models.warning = lab_warning(models.recipe, sb.get("width", 256), sb.get("height", 128), stand_in)
    return models


def install_models(models: Models, server) -> dict[tuple[str, str], str]:
    """Put the chosen weights into the models folders of ``server`` (a ComfyServer, not started); returns the workflow
    substitutions {(class_type, input): file name}."""
    if models.kind == "lab":
        return install_lab_model(models.files, server.models_dir)
    names = (make_tiny_models(server.python, server.comfyui_dir, server.models_dir) if models.kind == "tiny"
             else install_real_weights(models.files, server.models_dir))
    return {WEIGHT_KEYS[k][2]: v for k, v in names.items()}


def weights_entry(models: Models, subs: dict) -> dict:
    """report.json "weights": the user's files, or the embedded files with their kind."""
    if models.kind == "user":
        return {k: str(v) for k, v in models.files.items()}
    if models.kind == "lab":
        return {k: f"(embedded lab) {v}" for k, v in models.files.items()}
    return {f"{cls}.{inp}": f"(embedded tiny) {v}" for (cls, inp), v in subs.items()}
