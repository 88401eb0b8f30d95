"""The FSDP path of training (training/accelerate/fsdp_cpu.yaml: FSDP v1 with the settings of fsdp.yaml, 2 CPU processes
over gloo) through `accelerate launch`, on tiny shards and the pack's tiny Wan DiT: it really shards (Accelerate reports
FSDP, checkpoints are sharded), resumes from its sharded checkpoint at the saved step, and exports an encoder and a
LoRA with the same keys and shapes as a single-process run. About a minute on 2 cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import accelerate  # noqa: F401  required (requirements-train.txt): a missing one fails, never skips
import peft  # noqa: F401  required (requirements-train.txt): a missing one fails, never skips
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--tiny-dit", "--stage", "1", "--lora-rank", "4", "--hr-channels", "16,32,64,64", "--attn-heads", "4",
        "--rate", "2x2x2", "--window", "4", "--batch-size", "1", "--log-every", "1", "--save-every", "2"]


def _shards(root: Path, n: int = 2, frames: int = 8, rate: str = "2x2x2") -> None:
    """``n`` random shards (format framememory-shards/2, latent [16, frames, 8, 8], LR latents at ``rate``)."""
    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid
    from framememory.training.data import FORMAT, save_shard_atomic

    cfg = EncoderConfig(rate=rate)
    g = torch.Generator().manual_seed(0)
    names = []
    for i in range(n):
        latent = torch.randn(16, frames, 8, 8, generator=g)
        tm, hm, wm = memory_grid(tuple(latent.shape[1:]), cfg)
        _, ph, pw = cfg.patch_size
        lr = torch.randn(cfg.latent_channels, tm, hm * ph, wm * pw, generator=g)
        p = root / "clip" / f"chunk_{i:05d}.safetensors"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_shard_atomic(p, latent, torch.randn(5, 4096, generator=g) * 0.1, {"chunk": i}, lr_latents={rate: lr})
        names.append(f"clip/chunk_{i:05d}.safetensors")
    manifest = {"format": FORMAT, "settings": {"lr_rates": [rate]}, "videos": [{"shards": names}]}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _run(tmp_path: Path, comfyui_dir, out: Path, extra: list[str], fsdp: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["COMFYUI_DIR"] = str(comfyui_dir)
    launch = ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "training/accelerate/fsdp_cpu.yaml")] if fsdp else [sys.executable])
    cmd = [*launch, str(ROOT / "training/train.py"), "--data", str(tmp_path / "shards"), "--out", str(out),
           *TINY, *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


def _exports(out: Path):
    from safetensors.torch import load_file

    from framememory.memory.io import load_encoder_file

    sd, cfg = load_encoder_file(str(out / "encoder_stage1.safetensors"))
    return sd, cfg, load_file(str(out / "lora_stage1.safetensors"))


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.slow  # 35 s: two FSDP processes
def test_fsdp_two_cpu_processes_resume_and_export(comfy, tmp_path, comfyui_dir):
    _shards(tmp_path / "shards")
    out = tmp_path / "fsdp"

    r = _run(tmp_path, comfyui_dir, out, ["--steps", "2"], fsdp=True)
    assert "2 process(es) (FSDP, cpu)" in r.stdout, r.stdout[-2000:]  # not silently DDP (MULTI_CPU)
    ckpt = out / "checkpoints" / "step_0000002"
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "optimizer_0").is_dir()  # SHARDED_STATE_DICT
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    enc2, cfg2, lora2 = _exports(out)

    r = _run(tmp_path, comfyui_dir, out, ["--steps", "3", "--resume", "latest"], fsdp=True)
    assert "resumed from" in r.stdout and "at step 2" in r.stdout, r.stdout[-2000:]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the resumed run went on from the saved step
    enc3, cfg3, lora3 = _exports(out)
    # one more AdamW step (lr 1e-4) from the checkpoint's weights: small moves, no fresh initialisation
    assert all((enc3[k] - enc2[k]).abs().max() < 1e-2 for k in enc2)
    assert any(not torch.equal(enc3[k], enc2[k]) for k in enc2)

    single = tmp_path / "single"
    _run(tmp_path, comfyui_dir, single, ["--steps", "2"], fsdp=False)
    enc1, cfg1, lora1 = _exports(single)
    assert cfg3 == cfg1 and _shapes(enc3) == _shapes(enc1)
    assert _shapes(lora3) == _shapes(lora1) and len(lora1) > 0  # ComfyUI LoRA keys, e.g. diffusion_model.blocks.0...
    assert all(k.startswith("diffusion_model.blocks.") for k in lora3)
    assert all(torch.isfinite(v).all() for v in [*enc3.values(), *lora3.values()])
