"""benchmarks/memory_modes.py --quick on the lab recipe's smoke set (made here, as tests/test_lab_recipe.py makes it):
every row of the comparison table is there with finite numbers, and the context counts behave as each memory
design says (no memory 0 < sliding window; PackForcing bounded; Frame Preservation grows with the history; VideoSSM's
state constant). The smoke DiT has one block and a few training steps: the quality numbers themselves mean nothing.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

# ~3 min on 2 idle cores (9 rows, each a subprocess): run with -m slow (README "Tests")
pytestmark = pytest.mark.slow

ROWS = ("off", "sliding", "fp", "fp_4x4x2", "fp_2x2x2", "pack_forcing", "video_ssm", "shuffled")
REFERENCES = ("mean_colour", "last_frame", "last_frame_vae", "vae_ceiling")  # the "references" arm's rows
SECONDS = ("20", "60", "120")


@pytest.fixture(scope="module")
def bench(smoke_lab, tmp_path_factory, repo_root):
    stem = tmp_path_factory.mktemp("modes") / "memory_modes"
    cmd = [sys.executable, str(repo_root / "benchmarks" / "memory_modes.py"), "--quick", "--lab-dir", str(smoke_lab),
           "--out", str(stem), "--jobs", "3", "--threads", "1"]  # 3 rows at a time, 1 thread each (imports overlap)
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(stem.with_name(stem.name + ".json").read_text())
    return data, proc.stdout, stem


def test_every_row_has_finite_numbers(bench):
    data, stdout, stem = bench
    rows = {r["key"]: r for r in data["rows"]}
    assert tuple(rows) == ROWS + REFERENCES
    for key, r in rows.items():
        assert r["error"] is None, (key, r["error"], data["arms"].get(key))
        cols = ("PSNR dB", "SSIM", "thumb dB") + (() if key in REFERENCES else ("cost 20s", "step x"))
        for col in cols + (("margin dB",) if key not in REFERENCES + ("off",) else ()):
            assert isinstance(r[col], (int, float)) and math.isfinite(r[col]), (key, col, r[col])
        assert r["row"] in stdout  # the printed table names every row
    for key in ("off", "fp", "shuffled"):  # the smoke set ships no Stage I LoRA: the frame query is not run
        assert rows[key]["recall dB"] == "not trained"
    assert rows["fp"]["margin dB"] == pytest.approx(
        rows["fp"]["PSNR dB"] - max(rows[k]["PSNR dB"] for k in ("off", "mean_colour", "last_frame")), abs=2e-3)
    assert rows["off"]["step x"] == 1.0
    assert "Frame Preservation 4x4x2 (LR only, untrained)" in stdout and "PackForcing" in stdout
    assert stem.with_name(stem.name + ".png").stat().st_size > 0
    assert not stem.with_name(stem.name + "_partial.json").exists()


def test_context_counts_follow_each_design(bench):
    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import tokens_per_second

    data, _, _ = bench
    ctx = {k: a["context"] for k, a in data["arms"].items() if k != "references"}
    lab = {k: {s: c["lab"][s] for s in SECONDS} for k, c in ctx.items()}
    for s in SECONDS:
        assert lab["off"][s]["tokens"] == 0 < lab["sliding"][s]["tokens"]
    pack = [lab["pack_forcing"][s]["tokens"] for s in SECONDS]
    assert pack[1] == pack[2] and lab["pack_forcing"]["120"]["carried"] > pack[2]  # bounded after top-K selection
    for key in ("fp", "fp_4x4x2", "fp_2x2x2"):
        fp = [lab[key][s]["tokens"] for s in SECONDS]
        assert fp[0] < fp[1] < fp[2], (key, fp)
        cfg = EncoderConfig(dim=128, rate=ctx[key]["config"]["rate"])
        assert fp[0] == tokens_per_second(cfg, 128, 256, 16.0) * 20  # the grid module's own count
    state = [lab["video_ssm"][s]["state_floats"] for s in SECONDS]
    assert state[0] > 0 and len(set(state)) == 1 and ctx["video_ssm"]["state_numel"] == state[0]
    wan = [ctx["video_ssm"]["wan480"][s]["state_floats"] for s in SECONDS]
    assert wan == [30 * 12 * 128 * 64] * 3  # Wan 2.1 1.3B: 30 blocks x 12 heads x dv 128 x dk 64
    for key in ("off", "sliding", "video_ssm"):  # the inference code on synthetic histories agrees with the counts
        for s in SECONDS:
            assert ctx[key]["measured"][s] == {k: lab[key][s][k] for k in ("tokens", "state_floats")}, (key, s)


def test_reported_tokens_match_and_rss(bench):
    data, _, _ = bench
    for key, arm in data["arms"].items():
        for clip, q in arm["quality"].items():
            if key == "references":
                assert set(q["references"]) == set(REFERENCES)
                continue
            assert q["token_check"]["checked"] >= 1 and q["token_check"]["mismatches"] == [], (key, clip, q)
        assert arm["peak_rss_mb"] > 0 and arm["returncode"] == 0
    assert data["arms"]["shuffled"]["quality"]["bikes.mp4"]["history_from"] == "tree.avi"
