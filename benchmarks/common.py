"""Shared helpers of the benchmarks: machine description, result files, text tables. The pack itself is the
installed package ``framememory`` (``pip install -e .``, done by scripts/setup.sh); ``scripts/`` goes on sys.path
for the main job's evaluation module ``example_eval`` (long_run.py, memory_modes.py)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def machine() -> dict:
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, rows: list[dict], extra: dict | None = None) -> str:
    out = os.path.join(ROOT, "benchmarks", "results", f"{name}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"benchmark": name, "machine": machine(), "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                   **(extra or {}), "rows": rows}, f, indent=2)
    return out


def print_table(rows: list[dict], cols: list[str], digits: int | None = None) -> None:
    """Print ``rows`` as a text table of the columns ``cols``; ``digits``: floats rounded to that many decimals."""
    def fmt(v) -> str:
        return f"{v:.{digits}f}" if digits is not None and isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
