"""The report of the small-scale reproduction (training/reproduce.py): means over seeds, the paper's ordering and
the printed tables."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .reproduce_config import REPO_ROOT, VARIANTS

if TYPE_CHECKING:
    from .reproduce_training import RunContext


def bench_common():
    """``benchmarks/common.py`` (``machine()``, ``print_table()``: the reproduction is one of the benchmarks), loaded
    by path under its own name so that no ``common`` module of another project is picked up."""
    import importlib.util

    name = "framememory_benchmarks_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / "common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def ordering(means: dict) -> dict:
    """The paper's ordering on ``means`` {variant label: value}: each relation -> bool, plus ``all``."""
    lp, olr, wlr = means.get("Large Patchifier 4x4x2"), means.get("Only LR 4x4x2"), means.get("Without LR 4x4x2")
    p4, p2 = means.get("Proposed 4x4x2"), means.get("Proposed 2x2x1")
    rel = {}
    if None not in (lp, olr, wlr, p4, p2):
        rel = {"Large Patchifier < Only LR": lp < olr, "Large Patchifier < Without LR": lp < wlr,
               "Only LR < Proposed 4x4x2": olr < p4, "Without LR < Proposed 4x4x2": wlr < p4,
               "Proposed 4x4x2 < Proposed 2x2x1": p4 < p2}
        rel["all"] = all(rel.values())
    return rel



def variant_means(rows: list[dict]) -> dict:
    """Per variant of :data:`VARIANTS` with rows: means over seeds of psnr, ssim, loss, memory_gain, the sample
    standard deviations ``psnr_sd`` / ``ssim_sd`` (0 with one seed) and ``seeds``."""
    means = {}
    for lab in [f"{n} {r}" for n, r, _ in VARIANTS]:
        sel = [r for r in rows if r["variant"] == lab]
        if sel:
            means[lab] = {k: sum(r[k] for r in sel) / len(sel) for k in ("psnr", "ssim", "loss", "memory_gain")}
            for k in ("psnr", "ssim"):  # sample standard deviation over seeds (0 with one seed)
                dev = [(r[k] - means[lab][k]) ** 2 for r in sel]
                means[lab][f"{k}_sd"] = (sum(dev) / (len(sel) - 1)) ** 0.5 if len(sel) > 1 else 0.0
            means[lab]["seeds"] = len(sel)
    return means


def orderings(means: dict) -> dict:
    """The paper's ordering (:func:`ordering`) on the mean PSNR, SSIM and held-out loss (lower = better):
    ``{"psnr", "ssim", "loss"}``."""
    return {"psnr": ordering({k: v["psnr"] for k, v in means.items()}),
            "ssim": ordering({k: v["ssim"] for k, v in means.items()}),
            "loss": ordering({k: -v["loss"] for k, v in means.items()})}  # lower held-out loss = better


def stage2_means(stage2_rows: list[dict]) -> dict:
    """Mean held-out next-segment loss per Stage II arm over seeds."""
    s2_means = {}
    for r in stage2_rows:
        s2_means.setdefault(r["arm"], []).append(r["heldout_loss"])
    return {k: sum(v) / len(v) for k, v in s2_means.items()}


def print_report(ctx: RunContext, seeds, rows: list[dict], means: dict, orders: dict, stage2_rows: list[dict],
                  wall: float) -> None:
    """Print the tables of the run (frame retrieval, means over seeds, orderings, Stage II) and the wall time."""
    p = ctx.p
    bench = bench_common()
    print()
    print(f"Frame retrieval on held-out clips ({len(ctx.eval1_items)} histories x {p.eval_queries} queries, "
          f"{p.eval_steps} Euler steps; PSNR dB / SSIM vs the original frames), preset {ctx.preset_name}:")
    bench.print_table(rows, ["variant", "rate", "tokens", "psnr", "ssim", "loss", "memory_gain", "train_s", "seed"],
                      digits=3)
    print("(loss: held-out Stage I velocity MSE on a fixed t grid with the clip's own memory; memory_gain: the same "
          "loss with another clip's memory minus it)")
    if len(seeds) > 1:
        print("\nMeans over seeds:")
        bench.print_table([{"variant": k, **v} for k, v in means.items()],
                          ["variant", "psnr", "psnr_sd", "ssim", "ssim_sd", "loss", "memory_gain", "seeds"], digits=3)
    order_psnr, order_ssim, order_loss = orders["psnr"], orders["ssim"], orders["loss"]
    print(f"\nPaper ordering (PSNR) Large Patchifier < Only LR / Without LR < Proposed 4x4x2 < Proposed 2x2x1: "
          f"{'holds' if order_psnr.get('all') else 'does NOT hold'} {order_psnr}")
    print(f"Same ordering on SSIM: {'holds' if order_ssim.get('all') else 'does NOT hold'} {order_ssim}")
    print(f"Same ordering on the held-out Stage I loss (lower = better): "
          f"{'holds' if order_loss.get('all') else 'does NOT hold'} {order_loss}")
    if stage2_rows:
        print("\nStage II held-out next-segment loss (lower is better):")
        bench.print_table(stage2_rows, ["arm", "rate", "heldout_loss_before", "heldout_loss", "train_s", "seed"],
                          digits=3)
    print(f"\nwall time {wall:.0f} s")

