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
    assert other["thumb_psnr_db"] > other["psnr_db"]  # 8x thumbnails forgive detail
    assert np.mean(other["per_frame_psnr_db"][:8]) == pytest.approx(other["per_segment_psnr_db"][0], abs=0.01)


@pytest.fixture(scope="module")
def job(repo_root):
    import importlib
    import sys

    sys.path.insert(0, str(repo_root / "scripts"))
    return importlib.import_module("revisit_job")


def test_leave_and_return_prompt(ev, job, repo_root, media_dir, tmp_path):
    """The main job's default: A (carphone), 5 s of the training-split cutaway, the return with A's prompt; one
    lossless sequence file read by Load Video as History; the VAE branch; the shuffled control's prompt (another clip's
    A read by its own history node and spliced into the cached history by scripts/eval_nodes)."""
    import json

    api = json.loads((repo_root / "workflows" / "api" / "storyboard_wan21_lab_api.json").read_text())
    out, plan = job.prepare(api, media_dir / "carphone_pristine.mp4", media_dir / "bigbuckbunny.mp4", 5.0, 2.8, 1.0,
                            tmp_path, media_dir)
    seq, sb = plan.seq, out[plan.storyboard_id]["inputs"]
    assert (seq.a_frames, seq.history, seq.ret, plan.gap_seconds) == (29, 109, 16, 5.0)
    assert sb["storyboard"] == "1 | " + job.revisit_eval.PROMPTS["carphone_pristine.mp4"]
    node = out[plan.history_node]["inputs"]
    assert (node["video"], node["frame_load_cap"], sb["memory"][0]) == (plan.file, 109, plan.history_node)
    assert np.array_equal(ev.decode_video_frames(tmp_path / plan.file), seq.frames)  # lossless, A + cutaway + A'
    assert np.array_equal(seq.frames[29:109], ev.read_clip(media_dir / "bigbuckbunny.mp4", 256, 128, 16.0, 80))
    batch = next(n["inputs"] for n in out.values() if n["class_type"] == "ImageFromBatch")
    assert (batch["batch_index"], batch["length"]) == (109 - job.CONTEXT, job.CONTEXT + 16)
    assert out[plan.vae_tap]["class_type"] == "SaveAnimatedPNG"
    control = job.shuffled_prompt(out, plan)
    assert control[plan.history_node] == out[plan.history_node] and plan.vae_tap not in control  # cached history
    splice_id = control[plan.storyboard_id]["inputs"]["memory"][0]
    splice = control[splice_id]
    assert splice["class_type"] == job.SPLICE_NODE and splice["inputs"]["memory"] == [plan.history_node, 0]
    other = control[splice["inputs"]["other"][0]]["inputs"]  # the control's A: its own Load Video as History
    assert (other["video"], other["frame_load_cap"]) == (plan.shuffled_file, 29)
    assert all(n["inputs"]["filename_prefix"].endswith("_shuffled") for n in control.values()
               if "filename_prefix" in n["inputs"])
    shuffled = ev.decode_video_frames(tmp_path / plan.shuffled_file)  # bikes' first 29 frames only
    assert len(shuffled) == 29 and not np.array_equal(shuffled, seq.frames[:29])
    with pytest.raises(job.example_eval.EvalError, match=r"--gap-seconds 6 need 96 frames \(6.00 s at 16 fps\) but bigbuckbunny.mp4 holds 85"):
        job.prepare(api, media_dir / "carphone_pristine.mp4", media_dir / "bigbuckbunny.mp4", 6.0, 2.8, 1.0,
                    tmp_path, media_dir)


def test_run_example_refuses_bad_seconds_before_any_work(repo_root, capsys):
    import sys

    spec = importlib.util.spec_from_file_location("framememory_run_example", repo_root / "scripts" / "run_example.py")
    mod = sys.modules.get(spec.name)
    if mod is None:
        mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
        spec.loader.exec_module(mod)
    assert mod.parse_args(["--history-seconds", "4.5"]).history_seconds == 4.5
    for flag, value in (("--history-seconds", "inf"), ("--history-seconds", "nan"), ("--gap-seconds", "0"),
                        ("--return-seconds", "-1")):
        with pytest.raises(SystemExit) as stop:
            mod.parse_args([flag, value])
        assert stop.value.code == 2
        assert f"{flag} must be a finite number of seconds above 0" in capsys.readouterr().err


def test_a_history_longer_than_the_clip_is_refused_before_reading(job, media_dir):
    ev = job.example_eval
    clip = media_dir / "bikes.mp4"
    n = ev.clip_frames(clip, 16.0)
    assert abs(n - len(ev.read_clip(clip, 64, 32, 16.0, 100_000))) <= 1  # the container's length, no decoding
    job.check_within_clip(clip, 16.0, n - 1, "--history-seconds 1")  # fits: nothing raised
    with pytest.raises(ev.EvalError, match=r"--history-seconds 99 need 1584 frames \(99.00 s at 16 fps\) but "
                                           r"bikes.mp4 holds \d+ \([\d.]+ s\): ask for less or give a longer clip"):
        job.check_within_clip(clip, 16.0, 1584, "--history-seconds 99")
    assert ev.read_clip(clip, 64, 32, 16.0, 20).shape == (20, 32, 64, 3)  # only what is asked for
