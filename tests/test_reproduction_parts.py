"""Parts of the small-scale reproduction (training/reproduce.py) on real frames: the patch-PCA stand-in VAE and its
exact LR branch, the FramePack-style Large Patchifier baseline, and the held-out metrics (frame query, Stage II)."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

W, H = 128, 64  # 16 x 8 latent cells, 8 x 4 DiT tokens


@pytest.fixture(scope="module")
def frames(media_dir):
    """(train frames of bikes.mp4, held-out frames of carphone_pristine.mp4): uint8 [F, 64, 128, 3] at 4 fps."""
    from framememory.training.data import decode_frames, resample

    def load(name):
        return torch.from_numpy(np.stack(list(resample(decode_frames(media_dir / name, W, H), 4.0))))

    return load("bikes.mp4"), load("carphone_pristine.mp4")


@pytest.fixture(scope="module")
def vae(frames):
    from framememory.training.standin_vae import PatchPCAVAE

    return PatchPCAVAE.fit([frames[0]], seed=0)


def _psnr(a, b):
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2), data_range=1.0).item()


# ------------------------------------------------------------------------------------------------ stand-in VAE


def test_pca_vae_round_trip_on_held_out_frames(vae, frames, tmp_path):
    from framememory.training.standin_vae import PatchPCAVAE, reconstruction_psnr

    held = frames[1].float() / 255.0  # a different video from the one the PCA was fitted on
    z = vae.encode(held)
    assert z.shape == (1, 16, held.shape[0], H // 8, W // 8) and z.dtype == torch.float32
    train_z = vae.encode(frames[0])
    assert torch.allclose(train_z.std(dim=(0, 2, 3, 4)).pow(2).mean(), torch.tensor(1.0), atol=0.05)  # whitened
    rec = vae.decode(z)[0]
    assert rec.shape == held.shape and rec.min() >= 0 and rec.max() <= 1
    psnr = _psnr(rec, held)
    # trivial baseline with 3 numbers per 8x8 cell instead of 16: the cell's mean colour
    cells = held.reshape(-1, H // 8, 8, W // 8, 8, 3).mean(dim=(2, 4), keepdim=True)
    blocky = cells.expand(-1, -1, 8, -1, 8, -1).reshape(held.shape)
    assert psnr > 25.0 and psnr > _psnr(blocky, held) + 3.0, (psnr, _psnr(blocky, held))
    assert reconstruction_psnr(vae, [frames[1]])["psnr"] == pytest.approx(
        np.mean([_psnr(rec[i:i + 1], held[i:i + 1]) for i in range(held.shape[0])]), rel=1e-4)
    # deterministic fit, safetensors round trip with metadata
    again = PatchPCAVAE.fit([frames[0]], seed=0)
    assert torch.equal(again.components, vae.components)
    vae.save(tmp_path / "vae.safetensors")
    loaded = PatchPCAVAE.load(tmp_path / "vae.safetensors")
    assert torch.equal(loaded.encode(held), z) and loaded.info == vae.info
    with pytest.raises(ValueError):
        vae.encode(held[:, :60])  # not a multiple of 8


def test_lr_latent_lands_on_the_memory_grid_and_is_decode_downsample_encode(vae, frames):
    import torch.nn.functional as F

    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid

    clip = frames[0][:7].float() / 255.0  # 7 latent frames: 4x4x2 floors to 3 memory steps
    z = vae.encode(clip)
    for rate in ((4, 4, 2), (2, 2, 1), (2, 4, 2)):
        cfg = EncoderConfig(dim=32, rate=rate)
        tm, hm, wm = memory_grid(tuple(z.shape[2:]), cfg)
        lr = vae.lr_latent(z, rate)
        assert lr.shape == (1, 16, tm, 2 * hm, 2 * wm)
        patch = torch.nn.Conv3d(16, 8, (1, 2, 2), stride=(1, 2, 2))
        assert patch(lr).shape[2:] == (tm, hm, wm)
        # independent path: decode (clamped, like a real VAE) -> the region the grid covers -> average rt frames
        # (one stand-in frame = one latent frame) -> area resize by rh x rw -> encode
        rh, rw, rt = rate
        pix = vae.decode(z)[0][: tm * rt, : hm * rh * 16, : wm * rw * 16].reshape(tm, rt, hm * rh * 16, wm * rw * 16, 3)
        small = F.interpolate(pix.mean(1).movedim(-1, 1), size=(hm * 16, wm * 16), mode="area").movedim(1, -1)
        ref = vae.encode(small.clamp(0, 1))
        torch.testing.assert_close(vae.lr_latent(z, rate, clamp=True), ref, atol=1e-5, rtol=1e-5)
    # the default (no clamp) is linear: exact for Stage I's masked histories
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(vae.lr_latent(0.3 * z + 0.7 * noise, "4x4x2"),
                               0.3 * vae.lr_latent(z, "4x4x2") + 0.7 * vae.lr_latent(noise, "4x4x2"),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        vae.lr_latent(z[:, :, :1], "4x4x2")  # below one memory step


# ------------------------------------------------------------------------------------------------ baseline


def test_large_patchifier_framepack_init_and_token_grid(comfy, vae, frames):
    from framememory.demo.tiny_models import tiny_wan21_dit
    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid
    from framememory.training import stages
    from framememory.training.baselines import LargePatchifier

    dm = tiny_wan21_dit(seed=0)
    cfg = EncoderConfig(dim=dm.dim, rate="4x4x2", hr_channels=(16, 32, 64, 64), attn_heads=4)
    lp = LargePatchifier(cfg, patch_embedding=dm.patch_embedding)
    assert lp.cfg.use_hr and not lp.cfg.use_lr and lp.cfg.rate == (4, 4, 2)
    assert lp.proj.kernel_size == (2, 8, 8) == lp.proj.stride
    # constant over each window (one 1x2x2 patch repeated): the output is that patch's embedding (FramePack init)
    g = torch.Generator().manual_seed(0)
    cell = torch.randn(2, 16, 1, 2, 2, generator=g)
    x = cell.repeat(1, 1, 2, 4, 4)  # [2, 16, 2, 8, 8]: one window
    with torch.no_grad():
        torch.testing.assert_close(lp.map(x)[:, :, 0, 0, 0], dm.patch_embedding(cell)[:, :, 0, 0, 0], atol=1e-5,
                                   rtol=1e-4)
    # on real latents at init: the average-pooled patch embedding of the full-resolution latent, on the memory grid
    z = vae.encode(frames[0][:9].float() / 255.0)  # T = 9 floors to 4 memory steps
    grid = memory_grid(tuple(z.shape[2:]), lp.cfg)
    with torch.no_grad():
        y = lp.map(z)
        assert y.shape == (1, dm.dim, *grid)
        pooled = torch.nn.functional.avg_pool3d(dm.patch_embedding(z), (2, 4, 4))[:, :, : grid[0], : grid[1], : grid[2]]
        torch.testing.assert_close(y, pooled, atol=1e-4, rtol=1e-4)
        tokens, hidden = lp(z)
    assert tokens.shape == (1, math.prod(grid), dm.dim) and hidden is None
    torch.testing.assert_close(tokens[0, 1], y[0, :, 0, 0, 1])  # (t, h, w) order, as HistoryEncoder's tokens
    assert not hasattr(lp, "tokens")
    # a drop-in for HistoryEncoder in encode_history (no LR latent: no LR branch), trainable
    memory = stages.encode_history(dm, lp, z, t_start=0.0)
    assert memory.tokens.shape == tokens.shape and memory.positions2.shape == (1, tokens.shape[1], 3)
    assert memory.hidden is None and memory.cross is None
    memory.tokens.square().mean().backward()
    assert lp.proj.weight.grad is not None and lp.proj.weight.grad.abs().max() > 0


def test_only_lr_encoder_takes_the_standin_lr_latent(comfy, vae, frames):
    from framememory.demo.tiny_models import tiny_encoder_config, tiny_wan21_dit
    from framememory.memory.encoder import HistoryEncoder
    from framememory.training import stages

    import dataclasses

    dm = tiny_wan21_dit(seed=0)
    enc = HistoryEncoder(dataclasses.replace(tiny_encoder_config("4x4x2"), use_hr=False))
    z = vae.encode(frames[0][:8].float() / 255.0)
    memory = stages.encode_history(dm, enc, z, 0.0, lr_latent=vae.lr_latent(z, enc.cfg.rate))
    with torch.no_grad():
        ref = dm.patch_embedding(vae.lr_latent(z, enc.cfg.rate)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(memory.tokens, ref)
    assert memory.hidden is None  # no HR branch
    with pytest.raises(ValueError, match="LR latent"):  # no stand-in LR branch
        stages.encode_history(dm, enc, z, 0.0)


# ------------------------------------------------------------------------------------------------ metrics


@pytest.fixture(scope="module")
def tiny(comfy):
    from framememory.demo.tiny_models import tiny_encoder_config, tiny_wan21_dit
    from framememory.memory.encoder import HistoryEncoder

    dm = tiny_wan21_dit(seed=0)
    enc = HistoryEncoder(tiny_encoder_config("4x4x2"))
    enc.reset_parameters(torch.Generator().manual_seed(1))
    return dm, enc


def _held_out(vae, frames, n=2):
    clip = frames[1].float() / 255.0
    return [{"latent": vae.encode(clip[8 * i: 8 * i + 8])[0], "frames": clip[8 * i: 8 * i + 8]} for i in range(n)]


def test_frame_query_metrics_runs_a_short_sampler(tiny, vae, frames):
    from framememory.training import evaluate

    dm, enc = tiny
    clips = _held_out(vae, frames)
    lr_fn = lambda x: vae.lr_latent(x, enc.cfg.rate)  # noqa: E731
    m = evaluate.frame_query_metrics(dm, enc, clips, vae, seed=0, queries_per_clip=2, steps=2, lr_fn=lr_fn)
    assert m["n"] == 4 and m["reference"] == "frames"
    assert all(math.isfinite(m[k]) for k in ("psnr", "ssim", "psnr_vae", "ssim_vae"))
    assert m["psnr"] < 20  # a random DiT does not retrieve frames
    assert evaluate.frame_query_metrics(dm, enc, clips, vae, seed=0, queries_per_clip=2, steps=2, lr_fn=lr_fn) == m
    none = evaluate.frame_query_metrics(dm, None, clips[:1], vae, seed=0, queries_per_clip=1, steps=1)
    assert math.isfinite(none["psnr"])
    own = evaluate.frame_query_loss(dm, enc, clips, seed=0, n_t=2, lr_fn=lr_fn)
    other = evaluate.frame_query_loss(dm, enc, clips, seed=0, n_t=2, lr_fn=lr_fn, shuffle_memory=True)
    assert math.isfinite(own) and math.isfinite(other) and own != other


def test_ground_truth_passthrough_scores_the_vae_ceiling(tiny, vae, frames):
    from framememory.training import evaluate, stages
    from framememory.training.standin_vae import reconstruction_psnr

    dm, enc = tiny
    clips = _held_out(vae, frames)

    def passthrough(history, omega):
        return stages.gather_frames(history.expand(omega.shape[0], -1, -1, -1, -1), omega)

    # 8 queries on 8-frame histories: every frame once
    m = evaluate.frame_query_metrics(dm, enc, clips, vae, seed=3, queries_per_clip=8, predict=passthrough)
    ceiling = reconstruction_psnr(vae, [c["frames"] for c in clips])
    assert m["n"] == ceiling["frames"] == 16
    assert m["psnr"] == pytest.approx(ceiling["psnr"], abs=1e-4)
    assert m["ssim"] == pytest.approx(ceiling["ssim"], abs=1e-5)
    assert math.isinf(m["psnr_vae"]) or m["psnr_vae"] > 80  # identical to the decoded ground truth


def test_euler_sampler_is_exact_for_a_straight_flow():
    from framememory.training.evaluate import euler_sample

    x0 = torch.randn(3, 4)
    eps = torch.randn(3, 4)
    out = euler_sample(lambda x, t: eps - x0, eps, steps=3)  # the true velocity of X_t = (1-t) X_0 + t eps
    torch.testing.assert_close(out, x0)


def test_next_segment_loss_with_and_without_memory(tiny, vae, frames):
    from framememory.training import evaluate

    dm, enc = tiny
    clip = frames[0][:12].float() / 255.0
    samples = [{"latent": vae.encode(clip)[0]}]
    lr_fn = lambda x: vae.lr_latent(x, enc.cfg.rate)  # noqa: E731  the stand-in VAE's LR latent of the history
    a = evaluate.next_segment_loss(dm, enc, samples, seed=0, n_t=2, lr_fn=lr_fn)
    assert math.isfinite(a) and a == evaluate.next_segment_loss(dm, enc, samples, seed=0, n_t=2, lr_fn=lr_fn)
    # an untrained encoder's HR branch is zero, its LR branch is not: memory changes the loss
    b = evaluate.next_segment_loss(dm, None, samples, seed=0, n_t=2)
    assert math.isfinite(b) and a != b
    with pytest.raises(ValueError, match="LR latent"):  # an encoder with an LR branch needs its LR latent
        evaluate.next_segment_loss(dm, enc, samples, seed=0, n_t=2)


@pytest.fixture
def reproduce_script():
    """training/reproduce.py as a module (it is a script, not part of the package)."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "training" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("reproduce_script", script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules[spec.name]


def test_reproduce_smoke_run_end_to_end(comfy, media_dir, reproduce_script, tmp_path, monkeypatch, capsys):
    """The whole reproduction pipeline with the `smoke` preset on the two clips setup.sh fetches (carphone as the
    training clip, bikes as the held-out one; caches and the JSON under tmp_path): stand-in VAE fit, base DiT, Stage I
    for every variant, frame-query PSNR/SSIM, Stage II arms, the printed table and the JSON (numbers meaningless)."""
    import json

    from framememory.training import reproduce_data, reproduce_training
    from framememory.training.reproduce_config import PRESETS, VARIANTS

    mod = reproduce_script
    for module in (reproduce_data, reproduce_training):
        monkeypatch.setattr(module, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(reproduce_data, "TRAIN_CLIPS", ("carphone_pristine.mp4",))
    monkeypatch.setattr(reproduce_data, "HELDOUT_CLIPS", ("bikes.mp4",))
    monkeypatch.setattr(reproduce_data, "fetch_media", lambda: {
        "available": {n: media_dir / n for n in ("carphone_pristine.mp4", "bikes.mp4")}, "missing": {}})
    out = tmp_path / "smoke.json"
    with pytest.raises(SystemExit, match="need at least 2 and 1"):  # one held-out history: no memory-gain column
        mod.run(PRESETS["smoke"], "smoke", (0,), 1234, out, "cpu")
    preset = mod.override(PRESETS["smoke"], ["eval_windows=2"])  # bikes: 24 frames = 3 histories of 8
    result = mod.run(preset, "smoke", (0,), 1234, out, "cpu")

    saved = json.loads(out.read_text())
    assert saved["clips"]["train"] == {"carphone_pristine.mp4": 16} and list(saved["clips"]["heldout"]) == ["bikes.mp4"]
    labels = [r["variant"] for r in saved["rows"]]
    for name, rate, _ in VARIANTS:
        assert f"{name} {rate}" in labels
    assert "Base DiT, no memory" in labels and any(lab.startswith("VAE ceiling") for lab in labels)
    for r in saved["rows"]:
        assert math.isfinite(r["psnr"]) and 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1
    tokens = {r["variant"]: r["tokens"] for r in saved["rows"] if r["variant"] != "Base DiT, no memory"
              and not r["variant"].startswith("VAE")}
    assert tokens["Proposed 4x4x2"] == tokens["Large Patchifier 4x4x2"] == tokens["Only LR 4x4x2"]  # same budget
    assert tokens["Proposed 2x2x1"] == 8 * tokens["Proposed 4x4x2"]
    assert {r["arm"] for r in saved["stage2"]} == {"memory (Stage I encoder)", "no memory",
                                                   "memory, encoder without Stage I"}
    assert all(math.isfinite(r["heldout_loss"]) for r in saved["stage2"])
    assert set(saved["ordering_psnr"]) >= {"all", "Proposed 4x4x2 < Proposed 2x2x1"}
    assert result["means"]["Proposed 4x4x2"]["seeds"] == 1
    printed = capsys.readouterr().out
    assert "Paper ordering (PSNR)" in printed and "Stage II held-out next-segment loss" in printed


def test_reproduce_helpers(reproduce_script):
    from framememory.training.media import HELDOUT_CLIPS, TRAIN_CLIPS
    from framememory.training.reproduce_config import PRESETS, windows
    from framememory.training.reproduce_report import ordering

    mod = reproduce_script
    assert windows(20, 8, 4) == [0, 4, 8, 12] and windows(20, 8, 2, limit=3) == [0, 6, 12]
    assert not set(TRAIN_CLIPS) & set(HELDOUT_CLIPS)
    good = {"Large Patchifier 4x4x2": 1, "Only LR 4x4x2": 2, "Without LR 4x4x2": 3, "Proposed 4x4x2": 4,
            "Proposed 2x2x1": 5}
    assert ordering(good)["all"] and not ordering({**good, "Only LR 4x4x2": 0.5})["all"]
    p = mod.override(PRESETS["gpu"], ["stage1_steps=50", "hr_channels=8,16", "mixed_precision=no", "lr=0.01"])
    assert (p.stage1_steps, p.hr_channels, p.mixed_precision, p.lr) == (50, (8, 16), "no", 0.01)
    assert p.width == PRESETS["gpu"].width  # the rest untouched
    for bad in (["nope=1"], ["stage1_steps"], ["stage1_steps=many"]):
        with pytest.raises(SystemExit, match="--set"):
            mod.override(p, bad)


# ------------------------------------------------------------------------------------------------ --vae lab


@pytest.fixture(scope="module")
def lab_vae(comfy):
    from framememory.training.reproduce_labvae import LabVideoVAE

    return LabVideoVAE()  # the committed lab_model/ VAE through comfy.sd.VAE


@pytest.fixture(scope="module")
def lab_frames(media_dir):
    """17 frames of bikes.mp4 at 16 fps, 64x64 (uint8 [17, 64, 64, 3]): one causal stream of 5 latent frames."""
    from framememory.training.data import decode_frames, resample

    it = resample(decode_frames(media_dir / "bikes.mp4", 64, 64), 16.0)
    return torch.from_numpy(np.stack([f for _, f in zip(range(17), it)]))


def test_lab_vae_encodes_streams_and_real_lr_latents_on_the_memory_grid(lab_vae, lab_frames):
    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid
    from framememory.training.reproduce_labvae import stream_frames

    z = lab_vae.encode(lab_frames)  # model space
    t = (lab_frames.shape[0] - 1) // 4 + 1
    assert z.shape == (1, 16, t, 8, 8) and stream_frames(t) == lab_frames.shape[0]
    raw = lab_vae.encode_vae_space(lab_frames)
    torch.testing.assert_close(lab_vae.fmt.process_out(z), raw)  # Wan 2.1 model space <-> VAE space
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        lab_vae.encode(lab_frames[:16])
    for rate in ("4x4x2", "2x2x1"):
        cfg = EncoderConfig(rate=rate)
        tm, hm, wm = memory_grid((t, 8, 8), cfg)
        lr = lab_vae.lr_latents(lab_frames, t, (rate,))[cfg.rate_str]
        assert lr.shape == (16, tm, hm * 2, wm * 2), (rate, lr.shape)  # the DiT's 1x2x2 patchify lands on the grid
        assert torch.isfinite(lr).all() and lr.std() > 0.1


def test_lab_vae_render_decodes_queries_in_their_stream(lab_vae, lab_frames):
    from framememory.training.reproduce_labvae import latent_video_frames

    z = lab_vae.encode(lab_frames)
    full = lab_vae.decode(z)[0]  # [17, 64, 64, 3]
    assert full.shape == lab_frames.shape and 0 <= full.min() and full.max() <= 1
    omega = torch.tensor([[3], [0], [1]])
    gt = torch.stack([z[0, :, j] for j in (3, 0, 1)])[:, :, None]  # ground truth as the prediction
    img, ref, index = lab_vae.render(z, omega, gt)
    assert index.tolist() == latent_video_frames(3) + [0] + latent_video_frames(1) == [9, 10, 11, 12, 0, 1, 2, 3, 4]
    # a prefix decode of a causal VAE gives the same frames as the whole stream: the ceiling is its reconstruction
    torch.testing.assert_close(img, full[index].permute(0, 3, 1, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(ref, img)
    # a wrong latent frame changes only its own query's frames and the ones decoded after it
    bad = gt.clone()
    bad[1] = torch.randn_like(bad[1])  # latent 0 (frame 0) replaced by noise
    img2, ref2, _ = lab_vae.render(z, omega, bad)
    torch.testing.assert_close(ref2, ref)
    assert (img2[4] - img[4]).abs().mean() > 0.05


def test_chunk_windows_crop_lr_latents_with_the_window(lab_vae, lab_frames):
    from types import SimpleNamespace

    from framememory.memory.config import EncoderConfig
    from framememory.training import evaluate
    from framememory.training.reproduce_labvae import ChunkWindows, time_unit

    z = lab_vae.encode(lab_frames)[0]  # [16, 5, 8, 8]
    chunk = {"latent": torch.cat([z, z[:, :3]], 1), "lr": {}}  # 8 latent frames (a synthetic longer stream)
    chunk["lr"]["4x4x2"] = torch.arange(4.0).reshape(1, 4, 1, 1).expand(16, 4, 2, 2)  # LR frame j carries j
    unit = time_unit(("4x4x2", "2x2x1"))
    assert unit == 2
    ds = ChunkWindows([chunk], 4, 2, torch.zeros(1, 4096), unit)
    assert len(ds) == 3 and "lr_latent" not in ds[0]
    with_lr = ds.with_lr("4x4x2")
    for k, start in enumerate((0, 2, 4)):
        item = with_lr[k]
        assert torch.equal(item["latent"], chunk["latent"][:, start: start + 4])
        assert item["lr_latent"].shape == (16, 2, 2, 2) and item["lr_latent"][0, :, 0, 0].tolist() == [start // 2,
                                                                                                       start // 2 + 1]
    with pytest.raises(ValueError, match="multiple of the memory time step"):
        ChunkWindows([chunk], 4, 1, None, unit)
    # held-out items carry their LR latents; the evaluation picks the encoder's rate
    enc = SimpleNamespace(cfg=EncoderConfig(rate="4x4x2"))
    sample = {"latent": chunk["latent"][:, :4], "lr_latents": {"4x4x2": chunk["lr"]["4x4x2"][:, :2]}}
    got = evaluate._lr_latent(enc, None, sample["latent"][None].expand(3, -1, -1, -1, -1), sample)
    assert got.shape == (3, 16, 2, 2, 2) and torch.equal(got[2], sample["lr_latents"]["4x4x2"])


def test_base_dit_cache_name_carries_the_vae_kind():
    from framememory.training.reproduce_config import PRESETS, VARIANTS
    from framememory.training.reproduce_data import _lr_rates
    from framememory.training.reproduce_training import base_dit_file

    p = PRESETS["cpu-small"]
    standin = base_dit_file(p, "cpu-small", 0, "abc", "standin")
    lab = base_dit_file(p, "cpu-small", 0, "abc", "lab")
    assert standin != lab and "vae-lab" in lab.name and "vae-" not in standin.name  # stand-in caches keep their name
    assert _lr_rates(VARIANTS) == ("4x4x2", "2x2x1")  # the LR latents a lab run encodes
