"""Leave-and-return scoring (issue 22) on real held-out frames, without a model: scripts/scores.py (metrics, reference
rows, retrieval, margins), scripts/revisit_eval.py (sequences) and the Storyboard summary's margin line."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from framememory.training.data import decode_frames, resample


def _load(repo_root, name):
    """A module of scripts/ (where the main job imports it from)."""
    if str(repo_root / "scripts") not in sys.path:
        sys.path.insert(0, str(repo_root / "scripts"))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def sc(repo_root):
    return _load(repo_root, "scores")


@pytest.fixture(scope="module")
def rv(repo_root):
    return _load(repo_root, "revisit_eval")


def _clip(path, n, w=128, h=64):
    frames = []
    for a in resample(decode_frames(path, w, h), 16.0):
        frames.append(a)
        if len(frames) == n:
            break
    return np.stack(frames)


@pytest.fixture(scope="module")
def clips(media_dir):
    """carphone (a static face, 64 frames at 16 fps) and bikes (a six-shot street montage), 128x64 uint8."""
    return _clip(media_dir / "carphone_pristine.mp4", 64), _clip(media_dir / "bikes.mp4", 160)


def test_scores_copy_caps_and_thumbnails_forgive_blur(sc, clips):
    face, _ = clips
    real = face[40:56]
    same = sc.score(real, real)
    assert same["psnr_db"] == sc.PSNR_CAP_DB and same["ssim"] == pytest.approx(1.0, abs=1e-4)
    blurred = np.repeat(np.repeat(sc.thumbnails(real).mul(255).round().byte().permute(0, 2, 3, 1).numpy(), 8, 1), 8, 2)
    s = sc.score(blurred, real)
    assert s["thumb_psnr_db"] > s["psnr_db"] + 8  # an 8x blur keeps the layout: the thumbnails nearly agree
    assert sc.thumbnails(real).shape == (16, 3, 8, 16)
    with pytest.raises(ValueError, match="uint8"):
        sc.score(real.astype(np.float32), real)


def test_reference_rows(sc, clips):
    face, _ = clips
    hist, nxt = face[:29], face[29:45]
    refs = sc.reference_frames(hist, 16, vae_pass=face[:45])
    assert set(refs) == set(sc.REFERENCES)
    mc = refs["mean_colour"]
    assert mc.shape == nxt.shape and (mc == mc[0, 0, 0]).all()
    assert np.abs(mc[0, 0, 0].astype(float) - hist.reshape(-1, 3).mean(0)).max() <= 0.5
    assert (refs["last_frame"] == hist[-1]).all() and (refs["vae_ceiling"] == nxt).all()
    with pytest.raises(ValueError, match="VAE pass"):
        sc.reference_frames(hist, 16, vae_pass=face[:40])


def test_split_shots_and_retrieval_on_the_bikes_montage(sc, rv, clips):
    face, bikes = clips
    shots = sc.split_shots(bikes)
    assert len(shots) >= 5 and abs(shots[0][1] - 19) <= 1, shots  # the first cut, at 1.2 s
    pool = rv.shot_pool({"bikes.mp4": bikes})
    cands = {"A": face[:29], **pool}
    hit = sc.retrieval(face[45:61], cands, "A")  # the same face later: found among 1 + 6 shots
    assert hit["top1"] == 1.0 and hit["rank"] == 1 and hit["chance"] == round(1 / len(cands), 4)
    a, b = shots[2]
    miss = sc.retrieval(bikes[a + 2:b], cands, "A")  # a street shot is nearer to its own shot than to the face
    assert miss["top1"] == 0.0 and miss["ranking"][0] == "bikes.mp4#2"


def test_cutaway_sequence_and_its_errors(rv, clips):
    face, bikes = clips
    seq = rv.cutaway(face, bikes, 29, 32, 16, "carphone_pristine.mp4", "bikes.mp4")
    assert seq.history == 61 and len(seq.frames) == 77
    assert (seq.frames[29:61] == bikes[:32]).all() and (seq.real_return == face[29:45]).all()
    assert [s[4] for s in seq.shots] == [True, True, False] and seq.shots[2][1] == seq.shots[0][1]  # A's prompt returns
    assert seq.return_storyboard(16.0) == f"1 | {rv.PROMPTS['carphone_pristine.mp4']}"
    with pytest.raises(ValueError, match="13 \\+ 16k"):
        rv.cutaway(face, bikes, 30, 32, 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        rv.cutaway(face, bikes, 29, 20, 16)
    with pytest.raises(ValueError, match="has 64 frames"):
        rv.cutaway(face, bikes, 61, 32, 16, "carphone_pristine.mp4")


def test_pan_returns_to_the_start_window(rv, media_dir):
    big = _clip(media_dir / "bikes.mp4", 1, 320, 160)
    seq = rv.pan(np.repeat(big, 13 + 16 + 16 + 16, axis=0), 128, 64, 13, 16, 16, 16, "bikes.mp4")
    assert seq.history == 45 and (seq.real_return == big[0, :64, :128]).all()
    assert (seq.frames[44] == big[0, 96:, 192:]).all()  # away: the bottom-right corner, no overlap
    with pytest.raises(ValueError, match="larger frames"):
        rv.pan(big, 320, 160, 13, 16, 16, 16)


def test_evaluate_margin_losses_and_retrieval(rv, sc, clips):
    face, bikes = clips
    seq = rv.cutaway(face, bikes, 29, 32, 16, "carphone_pristine.mp4", "bikes.mp4")
    pool = rv.shot_pool({"bikes.mp4": bikes[64:]})
    good = rv.evaluate(seq, {"memory_on": face[29:45], "memory_off": bikes[32:48]}, None, pool, 2.0)
    assert set(good["references"]) == {"mean_colour", "last_frame"}  # no VAE pass given
    assert good["memory_on"]["retrieval_top1"] == 1.0 and good["memory_off"]["retrieval_top1"] == 0.0
    best = max(good["memory_off"]["psnr_db"], *(good["references"][k]["psnr_db"] for k in sc.TRIVIAL))
    assert good["margin_db"] == round(good["memory_on"]["psnr_db"] - best, 3) > 0 and good["losses"] == []
    for key in ("psnr_db", "thumb_psnr_db", "ssim", "retrieval_top1"):
        assert key in good["memory_off"] and key in good["references"]["last_frame"]
    bad = rv.evaluate(seq, {"memory_on": bikes[32:48], "memory_off": face[29:45]}, seq.frames, pool, 2.0)
    assert bad["margin_db"] < 0 and any(s.startswith("memory on (") and "loses to memory off (" in s for s in bad["losses"])
    assert set(bad["references"]) == set(sc.REFERENCES)
    assert any(line.startswith("  NOTE:") for line in rv.summary_lines(bad))
    cont = rv.evaluate(seq, {"memory_on": face[29:45], "memory_off": bikes[32:48]}, None, pool, None)
    assert rv.summary_lines(cont)[0].startswith("continuation (16 frames")


def test_storyboard_summary_states_the_margin():
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    spec = spec_from_file_location("rs", Path(__file__).resolve().parents[1] / "nodes" / "report_summary.py")
    rs = module_from_spec(spec)
    spec.loader.exec_module(rs)
    report = {"fps": 16.0, "segments": [{"frames": 16, "memory_tokens": 10, "history_frames_covered": 16,
                                         "history_frames_total": 16, "seconds": 1.0}], "total_frames": 16,
              "width": 256, "height": 128, "model_family": "wan21", "memory_mode": "frame_preservation",
              "rate": "2x2x1", "final_memory_tokens": 20}
    assert "Margin" not in rs.report_summary(report)
    ref = lambda v: {"psnr_db": v}  # noqa: E731
    report["evaluation"] = {"kind": "revisit", "revisit": {
        "gap_seconds": 5.0, "memory_on": ref(12.0), "memory_off": ref(11.0), "margin_db": -0.5,
        "references": {"mean_colour": ref(12.5), "last_frame": ref(10.0), "vae_ceiling": ref(15.0)}}}
    text = rs.report_summary(report)
    assert "Return after 5 s away: memory on 12.00 dB PSNR" in text
    assert "Margin -0.50 dB over the best trivial row (mean colour 12.50): memory LOSES" in text
    assert max(len(line) for line in text.splitlines()) <= 80
