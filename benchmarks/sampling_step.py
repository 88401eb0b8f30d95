"""Benchmark 3: one DiT step with and without memory tokens; measured time ratio vs FLOP ratio.

Usage:
  python benchmarks/sampling_step.py --preset cpu-small     # CPU: real 1.3B width, 2 blocks, 256x128
  python benchmarks/sampling_step.py --preset gpu-480p      # GPU: Wan 2.1 1.3B real shapes, bf16, 832x480
  python benchmarks/sampling_step.py --preset gpu-480p-14b  # GPU: Wan 2.1 14B real shapes (bf16 compute)
  nice -n 5 python benchmarks/sampling_step.py --preset cpu-480p --repeats 1  # CPU: one real-width block at 832x480
                                                                              # (1.3B and 14B) + the pack's overhead
                                                                              # (sampling_step_480p.py)

Runs ComfyUI's own ``WanModel`` (random weights) through the product path: the memory wrapper and per-block
patches of ``models/wan.py`` with memory tokens as the Storyboard passes them. Cases: no memory; 20 s and 60 s of
history at 4x4x2 and 2x2x2; the full uncompressed 20 s history. FLOPs are counted from the model's shapes: every
block's linear layers see N + M tokens, self-attention (N + M)^2, cross-attention (N + M) x text length.
Targets (issue 5): measured time ratio <= 1.15 x FLOP ratio; memory step >= 50x faster than the full 20 s history.
Prints a table and writes benchmarks/results/sampling_step_<preset>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from common import print_table, write_result

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=[*PRESETS, "cpu-480p"], default="cpu-small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true", help="skip the uncompressed 20 s history case")
    ap.add_argument("--attention", choices=["auto", "sage", "sdpa"], default="sdpa",
                    help="attention backend (benchmark 5: run once with sage, once with sdpa); sage falls back to SDPA "
                         "with a one-line notice without CUDA or sageattention")
    ap.add_argument("--widths", nargs="+", choices=["1.3b", "14b"], default=["1.3b", "14b"],
                    help="cpu-480p only: the Wan 2.1 widths whose block is measured")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(os.environ.get("COMFYUI_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "ComfyUI"))))
    if args.preset == "cpu-480p":
        import sampling_step_480p

        return sampling_step_480p.run(args, step_flops)
    p = PRESETS[args.preset]
    import comfy.cli_args

    comfy.cli_args.args.cpu = p["device"] == "cpu"
    import torch
    import comfy.ops
    import comfy.patcher_extension
    from comfy.ldm.wan.model import WanModel

    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid, memory_positions
    from framememory.models import wan as adapter
    from framememory.models.attention import attention_override, resolve_attention

    backend, notice = resolve_attention(args.attention)
    if notice:
        print(notice)

    dev, dtype = torch.device(p["device"]), getattr(torch, p["dtype"])
    torch.manual_seed(0)
    dm = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=TEXT_LEN, in_dim=16, dim=p["dim"], ffn_dim=p["ffn"],
                  freq_dim=256, text_dim=4096, out_dim=16, num_heads=p["heads"], num_layers=p["layers"],
                  qk_norm=True, cross_attn_norm=True, operations=comfy.ops.manual_cast, device=dev, dtype=dtype)
    with torch.no_grad():
        for prm in dm.parameters():
            prm.normal_(0, 0.02)
    dm.eval()
    h8, w8 = p["height"] // 8, p["width"] // 8
    seg_t = 4  # 1 s segment = 4 latent frames (16 frames of the continuous stream)
    n = seg_t * (h8 // 2) * (w8 // 2)
    x = torch.randn(1, 16, seg_t, h8, w8, device=dev, dtype=dtype)
    ctx = torch.randn(1, TEXT_LEN, 4096, device=dev, dtype=dtype) * 0.1
    ts = torch.tensor([500.0], device=dev)
    opts = {
        "patches_replace": {"dit": {("double_block", i): adapter._block_patch(i, p["layers"]) for i in range(p["layers"])}},
        "wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {adapter.PATCH_KEY: [adapter._diffusion_wrapper]}},
        "optimized_attention_override": attention_override(backend),
    }

    def memory(seconds: int, rate: str):
        lat = (seconds * p["fps"] - 1) // 4 + 1
        cfg = EncoderConfig(dim=p["dim"], rate=rate)
        grid = memory_grid((lat, h8, w8), cfg)
        pos = memory_positions(grid, cfg, t_start=-lat)
        tok = torch.randn(1, pos.shape[0], p["dim"], device=dev, dtype=dtype) * 0.5
        return tok, (pos[None] * 2).round().long().to(dev)

    cases = [("no memory", None, None), ("20s 4x4x2", 20, "4x4x2"), ("60s 4x4x2", 60, "4x4x2"),
             ("20s 2x2x2", 20, "2x2x2"), ("60s 2x2x2", 60, "2x2x2")]
    if not args.skip_full:
        cases.append(("20s full (1x1x1)", 20, "1x1x1"))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for name, secs, rate in cases:
        kw = {}
        if secs:
            tok, pos2 = memory(secs, rate)
            kw = {"memory_tokens": tok, "memory_positions2": pos2}
        m = kw["memory_tokens"].shape[1] if kw else 0
        peak = None
        try:
            with torch.no_grad():
                dm(x, ts, ctx, transformer_options=opts, **kw)  # warm-up
                sync()
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    dm(x, ts, ctx, transformer_options=opts, **kw)
                    sync()
                    times.append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peak = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            sec = sorted(times)[len(times) // 2]
        except torch.OutOfMemoryError:
            sec = None
        rows.append({"case": name, "N": n, "M": m, "step_s": None if sec is None else round(sec, 4),
                     "flop_ratio": round(step_flops(p["dim"], p["ffn"], p["layers"], n + m) / step_flops(p["dim"], p["ffn"], p["layers"], n), 3),
                     "peak_gib": peak})
        print(f"  {name}: M={m} {rows[-1]['step_s']} s", flush=True)
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
    print("written:", write_result(f"sampling_step_{args.preset}_{backend}", rows, {"preset": p, "attention": backend}))


if __name__ == "__main__":
    main()
