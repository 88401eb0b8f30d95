"""Benchmark 2: time to append 1 s of history when the history is 1, 5, 20, 60 s long (CPU, small resolution).

Usage: python benchmarks/encode_append.py [--width 256 --height 128 --repeats 3]

Runs the product path (models.encoding.encode_pending: LR branch through the VAE and the DiT's own
patch_embedding, HR branch with the real widths 64..512 -> D=1536) on a DiT of Wan 2.1 1.3B width (1 block:
only patch_embedding is used) and the tiny Wan VAE (base width 8; the real VAE is ~12x wider), then gathers the
memory for the next segment (``HistoryBuffer.memory``). History segments are 4 latent frames of random latents
in one continuous stream (13 frames for the first, then 16 = 1 s at 16 fps), so "append 1 s" appends and encodes 1
segment per repeat (its LR latent continues the history's LR VAE stream) and reports per-second time (minimum over round-robin repeats: the intrinsic cost, robust to other load). Target (issue 5): time(60 s history) / time(1 s history) <= 1.2.
"""
from __future__ import annotations

import dataclasses
import time

import tyro

from common import print_table, write_result
from framememory.headless.comfy_import import import_comfyui


SEG_FRAMES, FPS = 16, 16.0  # a segment continuing the stream (the stream's first: 13 frames)
LENGTHS = (1, 5, 20, 60)  # history seconds


@dataclasses.dataclass(frozen=True)
class Args:
    """Benchmark 2: time to append 1 s of history when the history is 1, 5, 20, 60 s long."""

    width: int = 256
    """frame width (pixels)"""
    height: int = 128
    """frame height (pixels)"""
    repeats: int = 5
    """appends timed per history length (round-robin)"""


def build_models():
    """``(MODEL, VAE, memory encoder)``: a one-block DiT of Wan 2.1 1.3B width (only its patch embedding runs), the
    tiny Wan VAE and a D=1536 encoder with the real HR widths, random weights (seed 0)."""
    import torch
    import comfy.sd

    from framememory.demo.tiny_models import tiny_wan21_dit, tiny_wan21_vae
    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.encoding import MemoryEncoder

    torch.manual_seed(0)
    dit = tiny_wan21_dit(dim=1536, num_heads=12, num_layers=1, ffn_dim=256)
    model = comfy.sd.load_diffusion_model_state_dict({k: v for k, v in dit.state_dict().items()})
    vae = comfy.sd.VAE(sd=tiny_wan21_vae().state_dict())
    cfg = EncoderConfig(dim=1536)
    net = HistoryEncoder(cfg)
    with torch.no_grad():
        net.hr.proj.weight.normal_(0, 0.02)
    return model, vae, MemoryEncoder(cfg, net.state_dict(), "benchmark-random")


def histories(models: tuple, segment) -> dict:
    """``{seconds: HistoryBuffer}`` of every length in :data:`LENGTHS`, encoded once (not timed), after three warm-up
    appends (first calls pay allocator / kernel-selection costs). ``segment(hist)``: a new segment's inputs."""
    from framememory.memory.history import HistoryBuffer
    from framememory.models.encoding import encode_pending

    warm = HistoryBuffer()
    for _ in range(3):
        warm.append(*segment(warm))
        encode_pending(*models, warm)
    hists = {}
    for seconds in LENGTHS:
        hist = HistoryBuffer()
        for _ in range(max(1, round(seconds * FPS / SEG_FRAMES))):
            hist.append(*segment(hist))
        encode_pending(*models, hist)
        hists[seconds] = hist
    return hists


def time_appends(models: tuple, hists: dict, segment, repeats: int) -> dict:
    """``{seconds: [(append + encode + gather, encode, gather) seconds]}``: one segment appended ``repeats`` times to
    every history, round-robin (background load hits every history length alike)."""
    from framememory.models.encoding import encode_pending

    times = {s: [] for s in LENGTHS}
    for _ in range(repeats):
        for seconds in LENGTHS:
            hist = hists[seconds]
            lat, frames = segment(hist)
            t0 = time.perf_counter()
            hist.append(lat, frames)
            n = encode_pending(*models, hist)
            t1 = time.perf_counter()
            tokens, positions = hist.memory()
            times[seconds].append((time.perf_counter() - t0, t1 - t0, time.perf_counter() - t1))
            assert n == 1
    return times


def table(hists: dict, times: dict) -> list[dict]:
    """One row per history length: minimum and median times, per segment and per second, and the ratio to 1 s."""
    rows = []
    for seconds in LENGTHS:
        ts = sorted(times[seconds])
        best, med = ts[0], ts[len(ts) // 2]
        rows.append({"history_s": seconds, "history_tokens": hists[seconds].num_tokens, "encode_s_min": round(best[1], 4),
                     "gather_s_min": round(min(t[2] for t in ts), 5), "append_segment_s_min": round(best[0], 4),
                     "append_segment_s_median": round(med[0], 4), "append_1s_s": round(best[0] * FPS / SEG_FRAMES, 4)})
    base = rows[0]["append_1s_s"]
    for r in rows:
        r["ratio_vs_1s"] = round(r["append_1s_s"] / base, 3)
    return rows


def main(args: Args) -> None:
    import_comfyui(cpu=True)
    import torch

    models = build_models()
    h8, w8 = args.height // 8, args.width // 8

    def segment(hist):
        frames = SEG_FRAMES if hist.segments else SEG_FRAMES - 3
        return torch.randn(1, 16, 4, h8, w8), torch.rand(frames, args.height, args.width, 3)

    hists = histories(models, segment)
    rows = table(hists, time_appends(models, hists, segment, args.repeats))
    print_table(rows, ["history_s", "history_tokens", "encode_s_min", "gather_s_min", "append_segment_s_min", "append_segment_s_median", "append_1s_s", "ratio_vs_1s"])
    ratio = rows[-1]["ratio_vs_1s"]
    print(f"\ntarget: 60 s / 1 s append-time ratio <= 1.2: {ratio} ({'met' if ratio <= 1.2 else 'MISSED'}) "
          f"at {args.width}x{args.height}, D=1536, real HR widths, tiny VAE")
    print("written:", write_result("encode_append", rows, {"width": args.width, "height": args.height, "target_ratio": 1.2}))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
