"""benchmarks/sampling_step_480p.py (preset cpu-480p of sampling_step.py): the memory it feeds the block has the 480p
sizes of docs/design.md section 1 (182 tokens per second at 4x4x2 for a continuous history, 6240 full), at past times,
and the ratios and targets it reports are computed against each width's own no-memory row."""
from __future__ import annotations

import sys

import pytest
import torch


@pytest.fixture(scope="module")
def bench(repo_root):
    sys.path.insert(0, str(repo_root / "benchmarks"))
    import sampling_step_480p

    return sampling_step_480p


def test_memory_of_each_case_has_the_480p_size_at_past_times(bench):
    sizes = {}
    for name, seconds, rate in bench.CASES[1:] + [bench.FULL_CASE]:
        kw = bench.memory_kwargs(16, seconds, rate)  # the sizes do not depend on the width
        tokens, pos2 = kw["memory_tokens"], kw["memory_positions2"]
        lat = (seconds * bench.FPS - 1) // 4 + 1  # latent frames of a continuous history
        assert tokens.shape == (1, pos2.shape[1], 16) and pos2.dtype == torch.long
        assert (pos2[..., 0] < 0).all() and (pos2[..., 0] >= -2 * lat).all()  # twice the time: within the past
        sizes[name] = tokens.shape[1]
    assert sizes == {"20s 4x4x2": 20 * 182, "60s 4x4x2": 60 * 182, "120s 4x4x2": 120 * 182,
                     "20s 2x2x2": 20 * 780, "20s full (1x1x1)": 80 * 1560}  # full: 80 latent frames x 30 x 52


def test_ratios_and_targets_are_per_width(bench):
    rows = [{"width": "1.3b", "case": "no memory", "block_s": 2.0, "flop_ratio": 1.0},
            {"width": "1.3b", "case": "20s 4x4x2", "block_s": 4.0, "flop_ratio": 1.6},
            {"width": "14b", "case": "no memory", "block_s": 10.0, "flop_ratio": 1.0},
            {"width": "14b", "case": "20s 4x4x2", "block_s": 16.0, "flop_ratio": 2.0},
            {"width": "1.3b", "case": bench.FULL_CASE[0], "block_s": 80.0, "flop_ratio": 64.0}]
    bench.add_ratios(rows)
    assert [r["time_ratio"] for r in rows] == [1.0, 2.0, 1.0, 1.6, 40.0]
    got = bench.targets(rows)
    assert got["worst_time_per_flop_1.3b"] == 1.25 and got["worst_time_per_flop_14b"] == 1.0
    assert got["speedup_vs_full"] == 20.0 and got["flop_speedup_vs_full"] == 40.0 and got["speedup_per_flop_speedup"] == 0.5
