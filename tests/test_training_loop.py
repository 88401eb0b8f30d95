"""The Accelerate training loop (training/loop.py, training/train.py) and the export (training/export.py) on a tiny
ComfyUI WanModel (CPU): exact resume from a checkpoint, logging, only LoRA + encoder train, the exported LoRA is the
same model under ComfyUI's stock LoRA loader, the exported encoder loads in the nodes, `accelerate launch` with one
process and DDP with two CPU processes."""
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

RANK = 8
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def parts(comfy):
    from framememory.demo.tiny_models import tiny_encoder_config, tiny_wan21_dit
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training import loop

    def fresh(rate="2x2x2"):
        enc = HistoryEncoder(tiny_encoder_config(rate))
        enc.reset_parameters(torch.Generator().manual_seed(1))
        with torch.no_grad():  # a non-zero output projection, so the HR branch matters from step 1
            enc.hr.proj.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
        return tiny_wan21_dit(seed=0), enc

    return fresh, loop


def lr_latent_for(latent: torch.Tensor, cfg, generator: torch.Generator) -> torch.Tensor:
    """A random LR latent of the right shape for one sample ``latent`` [C, T, h, w] under encoder config ``cfg``:
    [C, Tm, Hm * ph, Wm * pw] with (Tm, Hm, Wm) = memory_grid, as the shards' lr_latent_<rate> of that chunk."""
    from framememory.memory.grid import memory_grid

    tm, hm, wm = memory_grid(tuple(latent.shape[1:]), cfg)
    _, ph, pw = cfg.patch_size
    return torch.randn(cfg.latent_channels, tm, hm * ph, wm * pw, generator=generator)


def _dataset(n=5, frames=8, seed=0, rate="2x2x2"):
    """Samples as ModelSpaceDataset gives them: latent, text and the LR latent at the encoder's ``rate``."""
    from framememory.memory.config import EncoderConfig

    cfg = EncoderConfig(rate=rate)
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        latent = torch.randn(16, frames, 8, 8, generator=g)
        items.append({"latent": latent, "text": torch.randn(5, 4096, generator=g) * 0.1,
                      "lr_latent": lr_latent_for(latent, cfg, g)})
    return items


def _trainable(module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}


def test_collate_and_window_crop_carry_the_lr_latent(parts):
    """collate stacks lr_latent when every sample has one; crop_windows starts on a memory time step (rt latent frames)
    and cuts the matching LR latent frames."""
    _, loop = parts
    data = _dataset(n=3, frames=8)  # rate 2x2x2: lr_latent [16, 4, 4, 4]
    batch = loop.collate(data)
    assert batch["lr_latent"].shape == (3, 16, 4, 4, 4) and batch["latent"].shape == (3, 16, 8, 8, 8)
    assert "lr_latent" not in loop.collate([data[0], {k: v for k, v in data[1].items() if k != "lr_latent"}])
    starts = set()
    for seed in range(12):
        latent, lr = loop.crop_windows(batch["latent"], 4, torch.Generator().manual_seed(seed), batch["lr_latent"], 2)
        assert latent.shape == (3, 16, 4, 8, 8) and lr.shape == (3, 16, 2, 4, 4)
        for b in range(3):
            s = next(s for s in range(5) if torch.equal(latent[b], batch["latent"][b, :, s: s + 4]))
            assert s % 2 == 0  # aligned to the encoder's memory time steps
            assert torch.equal(lr[b], batch["lr_latent"][b, :, s // 2: s // 2 + 2])
            starts.add(s)
    assert starts == {0, 2, 4}
    same, none = loop.crop_windows(batch["latent"], 0, torch.Generator(), None, 2)
    assert same is batch["latent"] and none is None


def test_stage_module_feeds_the_batch_lr_latent_to_both_stages(parts):
    """StageModule.forward takes the batch's lr_latent (Stage I masks it, Stage II uses the history's part); an encoder
    with an LR branch and no LR latent is refused with the command that makes shards with one."""
    fresh, loop = parts
    dm, enc = fresh()
    batch = loop.collate(_dataset(n=2, frames=6))
    for stage in (1, 2):
        module = loop.StageModule(dm, enc, loop.TrainArgs(stage=stage, segment_frames=2, omega_frames=2))
        with torch.no_grad():
            a = module(batch["latent"], batch["context"], 7, lr_latent=batch["lr_latent"])
            b = module(batch["latent"], batch["context"], 7, lr_latent=batch["lr_latent"])
            c = module(batch["latent"], batch["context"], 7, lr_latent=batch["lr_latent"] + 1.0)
        assert torch.equal(a, b) and not torch.equal(a, c), stage
        with pytest.raises(ValueError, match="prepare_data.py"):
            module(batch["latent"], batch["context"], 7)
    # Stage II's LR input is the history's memory steps only: the LR frames of the next segment do not matter
    module = loop.StageModule(dm, enc, loop.TrainArgs(stage=2, segment_frames=2))
    tail = batch["lr_latent"].clone()
    tail[:, :, -1] += 1.0  # LR frame 2 covers latent frames 4, 5 = the next segment
    with torch.no_grad():
        assert torch.equal(module(batch["latent"], batch["context"], 7, lr_latent=batch["lr_latent"]),
                           module(batch["latent"], batch["context"], 7, lr_latent=tail))


@pytest.mark.parametrize("stage", [1, 2])
def test_resume_from_checkpoint_takes_the_same_steps(parts, tmp_path, stage):
    fresh, loop = parts
    data = _dataset()
    common = dict(stage=stage, steps=6, lora_rank=RANK, grad_accum=2, batch_size=1, window=6, segment_frames=2,
                  omega_frames=2, seed=3, log_every=1, learning_rate=1e-3)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    dm, enc = fresh()
    full = loop.train(loop.TrainArgs(**common, output_dir=str(full_dir), save_every=2), dm, enc, data)
    ckpt = full_dir / loop.CHECKPOINTS / "step_0000004"
    assert sorted(p.name for p in (full_dir / loop.CHECKPOINTS).iterdir()) == \
        ["step_0000002", "step_0000004", "step_0000006"]
    # the checkpoint holds the trainable weights only (LoRA + encoder), not the frozen DiT
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "model.safetensors"))
    assert set(saved) == set(_trainable(full["module"])) and all("lora_" in k or k.startswith("encoder.") for k in saved)

    dm2, enc2 = fresh()
    resumed = loop.train(loop.TrainArgs(**common, output_dir=str(resumed_dir), resume=str(ckpt)), dm2, enc2, data)
    assert resumed["steps"] == 6 and len(resumed["losses"]) == 2
    assert resumed["losses"] == full["losses"][4:]
    a, b = _trainable(full["module"]), _trainable(resumed["module"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and it did train: the last steps changed the weights saved at step 4
    assert any(not torch.equal(saved[k], a[k]) for k in a)


def test_only_lora_and_encoder_change_and_log_has_loss_lr_throughput(parts, tmp_path):
    fresh, loop = parts
    dm, enc = fresh()
    frozen = {k: v.clone() for k, v in dm.state_dict().items()}
    enc0 = {k: v.clone() for k, v in enc.state_dict().items()}
    res = loop.train(loop.TrainArgs(stage=1, steps=4, lora_rank=RANK, log_every=2, warmup_steps=4, learning_rate=1e-3,
                                    output_dir=str(tmp_path)), dm, enc, _dataset(n=3))
    for k, v in dm.state_dict().items():
        if "lora_" in k:
            continue
        base = k.replace(".base_layer", "")
        assert torch.equal(v, frozen[base]), k
    assert any(not torch.equal(v, enc0[k]) for k, v in enc.state_dict().items())
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in dm.state_dict().items() if "lora_B" in k)
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4]
    assert recs[0]["lr"] == pytest.approx(1e-3 * 2 / 4) and recs[1]["lr"] == pytest.approx(1e-3)  # warm-up
    assert all(r["samples_per_s"] > 0 and r["loss"] == pytest.approx(res["losses"][r["step"] - 1]) for r in recs)


def test_resume_with_another_model_is_refused(parts, tmp_path):
    fresh, loop = parts
    dm, enc = fresh()
    loop.train(loop.TrainArgs(stage=1, steps=2, lora_rank=RANK, output_dir=str(tmp_path), save_every=2), dm, enc,
               _dataset(n=2))
    dm2, enc2 = fresh()
    with pytest.raises(ValueError, match="does not fit this model"):
        loop.train(loop.TrainArgs(stage=1, steps=4, lora_rank=RANK * 2, output_dir=str(tmp_path), resume="latest"),
                   dm2, enc2, _dataset(n=2))


def test_exported_lora_is_the_same_model_under_comfyui_stock_loader(parts, tmp_path):
    fresh, loop = parts
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.models.encoding import MemoryEncoder
    from framememory.training import stages

    dm, enc = fresh()
    res = loop.train(loop.TrainArgs(stage=2, steps=3, lora_rank=RANK, lora_alpha=4.0, learning_rate=1e-2, segment_frames=2,
                                    output_dir=str(tmp_path)), dm, enc, _dataset(n=2, frames=6))
    lora_file, enc_file = res["exported"]["lora"], res["exported"]["encoder"]
    sd = comfy.utils.load_torch_file(lora_file)
    assert all(k.startswith("diffusion_model.blocks.") for k in sd)
    assert sd["diffusion_model.blocks.0.self_attn.q.alpha"].item() == 4.0

    # ComfyUI's stock path on the untouched base DiT file: UNETLoader + LoraLoaderModelOnly (load_lora_for_models)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_wan21_dit(seed=0).state_dict().items()}, str(tmp_path / "dit.safetensors"))
    base = comfy.sd.load_diffusion_model(str(tmp_path / "dit.safetensors"))
    lora_model, _ = comfy.sd.load_lora_for_models(base, None, sd, 1.0, 0)
    assert len(lora_model.patches) == 20  # every LoRA module of the 2 tiny blocks was recognised
    comfy.model_management.load_models_gpu([lora_model])  # applies the patches to the weights
    stock_dm = lora_model.model.diffusion_model

    g = torch.Generator().manual_seed(9)
    x, ctx = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 5, 4096, generator=g) * 0.1
    t = torch.tensor([0.5])
    with torch.no_grad():
        ours = stages.dit_forward(dm, x, t, ctx, None)
        stock = stages.dit_forward(stock_dm, x, t, ctx, None)
        plain = stages.dit_forward(tiny_wan21_dit(seed=0), x, t, ctx, None)
    assert (ours - plain).abs().max() > 1e-3  # the LoRA learned something
    assert torch.allclose(ours, stock, atol=1e-5, rtol=1e-4)

    mem = MemoryEncoder.from_file(enc_file)  # what the Load Memory Encoder node does
    assert mem.cfg == enc.cfg and all(torch.equal(v, enc.state_dict()[k]) for k, v in mem.state_dict.items())


def _shards(root: Path, n=4, frames=8, rate="2x2x2"):
    """Shards of format framememory-shards/2 with LR latents at ``rate`` (as training/prepare_data.py writes)."""
    from framememory.training.data import FORMAT, save_shard_atomic

    names = []
    for i, item in enumerate(_dataset(n=n, frames=frames, rate=rate)):
        p = root / "clip" / f"chunk_{i:05d}.safetensors"
        p.parent.mkdir(parents=True, exist_ok=True)
        save_shard_atomic(p, item["latent"], item["text"], {"chunk": i}, lr_latents={rate: item["lr_latent"]})
        names.append(f"clip/chunk_{i:05d}.safetensors")
    manifest = {"format": FORMAT, "settings": {"lr_rates": [rate]}, "videos": [{"shards": names}]}
    (root / "manifest.json").write_text(json.dumps(manifest))


def _launch(tmp_path, config: str, out: str, extra: list[str]):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "training/accelerate" / config),
           str(ROOT / "training/train.py"), "--data", str(tmp_path / "shards"), "--tiny-dit", "--out", out,
           "--lora-rank", str(RANK), "--hr-channels", "16,32,64,64", "--attn-heads", "4", "--rate", "2x2x2",
           "--log-every", "1", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))


@pytest.mark.slow  # 51 s: accelerate launch in subprocesses; the in-process stage tests and DDP stay in the default suite
def test_accelerate_launch_stage1_then_stage2_from_the_cli(parts, tmp_path, comfyui_dir):
    _shards(tmp_path / "shards")
    os.environ.setdefault("COMFYUI_DIR", str(comfyui_dir))
    r1 = _launch(tmp_path, "cpu.yaml", str(tmp_path / "s1"), ["--stage", "1", "--steps", "2"])
    assert r1.returncode == 0, r1.stderr[-3000:]
    assert "1 process(es)" in r1.stdout and "stage 1 step 2/2" in r1.stdout
    enc = tmp_path / "s1" / "encoder_stage1.safetensors"
    r2 = _launch(tmp_path, "cpu.yaml", str(tmp_path / "s2"),
                 ["--stage", "2", "--steps", "2", "--encoder", str(enc), "--window", "6", "--segment-frames", "2"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert (tmp_path / "s2" / "lora_stage2.safetensors").is_file() and (tmp_path / "s2" / "encoder_stage2.safetensors").is_file()
    bad = _launch(tmp_path, "cpu.yaml", str(tmp_path / "s3"), ["--stage", "1", "--no-memory"])
    assert bad.returncode != 0 and "--no-memory is a Stage II baseline" in bad.stderr
    # issue 12: Stage II of PackForcing (from the Stage I encoder) and of VideoSSM (new state modules) from the CLI
    from framememory.memory.io import load_encoder_file

    common = ["--stage", "2", "--steps", "2", "--window", "6", "--segment-frames", "2", "--sink-frames", "1",
              "--recent-frames", "1"]
    pack = _launch(tmp_path, "cpu.yaml", str(tmp_path / "pack"),
                   [*common, "--encoder", str(enc), "--memory-type", "pack_forcing", "--top-k", "1"])
    assert pack.returncode == 0, pack.stderr[-3000:]
    ssm = _launch(tmp_path, "cpu.yaml", str(tmp_path / "ssm"),
                  [*common, "--memory-type", "video_ssm", "--ssm-heads", "2", "--ssm-key-dim", "8"])
    assert ssm.returncode == 0, ssm.stderr[-3000:]
    _, cfg = load_encoder_file(str(tmp_path / "pack" / "encoder_stage2.safetensors"))
    assert (cfg.memory_type, cfg.top_k, cfg.sink_latent_frames) == ("pack_forcing", 1, 1)
    _, cfg = load_encoder_file(str(tmp_path / "ssm" / "encoder_stage2.safetensors"))
    assert (cfg.memory_type, cfg.ssm_heads, cfg.ssm_key_dim) == ("video_ssm", 2, 8) and cfg.dit_blocks >= 1
    no_stage1 = _launch(tmp_path, "cpu.yaml", str(tmp_path / "s4"), ["--stage", "1", "--memory-type", "video_ssm"])
    assert no_stage1.returncode != 0 and "has no Stage I" in no_stage1.stderr


def test_ddp_with_two_cpu_processes(parts, tmp_path, comfyui_dir):
    _shards(tmp_path / "shards")
    os.environ.setdefault("COMFYUI_DIR", str(comfyui_dir))
    r = _launch(tmp_path, "cpu_ddp.yaml", str(tmp_path / "ddp"), ["--stage", "1", "--steps", "2", "--save-every", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es) (MULTI_CPU" in r.stdout
    ckpt = tmp_path / "ddp" / "checkpoints" / "step_0000002"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert (tmp_path / "ddp" / "lora_stage1.safetensors").is_file()


def test_exported_encoder_and_lora_run_the_storyboard(parts, tiny_wan, tmp_path):
    """The files a training run writes drive the storyboard loop as the nodes load them: encoder file through
    MemoryEncoder.from_file (Load Memory Encoder), LoRA through load_lora_for_models (LoraLoaderModelOnly)."""
    import copy

    import comfy.sd
    import comfy.utils

    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    _, loop = parts
    model, vae, _, clip, video = tiny_wan
    dm = copy.deepcopy(model.model.diffusion_model)
    enc = HistoryEncoder(EncoderConfig(family="wan21", dim=128, rate="4x4x2", hr_channels=(16, 32, 64, 64), attn_heads=4))
    res = loop.train(loop.TrainArgs(stage=2, steps=2, lora_rank=RANK, learning_rate=1e-2, segment_frames=2,
                                    output_dir=str(tmp_path)), dm, enc, _dataset(n=2, frames=6, rate="4x4x2"))
    encoder = MemoryEncoder.from_file(res["exported"]["encoder"])
    lora_model, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(res["exported"]["lora"]), 1.0, 0)
    start, _ = history_from_frames(lora_model, vae, encoder, video, 4, 16.0, 128, 64)  # small: VAE time
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    settings = SamplerSettings(2, 3.0, "euler", "simple", 1)
    shots = parse_storyboard("0.8 | a cyclist")
    frames, final, report = run_storyboard(lora_model, vae, clip, encoder, neg, shots, settings, 128, 64, 16.0, 4, start)
    assert frames.shape == (16, 64, 128, 3) and torch.isfinite(frames).all()  # continues the start clip's stream
    assert report["segments"][0]["memory_tokens"] == start.history.num_tokens > 0
    base, _, _ = run_storyboard(model, vae, clip, encoder, neg, shots, settings, 128, 64, 16.0, 4, start)
    assert (frames - base).abs().max() > 1e-4  # the trained LoRA is applied by the stock loader path


def test_encoder_set_trains_together_and_exports_parts_the_nodes_combine(parts, tmp_path):
    """The add-on "several encoders concatenated" is reached by training: an EncoderSet (2x2x2 + 2x2x4) trains both
    parts in one Stage II run (each part's zero-initialised output projection moves), with one LR latent per part;
    the export writes one encoder file per part (each with its trained weights and its own rate, what Load Memory
    Encoder + Combine Memory Encoders take); the memory is both parts' tokens concatenated, each at its own
    positions, and a set without its LR latents is refused."""
    from framememory.demo.tiny_models import tiny_encoder_config
    from framememory.memory.encoder import EncoderSet, HistoryEncoder
    from framememory.memory.io import load_encoder_file
    from framememory.training import stages

    fresh, loop = parts
    dm, _ = fresh()
    cfgs = [tiny_encoder_config(r) for r in ("2x2x2", "2x2x4")]
    enc = EncoderSet([HistoryEncoder(c) for c in cfgs])
    g = torch.Generator().manual_seed(3)
    data = []
    for _ in range(4):
        latent = torch.randn(16, 12, 8, 8, generator=g)
        data.append({"latent": latent, "text": torch.randn(5, 4096, generator=g) * 0.1,
                     "lr_latent": [lr_latent_for(latent[:, :8], c, g) for c in cfgs]})
    batch = loop.collate(data[:2])
    assert [x.shape[2] for x in batch["lr_latent"]] == [4, 2]
    module = loop.StageModule(dm, enc, loop.TrainArgs(stage=2, segment_frames=4))
    assert module.time_unit() == 4
    before = [p.hr.proj.weight.detach().clone() for p in enc.parts]
    res = loop.train(loop.TrainArgs(stage=2, steps=2, lora_rank=RANK, learning_rate=1e-2, segment_frames=4, batch_size=2,
                                    output_dir=str(tmp_path)), dm, enc, data)
    assert all(not torch.equal(b, p.hr.proj.weight) for b, p in zip(before, enc.parts))
    files = [res["exported"][f"encoder_part{i}"] for i in range(2)]
    for i, f in enumerate(files):
        sd, cfg = load_encoder_file(f)
        assert cfg.rate == cfgs[i].rate
        torch.testing.assert_close(sd["hr.proj.weight"], enc.parts[i].hr.proj.weight.detach())
    # the training memory: both parts' tokens, concatenated, each at its own positions
    latent = torch.stack([d["latent"][:, :8] for d in data[:1]])
    with torch.no_grad():
        mem = stages.encode_history(dm, enc, latent, t_start=-8.0, lr_latent=[x[:1] for x in
                                    loop.collate(data[:1])["lr_latent"]])
    assert mem.tokens.shape[1] == 4 * 2 * 2 + 2 * 2 * 2  # 2x2x2: Tm 4 x 2x2; 2x2x4: Tm 2 x 2x2
    t2 = mem.positions2[0, :, 0].double() / 2
    assert t2[:16].tolist() == [t for t in (-7.5, -5.5, -3.5, -1.5) for _ in range(4)]
    assert t2[16:].tolist() == [t for t in (-6.5, -2.5) for _ in range(4)]
    with pytest.raises(ValueError, match="2 encoders need 2 LR latents"):
        stages.encode_history(dm, enc, latent, t_start=0.0, lr_latent=None)
