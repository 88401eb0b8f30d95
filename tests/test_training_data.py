"""Data stage of training (training/data.py, training/prepare_data.py) on real clips with the tiny Wan VAE and the
stand-in text encoder: shard shapes and metadata, LR-branch latents (format framememory-shards/2), caption -> chunk
prompts, bad videos, resuming, atomic writes, refusal of old or rate-less shards, and the CLI end to end."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

W, H, FPS, FRAMES = 64, 48, 8.0, 9  # 9 frames = 4k+1 -> 3 latent frames; 64x48 -> 8x6 latent (stride 8)
LR_RATE = "2x2x1"  # 8x6 latent = 4x3 DiT tokens: below one 4x4x2 memory token, 2 x 1 tokens at 2x2x1


@pytest.fixture(scope="module")
def encoders(comfy):
    import comfy.sd
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.demo.tiny_models import tiny_wan21_vae

    vae = comfy.sd.VAE(sd=tiny_wan21_vae(1).state_dict())
    clip = StandInTextEncoder()
    calls = {"video": 0, "text": 0}

    def encode_video(frames):
        calls["video"] += 1
        return vae.encode(frames[..., :3])

    def encode_text(prompt):
        calls["text"] += 1
        return clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0][0]

    return encode_video, encode_text, calls


def _folder(tmp_path, media_dir, *names):
    src = tmp_path / "videos"
    src.mkdir()
    for n in names:
        os.symlink(media_dir / n, src / n)
    return src


def _cfg(**kw):
    from framememory.training.data import ClipSettings

    kw.setdefault("lr_rates", (LR_RATE,))
    return ClipSettings(width=W, height=H, fps=FPS, chunk_frames=FRAMES, dtype="float32", **kw)


def test_shards_shapes_metadata_and_captions(encoders, tmp_path, media_dir):
    from framememory.training.data import FORMAT, ShardDataset, prepare_dataset, read_shard, read_shard_item

    src = _folder(tmp_path, media_dir, "bikes.mp4", "carphone_pristine.mp4")
    (src / "bikes.mp4.json").write_text(json.dumps({"shots": [
        {"start_s": 0.0, "end_s": 3.0, "prompt": "a street"}, {"start_s": 3.0, "end_s": 6.0, "prompt": "cyclists"},
        {"start_s": 8.0, "end_s": 10.0, "prompt": "a car"}]}))
    (src / "captions.csv").write_text("video,start_s,end_s,prompt\ncarphone_pristine.mp4,0,4,\"a man, on the phone\"\n"
                                      "bikes.mp4,0,10,overridden by the sidecar\n")
    encode_video, encode_text, calls = encoders
    out = tmp_path / "shards"
    m = prepare_dataset(src, out, _cfg(), encode_video, encode_text, progress=False)
    # bikes: 10 s at 8 fps = 80 frames -> 8 chunks of 9; carphone: 4 s (120 frames at 29.97) -> 32 frames -> 3 chunks
    by_src = {v["source"]: v for v in m["videos"]}
    assert by_src["bikes.mp4"]["chunks"] == 8 and by_src["carphone_pristine.mp4"]["chunks"] == 3
    assert m["num_shards"] == 11 and m["run"] == {"written": 11, "skipped": 0, "failed": 0} and m["failed"] == []
    assert m["format"] == FORMAT == "framememory-shards/2" and m["settings"]["lr_rates"] == [LR_RATE]
    assert calls["text"] == 4  # once per distinct prompt
    # chunk middle times (9k + 4) / 8 s: 0.5 1.625 2.75 | 3.875 5.0 6.125 (nearest: cyclists) | 7.25 8.375 (a car)
    want = ["a street"] * 3 + ["cyclists"] * 3 + ["a car"] * 2
    for k, rel in enumerate(by_src["bikes.mp4"]["shards"]):
        latent, text, meta = read_shard(out / rel)
        assert latent.shape == (16, 3, H // 8, W // 8) and latent.dtype == torch.float32 and torch.isfinite(latent).all()
        assert text.ndim == 2 and text.shape[1] == 4096
        assert meta["prompt"] == want[k] and meta["shot"] == [0, 0, 0, 1, 1, 1, 2, 2][k]
        assert meta["frame_range"] == [9 * k, 9 * k + 9] and meta["fps"] == FPS and meta["resolution"] == [W, H]
        assert meta["source"] == "bikes.mp4" and meta["chunk"] == k
        # LR latent at 2x2x1: Tm = 3 (one LR latent frame per memory step), on the 1x2 memory grid x the 2x2 patch
        lr = read_shard_item(out / rel, lr_rate=LR_RATE)["lr_latent"]
        assert lr.shape == (16, 3, 2, 4) and lr.dtype == torch.float32 and torch.isfinite(lr).all()
    _, t0, m0 = read_shard(out / by_src["carphone_pristine.mp4"]["shards"][0])
    assert m0["prompt"] == "a man, on the phone" and t0.shape == (5, 4096)  # 5 words
    ds = ShardDataset(out)
    assert len(ds) == 11 and ds[0]["latent"].shape == (16, 3, 6, 8) and "lr_latent" not in ds[0]
    assert ShardDataset(out, lr_rate=LR_RATE)[0]["lr_latent"].shape == (16, 3, 2, 4)
    assert not list(out.rglob("*.tmp*"))


def test_bad_video_reported_and_resume_skips_finished(encoders, tmp_path, media_dir, caplog):
    from framememory.training.data import prepare_dataset

    src = _folder(tmp_path, media_dir, "carphone_pristine.mp4")
    (src / "broken.mp4").write_bytes(random.Random(0).randbytes(4096))
    (src / "empty.avi").write_bytes(b"")
    encode_video, encode_text, calls = encoders
    out = tmp_path / "shards"
    with caplog.at_level("WARNING", logger="framememory.training.data"):
        m = prepare_dataset(src, out, _cfg(default_prompt="a video"), encode_video, encode_text, progress=False)
    assert sorted(f["source"] for f in m["failed"]) == ["broken.mp4", "empty.avi"]
    assert m["run"]["failed"] == 2 and m["num_shards"] == 3
    assert "broken.mp4" in caplog.text
    on_disk = json.loads((out / "manifest.json").read_text())
    assert [f["source"] for f in on_disk["failed"]] == [f["source"] for f in m["failed"]]
    shards = sorted(out.rglob("*.safetensors"))
    mtimes = [p.stat().st_mtime_ns for p in shards]

    before = calls["video"]
    m2 = prepare_dataset(src, out, _cfg(default_prompt="a video"), encode_video, encode_text, progress=False)
    assert calls["video"] == before  # nothing re-encoded
    assert m2["run"]["written"] == 0 and m2["run"]["skipped"] == 3 and m2["num_shards"] == 3
    assert [p.stat().st_mtime_ns for p in shards] == mtimes

    (src / "carphone_pristine.json").write_text(json.dumps({"shots": [{"start_s": 0, "end_s": 4, "prompt": "a face"}]}))
    m3 = prepare_dataset(src, out, _cfg(default_prompt="a video"), encode_video, encode_text, progress=False)
    assert m3["run"]["written"] == 3 and m3["run"]["skipped"] == 0  # captions changed: re-encoded
    from framememory.training.data import read_shard

    assert read_shard(out / m3["videos"][1]["shards"][2])[2]["prompt"] == "a face"
    with pytest.raises(ValueError, match="other|settings"):
        prepare_dataset(src, out, _cfg(default_prompt="other"), encode_video, encode_text, progress=False)


def test_interrupted_run_leaves_no_partial_shard(encoders, tmp_path, media_dir):
    from framememory.training.data import prepare_dataset, shard_ok

    src = _folder(tmp_path, media_dir, "carphone_pristine.mp4")
    encode_video, encode_text, _ = encoders
    n = {"calls": 0}

    def failing(frames):
        n["calls"] += 1
        if n["calls"] == 3:  # chunk 1's latent (each chunk: its latent, then its LR latent)
            raise RuntimeError("simulated crash (out of memory)")
        return encode_video(frames)

    out = tmp_path / "shards"
    with pytest.raises(RuntimeError, match="simulated"):
        prepare_dataset(src, out, _cfg(), failing, encode_text, progress=False)
    files = sorted(p.name for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert files == ["chunk_00000.safetensors"]  # no chunk_00001, no temp file
    first = next(out.rglob("chunk_00000.safetensors"))
    mtime = first.stat().st_mtime_ns
    (first.parent / "chunk_00001.safetensors.tmp999").write_bytes(b"half a shard from a killed process")

    m = prepare_dataset(src, out, _cfg(), failing, encode_text, progress=False)
    assert m["run"] == {"written": 2, "skipped": 1, "failed": 0} and first.stat().st_mtime_ns == mtime
    shards = sorted(out.rglob("chunk_*.safetensors"))
    assert len(shards) == 3 and all(shard_ok(p) for p in shards) and not list(out.rglob("*.tmp*"))


def test_animated_webp_via_pillow(encoders, tmp_path):
    from PIL import Image

    from framememory.training.data import prepare_dataset, read_shard

    src = tmp_path / "videos"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    frames = [Image.fromarray((torch.rand(40, 80, 3, generator=g) * 255).byte().numpy()) for _ in range(20)]
    frames[0].save(src / "clip.webp", save_all=True, append_images=frames[1:], duration=62.5, loop=0)  # 16 fps, 1.25 s
    encode_video, encode_text, _ = encoders
    m = prepare_dataset(src, tmp_path / "shards", _cfg(), encode_video, encode_text, progress=False)
    assert m["failed"] == [] and m["num_shards"] == 1  # 1.25 s at 8 fps = 10 frames -> one chunk of 9
    latent, _, meta = read_shard(tmp_path / "shards" / m["videos"][0]["shards"][0])
    assert latent.shape == (16, 3, 6, 8) and meta["prompt"] == ""


def test_cli_end_to_end(comfy, tmp_path, media_dir, repo_root, comfyui_dir):
    from safetensors.torch import save_file

    from framememory.demo.tiny_models import tiny_wan21_vae

    vae_path = tmp_path / "tiny_vae.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_wan21_vae(1).state_dict().items()}, str(vae_path))
    src = _folder(tmp_path, media_dir, "carphone_pristine.mp4")
    (src / "broken.mp4").write_bytes(random.Random(1).randbytes(2048))
    out = tmp_path / "shards"
    cmd = [sys.executable, str(repo_root / "training" / "prepare_data.py"), str(src), "--out", str(out),
           "--vae", str(vae_path), "--stand-in-text", "--cpu", "--width", "64", "--height", "48", "--fps", "8",
           "--frames", "9", "--max-chunks", "2", "--comfyui-dir", str(comfyui_dir), "--default-prompt", "a man",
           "--lr-rates", LR_RATE, "1x1x1"]
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 shards" in r.stdout and "1 videos failed: broken.mp4" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["dtype"] == "bfloat16" and m["num_shards"] == 2
    assert m["settings"]["lr_rates"] == [LR_RATE, "1x1x1"]
    from framememory.training.data import read_shard, read_shard_item

    latent, text, meta = read_shard(out / m["videos"][1]["shards"][1])
    assert latent.shape == (16, 3, 6, 8) and latent.dtype == torch.bfloat16 and text.shape == (2, 4096)
    assert meta["prompt"] == "a man" and meta["frame_range"] == [9, 18]
    item = read_shard_item(out / m["videos"][1]["shards"][1], lr_rate=LR_RATE)
    assert item["lr_latent"].shape == (16, 3, 2, 4) and item["lr_latent"].dtype == torch.bfloat16
    # 1x1x1: the LR clip is the chunk itself at the memory grid's (full) size: as large as the latent
    assert read_shard_item(out / m["videos"][1]["shards"][1], lr_rate="1x1x1")["lr_latent"].shape == (16, 3, 6, 8)


def test_lr_latents_of_a_real_clip_at_the_default_rate(encoders, tmp_path, media_dir):
    """The default ClipSettings.lr_rates ("4x4x2"): each shard carries lr_latent_4x4x2 = the VAE of memory.encoder.lr_clip
    of the chunk's frames (one stream from its first frame, whole memory steps), shaped [C, Tm, Hm * 2, Wm * 2] with
    (Tm, Hm, Wm) = memory.grid.memory_grid of the chunk's latent."""
    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import lr_clip, lr_frames_per_span
    from framememory.memory.grid import memory_grid
    from framememory.training.data import ClipSettings, ShardDataset, iter_chunks, prepare_dataset, read_shard_item

    src = _folder(tmp_path, media_dir, "carphone_pristine.mp4")
    cfg = ClipSettings(width=128, height=64, fps=FPS, chunk_frames=17, max_chunks=1, dtype="float32")
    assert cfg.lr_rates == ("4x4x2",)
    encode_video, encode_text, _ = encoders
    out = tmp_path / "shards"
    m = prepare_dataset(src, out, cfg, encode_video, encode_text, progress=False)
    assert m["num_shards"] == 1 and m["settings"]["lr_rates"] == ["4x4x2"]
    item = read_shard_item(out / m["videos"][0]["shards"][0], lr_rate="4x4x2")
    latent, lr = item["latent"], item["lr_latent"]
    assert latent.shape == (16, 5, 8, 16)  # 17 frames -> 5 latent frames of 8x16 cells (8x4 DiT tokens per frame)
    enc = EncoderConfig(rate="4x4x2")
    tm, hm, wm = memory_grid(tuple(latent.shape[1:]), enc)
    assert (tm, hm, wm) == (2, 1, 2) and tm == latent.shape[1] // 2
    assert lr.shape == (16, tm, hm * 2, wm * 2)
    # the same frames through lr_clip and the VAE: what the nodes compute at inference for this span
    _, frames = next(iter_chunks(src / "carphone_pristine.mp4", cfg))
    pixels = torch.from_numpy(frames).float() / 255.0
    n, n_lr = lr_frames_per_span(tm * 2, enc, stream_start=True)
    assert (n, n_lr) == (13, 5)
    clip = lr_clip(pixels[:n], enc, stream_start=True)
    assert clip.shape == (5, hm * 2 * 8, wm * 2 * 8, 3)
    torch.testing.assert_close(lr, encode_video(clip)[0])
    assert ShardDataset(out, lr_rate="4x4x2")[0]["lr_latent"].shape == lr.shape
    with pytest.raises(ValueError, match="2x2x2") as e:  # the shards have no LR latents at another rate
        ShardDataset(out, lr_rate="2x2x2")
    assert "prepare_data.py" in str(e.value) and "4x4x2" in str(e.value)
    with pytest.raises(ValueError, match="prepare_data.py"):
        read_shard_item(out / m["videos"][0]["shards"][0], lr_rate="2x2x2")


def test_old_or_unversioned_shards_are_refused_with_the_rebuild_command(tmp_path):
    from framememory.training.data import ShardDataset

    for manifest in ({"format": "framememory-shards/1", "videos": []}, {"videos": []}):
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ValueError, match="prepare_data.py") as e:
            ShardDataset(tmp_path)
        assert "framememory-shards/2" in str(e.value)
        with pytest.raises(ValueError, match="prepare_data.py"):
            ShardDataset(tmp_path, lr_rate="4x4x2")
