"""benchmarks/revisit.py --quick on the lab recipe's smoke set (the session's ``smoke_lab``): the leave-and-return
benchmark end to end in CI (issue 22). A 13-frame shot A of tree.avi, a 1 s cutaway of bikes, a 1 s return, 128x64,
2 Euler steps: every row of the table is there (a row whose files a lab set lacks says "not trained"), every memory row
has its margin over the best trivial row, the reference rows and the shuffled control are scored, and the retrieval
ranks 10 candidates. The smoke models are barely trained: the numbers themselves mean nothing."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def bench(smoke_lab, tmp_path_factory, repo_root):
    stem = tmp_path_factory.mktemp("revisit") / "revisit"
    cmd = [sys.executable, str(repo_root / "benchmarks" / "revisit.py"), "--quick", "--lab-dir", str(smoke_lab),
           "--out", str(stem)]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(stem.with_name("revisit.json").read_text()), proc.stdout, stem


def test_every_row_reference_and_control(bench):
    data, stdout, stem = bench
    rows = {r["key"]: r for r in data["rows"]}
    ran = ("off", "sliding", "fp", "fp_4x4x2", "pack_forcing", "video_ssm", "shuffled")  # the smoke set has every file
    assert set(rows) == {*ran, "mean_colour", "last_frame", "last_frame_vae", "vae_ceiling"}
    assert "not trained" not in stdout
    for key, r in rows.items():
        for col in ("psnr_db", "thumb_psnr_db", "ssim", "retrieval_top1"):
            assert isinstance(r[col], float) and math.isfinite(r[col]), (key, col)
        assert r["runs"] == 1 and r["row"] in stdout
    for key in ("sliding", "fp", "fp_4x4x2", "pack_forcing", "video_ssm", "shuffled"):
        assert math.isfinite(rows[key]["margin dB"]) and rows[key]["won"] in ("0/1", "1/1")
    # the off arm runs the no-memory LoRA trained on the same data and steps (issue 23), and says so
    assert data["names"]["off"] == "off (no-memory LoRA)"
    assert stem.with_name("revisit.png").stat().st_size > 0 and not stem.with_name("revisit_partial.json").exists()


def test_scores_per_seed_and_margin_rule(bench):
    data, _, _ = bench
    (family, gaps), = data["results"].items()
    assert family == "cutaway:tree.avi"
    res = gaps["1.0"]
    assert res["history_frames"] == 13 + 16 and res["return_frames"] == 16 and len(res["pool"]) == 8
    run = res["seeds"]["0"]
    assert all(run[k]["retrieval_rank"] in range(1, 11) for k in run)  # A, the cutaway and 8 other held-out shots
    best = max(run[k]["psnr_db"] for k in ("off", "mean_colour", "last_frame"))
    margin = next(r for r in data["rows"] if r["key"] == "fp")["margin dB"]
    assert margin == pytest.approx(run["fp"]["psnr_db"] - best, abs=2e-3)
    shots = [line.split(" | ") for line in res["storyboard"].splitlines()]  # A, the cutaway, A's return
    assert [float(t) for t, _ in shots] == [round(13 / 16, 3), 1.0, 1.0]
    assert shots[0][1] == shots[2][1] != shots[1][1]  # A's prompt returns with A', the cutaway has its own


def test_a_row_without_its_files_is_not_trained(smoke_lab, repo_root, tmp_path, monkeypatch):
    """A lab set without the 4x4x2 encoder: that row is reported "not trained", naming the missing file; the other
    rows keep their files."""
    import shutil

    for d in ("benchmarks", "scripts"):
        monkeypatch.syspath_prepend(str(repo_root / d))
    import revisit

    for f in smoke_lab.glob("*.safetensors"):
        if f.name != "framememory_lab_wan21_4x4x2_encoder.safetensors":
            shutil.copy(f, tmp_path / f.name)
    sets = revisit.row_sets(str(tmp_path), ["fp", "fp_4x4x2", "off"])
    assert sets["fp_4x4x2"]["missing"] == ["framememory_lab_wan21_4x4x2_encoder.safetensors"]
    assert not sets["fp"].get("missing") and not sets["off"].get("missing")
