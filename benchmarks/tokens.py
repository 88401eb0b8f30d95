"""Benchmark 1: memory tokens for 1, 5, 20, 60, 120 s of 480p history per model family and rate.

Usage: python benchmarks/tokens.py      (prints a table, writes benchmarks/results/tokens.json)

Two counts per row:
- ``continuous``: the history as one video (F = seconds * fps frames, causal VAE: (F - 1) // 4 + 1 latent frames);
- ``segments``: the history as the storyboard loop holds it: the segments ``memory.storyboard.plan_segments`` plans
  for that many seconds (one continuous stream: 13 frames, then 16 per 4 latent frames), encoded in groups of whole
  memory time steps as ``HistoryBuffer.groups`` does.
Targets: 20 s at 4x4x2 on Wan 2.1 <= 3900 tokens (3640 expected), 120 s <= 23.4k.
"""
from __future__ import annotations

from common import print_table, write_result

FAMILIES = {  # name: (width, height, fps, DiT width, vae stride, patch)
    "wan21_1.3b": (832, 480, 16, 1536, (4, 8, 8), (1, 2, 2)),
    "wan21_14b": (832, 480, 16, 5120, (4, 8, 8), (1, 2, 2)),
    "wan22_5b": (832, 480, 24, 3072, (4, 16, 16), (1, 2, 2)),
    "hunyuan_video": (848, 480, 24, 3072, (4, 8, 8), (1, 2, 2)),
}
RATES = ["1x1x1", "2x2x1", "2x2x2", "2x2x4", "4x4x2", "2x2x8"]
SECONDS = [1, 5, 20, 60, 120]


def main() -> None:
    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid
    from framememory.memory.storyboard import Shot, plan_segments

    rows = []
    for fam, (w, h, fps, dim, vs, ps) in FAMILIES.items():
        for rate in RATES:
            cfg = EncoderConfig(dim=dim, rate=rate, vae_stride=vs, patch_size=ps)
            row = {"family": fam, "rate": rate, "res": f"{w}x{h}@{fps}"}
            for s in SECONDS:
                frames = s * fps
                lat = (frames - 1) // vs[0] + 1
                tm, hm, wm = memory_grid((lat, h // vs[1], w // vs[2]), cfg)
                plans = plan_segments([Shot(0, "x", 0.0, float(s))], fps, 4, vs[0])
                seg_latents = sum(p.latent_frames for p in plans)  # whole groups of rt latent frames are encoded
                tms, _, _ = memory_grid((seg_latents, h // vs[1], w // vs[2]), cfg)
                row[f"{s}s"] = tm * hm * wm
                row[f"{s}s_seg"] = tms * hm * wm
            rows.append(row)
    cols = ["family", "rate", "res"] + [f"{s}s" for s in SECONDS] + [f"{s}s_seg" for s in SECONDS]
    print_table(rows, cols)
    wan = next(r for r in rows if r["family"] == "wan21_1.3b" and r["rate"] == "4x4x2")
    ok = wan["20s"] <= 3900
    print(f"\ntarget: Wan 2.1 20 s at 4x4x2 <= 3900 tokens: continuous {wan['20s']} ({'met' if ok else 'MISSED'}), "
          f"as storyboard segments {wan['20s_seg']} ({'met' if wan['20s_seg'] <= 3900 else 'MISSED'})")
    print(f"target: Wan 2.1 120 s at 4x4x2 <= 23400 tokens as storyboard segments: {wan['120s_seg']} "
          f"({'met' if wan['120s_seg'] <= 23400 else 'MISSED'})")
    print("written:", write_result("tokens", rows, {"target_20s_4x4x2": 3900, "target_120s_4x4x2": 23400}))


if __name__ == "__main__":
    main()
