"""The lab model recipe (training/lab.py) shortened to its smoke preset, and its files through the stock loaders.

Runs ``training/lab.py --preset smoke`` as a subprocess (the one command of the full recipe, same code path: real
clip ``bigbuckbunny.mp4`` from scripts/setup.sh, VAE training, plain and leave-and-return sequences, DiT pretraining,
Stage I, Stage II at two rates, the no-memory and sliding-window floors, PackForcing, VideoSSM; one to three minutes
on 2 cores), then loads what it wrote the way ComfyUI's stock nodes do: Load Diffusion Model
(``comfy.sd.load_diffusion_model``), Load VAE (``comfy.sd.VAE``), LoraLoaderModelOnly
(``comfy.sd.load_lora_for_models``) and our Load Memory Encoder (``MemoryEncoder.from_file``).
"""
from __future__ import annotations

import json

import pytest
import torch

from framememory.training.lab_recipe import ALL_FILES, FILES, FLOOR_FILES, META_KEY, MODE_FILES, PRESETS


def _metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {})[META_KEY])


def test_every_file_records_recipe_seed_clips_and_commit(smoke_lab):
    summary = json.loads((smoke_lab / "summary.json").read_text())
    for part, name in ALL_FILES.items():
        meta = _metadata(smoke_lab / name)
        assert meta["part"] == part and meta["preset"] == "smoke" and meta["seed"] == PRESETS["smoke"].seed
        assert list(meta["train_clips"]) == ["bigbuckbunny.mp4"] and meta["train_clips"]["bigbuckbunny.mp4"] > 0
        assert "bikes.mp4" in meta["heldout_clips"] and not set(meta["train_clips"]) & set(meta["heldout_clips"])
        assert len(meta["commit"].split("+")[0]) == 40 or meta["commit"] == "unknown"
        assert meta["recipe"]["rate"] == PRESETS["smoke"].rate
    assert summary["shards"]["count"] >= 1 and summary["vae"]["heldout_fp16_file"]["per_clip"]["bikes.mp4"]["frames"] == 5
    assert summary["shards"]["kinds"] == {"plain": 1, "return": 1}  # a leave-and-return sequence was built
    assert set(summary["phases"]) >= {"vae", "sequences", "dit", "stage1", "stage2", "stage1_b", "stage2_b", "nomemory",
                                      "sliding", "pack_forcing", "video_ssm"}
    assert sum(f["bytes"] for f in summary["files"].values()) == summary["total_bytes"] < 40e6


def test_stock_loaders_take_the_files(comfy, smoke_lab):
    import comfy.sd
    import comfy.utils

    from framememory.models.encoding import MemoryEncoder
    from framememory.training.lab_recipe import LabRecipe

    r: LabRecipe = PRESETS["smoke"]
    model = comfy.sd.load_diffusion_model(str(smoke_lab / FILES["dit"]))       # UNETLoader
    dm = model.model.diffusion_model
    assert type(dm).__name__ == "WanModel" and dm.dim == r.dit_dim and len(dm.blocks) == r.dit_layers
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(smoke_lab / FILES["vae"])))  # VAELoader
    frames = torch.rand(5, r.height, r.width, 3)
    latent = vae.encode(frames)
    assert tuple(latent.shape) == (1, 16, 2, r.height // 8, r.width // 8)
    assert tuple(vae.decode(latent).reshape(-1, r.height, r.width, 3).shape) == (5, r.height, r.width, 3)
    lora = comfy.utils.load_torch_file(str(smoke_lab / FILES["lora"]), safe_load=True)  # LoraLoaderModelOnly
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    pairs = {k.rsplit(".lora_", 1)[0] for k in lora if ".lora_" in k}
    assert pairs and len(patched.patches) == len(pairs)  # every LoRA pair found its weight
    enc = MemoryEncoder.from_file(str(smoke_lab / FILES["encoder"]))                      # Load Memory Encoder
    cfg = enc.check(patched)
    assert cfg.rate_str == r.rate and cfg.dim == r.dit_dim and cfg.overlap_latent_frames == r.overlap


def test_floor_and_probe_loras_load_and_differ(comfy, smoke_lab):
    """The no-memory, sliding-window, Stage I and 4x4x2 files (issue 23): every LoRA applies through the stock loader
    at fp16, the 4x4x2 encoder loads at its rate, and the floors are separate trainings (not copies of the memory
    LoRA); load_lab_model gives mode off / sliding_window their floor LoRA."""
    import comfy.sd
    import comfy.utils
    from safetensors.torch import load_file

    from framememory.models.encoding import MemoryEncoder
    from framememory.training.lab import load_lab_model

    r = PRESETS["smoke"]
    model = comfy.sd.load_diffusion_model(str(smoke_lab / FILES["dit"]))
    loras = {}
    for part in ("lora", "nomemory_lora", "sliding_lora", "stage1_lora", "lora_4x4x2"):
        sd = comfy.utils.load_torch_file(str(smoke_lab / ALL_FILES[part]), safe_load=True)
        assert all(v.dtype == torch.float16 for v in sd.values()), part
        patched, _ = comfy.sd.load_lora_for_models(model, None, sd, 1.0, 0)
        assert len(patched.patches) == len({k.rsplit(".lora_", 1)[0] for k in sd if ".lora_" in k}), part
        loras[part] = load_file(str(smoke_lab / ALL_FILES[part]))
    for part in ("nomemory_lora", "sliding_lora"):
        assert any(not torch.equal(v, loras["lora"][k]) for k, v in loras[part].items() if "lora_B" in k), part
    enc = MemoryEncoder.from_file(str(smoke_lab / FLOOR_FILES["encoder_4x4x2"]))
    assert enc.check(model).rate_str == r.rate_b
    off, _, _ = load_lab_model(smoke_lab, mode="off")
    some = next(k for k in loras["nomemory_lora"] if k.endswith("lora_B.weight"))
    key = some.replace(".lora_B.weight", ".weight")
    up = off.patches[key][0][1].weights[0]  # comfy.weight_adapter LoRAAdapter: (lora_B, lora_A, alpha, ...)
    assert torch.equal(up.float(), loras["nomemory_lora"][some].float())


def test_mode_files_load_as_their_memory_designs(comfy, smoke_lab):
    """Phase 6 of the recipe: the PackForcing encoder and the VideoSSM state file carry their design and settings in
    their config, load through Load Memory Encoder and run their mode (issue 12)."""
    from framememory.models.memory_modes import mode_config
    from framememory.training.lab import load_lab_model

    r = PRESETS["smoke"]
    model, _, pack = load_lab_model(smoke_lab, mode="pack_forcing")
    cfg = mode_config(pack, model, "pack_forcing")
    assert (cfg.memory_type, cfg.sink_latent_frames, cfg.overlap_latent_frames, cfg.top_k) == (
        "pack_forcing", r.pack_sink, r.pack_recent, r.pack_top_k)
    model, _, ssm = load_lab_model(smoke_lab, mode="video_ssm")
    cfg = mode_config(ssm, model, "video_ssm")
    assert (cfg.memory_type, cfg.ssm_heads, cfg.dit_blocks) == ("video_ssm", r.ssm_heads, r.dit_layers)
    assert ssm.state_network(model).state_numel() == r.dit_layers * r.ssm_heads * (r.dit_dim // r.ssm_heads) * r.ssm_key_dim
    with pytest.raises(ValueError, match="set memory_mode to video_ssm"):
        mode_config(ssm, model, "frame_preservation")


def test_committed_lab_model_loads_through_stock_loaders(comfy):
    """The shipped lab_model/ set: recipe metadata of the full preset, <= 40 MB, and it loads as the nodes load it.
    Sizes come from the files' own recipe metadata (the set before issue 23 has 8 files and a width-128 DiT; the
    set after it all of ALL_FILES)."""
    from framememory.training.lab import load_lab_model
    from framememory.training.lab_recipe import LAB_DIR

    present = {part: name for part, name in ALL_FILES.items() if (LAB_DIR / name).is_file()}
    assert set(present) >= set(FILES) | set(MODE_FILES)
    assert sum((LAB_DIR / f).stat().st_size for f in present.values()) <= 40e6
    for part, name in present.items():
        meta = _metadata(LAB_DIR / name)
        assert meta["preset"] == "lab" and meta["part"] == part and len(meta["train_clips"]) >= 10
        assert not set(meta["train_clips"]) & set(meta["heldout_clips"]) and "bikes.mp4" in meta["heldout_clips"]
    recipe = _metadata(LAB_DIR / FILES["dit"])["recipe"]
    model, vae, encoder = load_lab_model(LAB_DIR)
    dm = model.model.diffusion_model
    assert dm.dim == recipe["dit_dim"] and dm.num_heads == max(1, recipe["dit_dim"] // 128) and len(model.patches) > 0
    assert encoder.check(model).rate_str == recipe["rate"]
    h, w = recipe["height"], recipe["width"]
    latent = vae.encode(torch.rand(5, h, w, 3))
    assert tuple(latent.shape) == (1, 16, 2, h // 8, w // 8)
