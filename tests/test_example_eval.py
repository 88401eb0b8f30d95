"""The main job's memory on/off evaluation helpers (scripts/example_eval.py) on real frames, without a server."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from framememory.training.data import decode_frames, resample


@pytest.fixture(scope="module")
def ev(repo_root):
    spec = importlib.util.spec_from_file_location("example_eval", repo_root / "scripts" / "example_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bikes(media_dir):
    """The first 40 frames of bikes.mp4 at 16 fps, 64x32, uint8 [40, 32, 64, 3]."""
    frames = []
    for a in resample(decode_frames(media_dir / "bikes.mp4", 64, 32), 16.0):
        frames.append(a)
        if len(frames) == 40:
            break
    return np.stack(frames)


def test_history_length_is_one_vae_stream(ev):
    assert ev.history_length(2.8, 16.0, 4, 1000) == 29           # 13 + 16: 44.8 frames round down
    assert ev.history_length(3.8, 16.0, 4, 1000) == 45           # 60.8 frames: 61 would not fit
    assert ev.history_length(2.8, 16.0, 4, 20) == 13             # the clip's length caps it
    with pytest.raises(ev.EvalError, match="at least 13 frames"):
        ev.history_length(0.5, 16.0, 4, 1000)


def test_lossless_history_round_trips(ev, bikes, tmp_path):
    path = tmp_path / "history.mkv"
    ev.write_lossless(bikes[:29], path, 16.0)  # raises unless LoadVideo's decode gives every pixel back
    assert np.array_equal(ev.decode_video_frames(path), bikes[:29])


def test_apng_tap_keeps_repeated_frames(ev, bikes, tmp_path):
    """A clip resampled from a lower rate repeats frames; Pillow merges them when saving: read_apng restores them."""
    from PIL import Image

    frames = np.concatenate([bikes[:3], bikes[2:3], bikes[2:3], bikes[3:6]])  # frame 2 three times
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(tmp_path / "tap.png", save_all=True, append_images=imgs[1:], duration=int(1000 / 16.0), loop=0)
    back = ev.read_apng(tmp_path / "tap.png", 16.0)
    assert back.shape == frames.shape and np.array_equal(back, frames)


def test_metrics_rank_a_copy_above_another_scene(ev, bikes):
    real = bikes[:16]
    same = ev.arm_metrics(real, real, [8, 8])
    other = ev.arm_metrics(bikes[24:40], real, [8, 8])
    assert same["psnr_db"] == ev.PSNR_CAP_DB and same["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert other["psnr_db"] < 30 and len(other["per_segment_psnr_db"]) == 2
    report = {"segments": [{"frames": 8}, {"frames": 8}], "fps": 16.0, "width": 64, "height": 32}
    out = ev.evaluation("bikes.mp4", bikes, 16, bikes[16:32], bikes[20:36], report)
    assert out["compared_frames"] == 16 and out["gain_db"] == round(out["memory_on"]["psnr_db"] - out["memory_off"]["psnr_db"], 3)
    assert out["memory_on"]["psnr_db"] == ev.PSNR_CAP_DB > out["memory_off"]["psnr_db"]
