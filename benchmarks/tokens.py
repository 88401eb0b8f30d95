"""Benchmark 1: memory tokens for 1, 5, 20, 60 s of 480p history per model family and rate.

Usage: python benchmarks/tokens.py      (prints a table, writes benchmarks/results/tokens.json)

Two counts per row:
- ``continuous``: the history as one video (F = seconds * fps frames, causal VAE: (F - 1) // 4 + 1 latent frames);
- ``segments``: the history as the storyboard loop holds it: segments of 4 latent frames, each decoded on its
  own to 13 frames, so a second holds fps / 13 segments (16/13 = 1.23x more latent frames than continuous).
Target (issue 5): 20 s at 4x4x2 on Wan 2.1 <= 3900 tokens.
"""
from __future__ import annotations

from common import import_pack, print_table, write_result

FAMILIES = {  # name: (width, height, fps, DiT width, vae stride, patch)
    "wan21_1.3b": (832, 480, 16, 1536, (4, 8, 8), (1, 2, 2)),
    "wan21_14b": (832, 480, 16, 5120, (4, 8, 8), (1, 2, 2)),
    "wan22_5b": (832, 480, 24, 3072, (4, 16, 16), (1, 2, 2)),
    "hunyuan_video": (848, 480, 24, 3072, (4, 8, 8), (1, 2, 2)),
}
RATES = ["1x1x1", "2x2x1", "2x2x2", "2x2x4", "4x4x2", "2x2x8"]
SECONDS = [1, 5, 20, 60]


def main() -> None:
    import_pack()
    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid

    rows = []
    for fam, (w, h, fps, dim, vs, ps) in FAMILIES.items():
        for rate in RATES:
            cfg = EncoderConfig(dim=dim, rate=rate, vae_stride=vs, patch_size=ps)
            row = {"family": fam, "rate": rate, "res": f"{w}x{h}@{fps}"}
            for s in SECONDS:
                frames = s * fps
                lat = (frames - 1) // vs[0] + 1
                tm, hm, wm = memory_grid((lat, h // vs[1], w // vs[2]), cfg)
                seg_frames = vs[0] * 3 + 1
                n_seg = frames // seg_frames
                tms, _, _ = memory_grid((4, h // vs[1], w // vs[2]), cfg)
                row[f"{s}s"] = tm * hm * wm
                row[f"{s}s_seg"] = n_seg * tms * hm * wm
            rows.append(row)
    cols = ["family", "rate", "res"] + [f"{s}s" for s in SECONDS] + [f"{s}s_seg" for s in SECONDS]
    print_table(rows, cols)
    wan = next(r for r in rows if r["family"] == "wan21_1.3b" and r["rate"] == "4x4x2")
    ok = wan["20s"] <= 3900
    print(f"\ntarget: Wan 2.1 20 s at 4x4x2 <= 3900 tokens: continuous {wan['20s']} ({'met' if ok else 'MISSED'}), "
          f"as storyboard segments {wan['20s_seg']} ({'met' if wan['20s_seg'] <= 3900 else 'MISSED'})")
    print("written:", write_result("tokens", rows, {"target_20s_4x4x2": 3900}))


if __name__ == "__main__":
    main()
