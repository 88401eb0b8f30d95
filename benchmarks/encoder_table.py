"""The encoder table of issue 3: family x rate -> tokens per second of 480p history, HR-branch parameter count,
HR encode time per appended second on this CPU at a small resolution, and the incremental-vs-whole difference.

Usage: python benchmarks/encoder_table.py [--repeats 3]   (prints, writes benchmarks/results/encoder_table.json)

Pure torch (memory/ only, real HR widths 64..512, random weights with a non-zero output projection). The LR branch
has no parameters of its own (it is the DiT's VAE and patch embedding); its cost is in benchmarks/encode_append.py.
Small resolution: 256x128 pixels for the 8x-VAE families, 512x256 for Wan 2.2 (16x VAE): the same token grid.
"""
from __future__ import annotations

import dataclasses
import time

import tyro

from common import print_table, write_result

FAMILIES = {  # name: (family, width D, latent channels, vae stride, fps, 480p size, small size)
    "wan21_1.3b": ("wan21", 1536, 16, (4, 8, 8), 16, (832, 480), (256, 128)),
    "wan21_14b": ("wan21", 5120, 16, (4, 8, 8), 16, (832, 480), (256, 128)),
    "wan22_5b": ("wan22", 3072, 48, (4, 16, 16), 24, (832, 480), (512, 256)),
    "hunyuan_video": ("hunyuan_video", 3072, 16, (4, 8, 8), 24, (848, 480), (256, 128)),
}
RATES = ["4x4x2", "2x2x2", "2x2x4", "2x2x1", "2x2x8"]


@dataclasses.dataclass(frozen=True)
class Args:
    """The encoder table of issue 3: family x rate -> tokens per second, HR parameters, encode time."""

    repeats: int = 3
    """timed encodes per family and rate"""


def main(args: Args) -> None:
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder, combine_branches

    def hr_map(enc, lat):  # the HR branch alone (Fig. 2 step 2): [B, D, Tm, Hm, Wm]
        return enc.hr(lat, enc.grid(lat))[0]
    from framememory.memory.grid import tokens_per_second

    torch.manual_seed(0)
    rows = []
    for name, (fam, dim, ch, vs, fps, (w480, h480), (ws, hs)) in FAMILIES.items():
        for rate in RATES:
            cfg = EncoderConfig(family=fam, dim=dim, rate=rate, latent_channels=ch, vae_stride=vs)
            enc = HistoryEncoder(cfg).eval()
            with torch.no_grad():
                enc.hr.proj.weight.normal_(0, 0.02)
            rt = cfg.rate[2]
            seg = max(4, rt)  # latent frames per encoded unit (a 4-frame segment, or a group at 2x2x8)
            lat = torch.randn(1, ch, 3 * seg, hs // vs[1], ws // vs[2])
            with torch.no_grad():
                whole = combine_branches(hr_map(enc, lat), None)
                parts = torch.cat([combine_branches(hr_map(enc, lat[:, :, i * seg:(i + 1) * seg]), None)
                                   for i in range(3)], 1)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    hr_map(enc, lat[:, :, :seg])
                    times.append(time.perf_counter() - t0)
            seconds_per_unit = (vs[0] * seg) / fps  # video seconds one unit of `seg` latent frames stands for
            rows.append({
                "family": name, "rate": rate, "tokens_per_s_480p": round(tokens_per_second(cfg, h480, w480, fps), 1),
                "hr_params_M": round(sum(p.numel() for p in enc.parameters()) / 1e6, 2),
                "encode_ms_per_s": round(min(times) / seconds_per_unit * 1000, 1),
                "inc_vs_whole_maxabs": float(f"{(whole - parts).abs().max().item():.2e}"),
                "small_res": f"{ws}x{hs}",
            })
            print(f"  {name} {rate}: {rows[-1]}", flush=True)
    print_table(rows, ["family", "rate", "tokens_per_s_480p", "hr_params_M", "encode_ms_per_s", "inc_vs_whole_maxabs", "small_res"])
    worst = max(r["inc_vs_whole_maxabs"] for r in rows)
    print(f"\nincremental == whole (<= 1e-4 fp32): worst {worst:.2e} ({'met' if worst <= 1e-4 else 'MISSED'})")
    print("written:", write_result("encoder_table", rows))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
