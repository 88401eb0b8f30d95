"""Benchmark 3: one DiT step with and without memory tokens; measured time ratio vs FLOP ratio.

Usage:
  python benchmarks/sampling_step.py --preset cpu-small     # CPU: real 1.3B width, 2 blocks, 256x128
  python benchmarks/sampling_step.py --preset gpu-480p      # GPU: Wan 2.1 1.3B real shapes, bf16, 832x480
  python benchmarks/sampling_step.py --preset gpu-480p-14b  # GPU: Wan 2.1 14B real shapes (bf16 compute)
  nice -n 5 python benchmarks/sampling_step.py --preset cpu-480p --repeats 1  # CPU: one real-width block at 832x480
                                                                              # (1.3B and 14B) + the pack's overhead
                                                                              # (sampling_step_480p.py)

Runs ComfyUI's own ``WanModel`` (random weights) through the product path: the memory wrapper and per-block
patches of ``models/families/wan21.py`` with memory tokens as the Storyboard passes them. Cases: no memory; 20 s and 60 s of
history at 4x4x2 and 2x2x2; the full uncompressed 20 s history. FLOPs are counted from the model's shapes: every
block's linear layers see N + M tokens, self-attention (N + M)^2, cross-attention (N + M) x text length.
Targets (issue 5): measured time ratio <= 1.15 x FLOP ratio; memory step >= 50x faster than the full 20 s history.
Prints a table and writes benchmarks/results/sampling_step_<preset>.json.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Literal

import tyro

from common import print_table, write_result
from framememory.headless.comfy_import import import_comfyui

PRESETS = {  # dim, ffn, heads, layers, width, height, fps, dtype, device
    "cpu-small": dict(dim=1536, ffn=8960, heads=12, layers=2, width=256, height=128, fps=16, dtype="float32", device="cpu"),
    "gpu-480p": dict(dim=1536, ffn=8960, heads=12, layers=30, width=832, height=480, fps=16, dtype="bfloat16", device="cuda"),
    "gpu-480p-14b": dict(dim=5120, ffn=13824, heads=40, layers=40, width=832, height=480, fps=16, dtype="bfloat16", device="cuda"),
}
TEXT_LEN = 512


def step_flops(dim: int, ffn: int, layers: int, tokens: int, text_len: int = TEXT_LEN) -> float:
    """Multiply-adds x 2 of one forward through the blocks (embeddings and head are the same for all cases)."""
    linear = tokens * (4 * dim * dim + 2 * dim * dim + 2 * dim * ffn)  # self qkvo, cross q/o, ffn
    attn = 2 * tokens * tokens * dim + 2 * tokens * text_len * dim  # QK^T + AV (self), same for cross
    return 2.0 * layers * (linear + attn)


@dataclasses.dataclass(frozen=True)
class Args:
    """Benchmark 3: one DiT step with and without memory tokens; measured time ratio vs FLOP ratio."""

    preset: Literal["cpu-small", "gpu-480p", "gpu-480p-14b", "cpu-480p"] = "cpu-small"
    """model size and device (module docstring); cpu-480p: sampling_step_480p.py"""
    repeats: int = 3
    """timed forwards per case (the median is reported)"""
    skip_full: bool = False
    """skip the uncompressed 20 s history case"""
    attention: Literal["auto", "sage", "sdpa"] = "sdpa"
    """attention backend (benchmark 5: run once with sage, once with sdpa); sage falls back to SDPA with a one-line
    notice without CUDA or sageattention"""
    widths: tuple[Literal["1.3b", "14b"], ...] = ("1.3b", "14b")
    """cpu-480p only: the Wan 2.1 widths whose block is measured"""


def build_model(p: dict):
    """ComfyUI's ``WanModel`` of preset ``p`` (random weights N(0, 0.02), eval mode) on ``p["device"]``."""
    import torch
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    dev, dtype = torch.device(p["device"]), getattr(torch, p["dtype"])
    torch.manual_seed(0)
    dm = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=TEXT_LEN, in_dim=16, dim=p["dim"], ffn_dim=p["ffn"],
                  freq_dim=256, text_dim=4096, out_dim=16, num_heads=p["heads"], num_layers=p["layers"],
                  qk_norm=True, cross_attn_norm=True, operations=comfy.ops.manual_cast, device=dev, dtype=dtype)
    with torch.no_grad():
        for prm in dm.parameters():
            prm.normal_(0, 0.02)
    return dm.eval()


def product_options(dm, backend: str) -> dict:
    """``transformer_options`` of the product path: the memory patches on ``dm`` (``families.install_memory``: the Wan
    per-block patches and memory wrapper), and the attention ``backend``."""
    from framememory.models.attention import attention_override
    from framememory.models.families import install_memory

    return {**install_memory(dm), "optimized_attention_override": attention_override(backend)}


def memory_kwargs(p: dict, seconds: int | None, rate: str | None, dev, dtype) -> dict:
    """The forward kwargs of ``seconds`` of history at ``rate``: random tokens ``[1, M, dim]`` at their real positions
    (``memory_positions2`` ``[1, M, 3]`` int64); ``{}`` without history."""
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid, memory_positions

    if not seconds:
        return {}
    lat = (seconds * p["fps"] - 1) // 4 + 1
    cfg = EncoderConfig(dim=p["dim"], rate=rate)
    grid = memory_grid((lat, p["height"] // 8, p["width"] // 8), cfg)
    pos = memory_positions(grid, cfg, t_start=-lat)
    tok = torch.randn(1, pos.shape[0], p["dim"], device=dev, dtype=dtype) * 0.5
    return {"memory_tokens": tok, "memory_positions2": (pos[None] * 2).round().long().to(dev)}


def time_step(dm, inputs: tuple, opts: dict, kw: dict, repeats: int) -> tuple[float | None, float | None]:
    """``(median seconds of one forward over repeats, peak GiB on CUDA)`` after one warm-up; ``(None, None)`` when the
    card runs out of memory."""
    import torch

    dev = inputs[0].device

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    try:
        with torch.no_grad():
            dm(*inputs, transformer_options=opts, **kw)  # warm-up
            sync()
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                dm(*inputs, transformer_options=opts, **kw)
                sync()
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return None, None
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None
    return sorted(times)[len(times) // 2], peak


def measure_cases(p: dict, backend: str, repeats: int, skip_full: bool) -> list[dict]:
    """One row per case (no memory, 20 / 60 s at 4x4x2 and 2x2x2, the full 20 s history unless ``skip_full``): the
    step time, memory tokens M, video tokens N, FLOP ratio against no memory and the CUDA peak."""
    import torch

    dm = build_model(p)
    dev, dtype = torch.device(p["device"]), getattr(torch, p["dtype"])
    h8, w8 = p["height"] // 8, p["width"] // 8
    seg_t = 4  # 1 s segment = 4 latent frames (16 frames of the continuous stream)
    n = seg_t * (h8 // 2) * (w8 // 2)
    x = torch.randn(1, 16, seg_t, h8, w8, device=dev, dtype=dtype)
    ctx = torch.randn(1, TEXT_LEN, 4096, device=dev, dtype=dtype) * 0.1
    ts = torch.tensor([500.0], device=dev)
    opts = product_options(dm, backend)
    cases = [("no memory", None, None), ("20s 4x4x2", 20, "4x4x2"), ("60s 4x4x2", 60, "4x4x2"),
             ("20s 2x2x2", 20, "2x2x2"), ("60s 2x2x2", 60, "2x2x2")]
    if not skip_full:
        cases.append(("20s full (1x1x1)", 20, "1x1x1"))
    rows = []
    for name, secs, rate in cases:
        kw = memory_kwargs(p, secs, rate, dev, dtype)
        m = kw["memory_tokens"].shape[1] if kw else 0
        sec, peak = time_step(dm, (x, ts, ctx), opts, kw, repeats)
        rows.append({"case": name, "N": n, "M": m, "step_s": None if sec is None else round(sec, 4),
                     "flop_ratio": round(step_flops(p["dim"], p["ffn"], p["layers"], n + m) / step_flops(p["dim"], p["ffn"], p["layers"], n), 3),
                     "peak_gib": peak})
        print(f"  {name}: M={m} {rows[-1]['step_s']} s", flush=True)
    return rows


def report(rows: list[dict]) -> None:
    """Add the time ratios to ``rows``, print the table and the two targets of issue 5."""
    base = rows[0]["step_s"]
    for r in rows:
        r["time_ratio"] = None if r["step_s"] is None else round(r["step_s"] / base, 3)
        r["time/flop"] = None if r["step_s"] is None else round(r["time_ratio"] / r["flop_ratio"], 3)
    print_table(rows, ["case", "N", "M", "step_s", "time_ratio", "flop_ratio", "time/flop", "peak_gib"])
    worst = max(r["time/flop"] for r in rows if r["time/flop"] is not None)
    print(f"\ntarget: time ratio <= 1.15 x FLOP ratio: worst {worst} ({'met' if worst <= 1.15 else 'MISSED'})")
    full = next((r for r in rows if r["case"].startswith("20s full")), None)
    mem20 = next(r for r in rows if r["case"] == "20s 4x4x2")
    if full and full["step_s"]:
        speedup = round(full["step_s"] / mem20["step_s"], 1)
        print(f"target: 20 s at 4x4x2 >= 50x faster than the full 20 s history: {speedup}x "
              f"({'met' if speedup >= 50 else 'MISSED'}; FLOP ratio {round(full['flop_ratio'] / mem20['flop_ratio'], 1)}x)")


def main(args: Args) -> None:
    if args.preset == "cpu-480p":
        import sampling_step_480p

        return sampling_step_480p.run(args, step_flops)
    p = PRESETS[args.preset]
    import_comfyui(cpu=p["device"] == "cpu")
    from framememory.models.attention import resolve_attention

    backend, notice = resolve_attention(args.attention)
    if notice:
        print(notice)
    rows = measure_cases(p, backend, args.repeats, args.skip_full)
    report(rows)
    print("written:", write_result(f"sampling_step_{args.preset}_{backend}", rows, {"preset": p, "attention": backend}))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
