"""Benchmark (issue 25, point 2): bytes written and seconds per append of a memory file, 10 s to 10 min of history.

Usage:
  python benchmarks/memory_file_io.py                 # 480p, both layouts, 10 s .. 10 min (about 8 GB of disk)
  python benchmarks/memory_file_io.py --lengths 10 60 # fewer lengths
  python benchmarks/memory_file_io.py --size tiny     # tiny shapes (what the tests use)

What it measures. A storyboard run appends one segment to its memory folder (memory/memory_file.py) after every
segment. The records here are synthetic tensors of the real shapes of one 1 s segment of Wan 2.1 1.3B at 832x480,
16 fps (:data:`SIZES`), in the two layouts the pack writes:

- ``frame_preservation`` (and pack_forcing): per segment its latent ``[16, 4, 60, 104]`` float32, 182 memory tokens
  ``[182, 1536]`` + positions (4x4x2) and its LR latent ``[16, 2, 15, 26]``; the state file holds the LR branch's
  Wan VAE causal encoder cache at the 208x120 LR clip (33 slots, shapes from ComfyUI's ``WanVAE`` encoder run under
  fake tensors; float32 as on a CPU run, a GPU run keeps the VAE's bf16: half the bytes) and the colour statistics.
- ``video_ssm`` (and sliding_window / off, which encode nothing): per segment its latent and its 16 uint8 frames
  ``[16, 480, 832, 3]`` (kept for a later encode); the state file holds the VideoSSM state ``[1, 30, 12, 128, 64]``.

For each history length the folder is first brought to that many segments (earlier segments carried over, one
write), then :data:`APPENDS` single-segment appends are timed (``fsync`` included) and their bytes counted (segment
file + state file + index). ``memory1_bytes_per_append``: what the single-file ``memory/1`` format wrote per append
(it rewrote the whole file): the folder's total size, computed, not measured. Writes
benchmarks/results/memory_file_io.json and prints one table. Timings are on this machine's shared disk.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from typing import Literal

import tyro

from common import print_table, write_result
from framememory.headless.comfy_import import import_comfyui

LENGTHS_S = (10, 30, 60, 120, 300, 600)
APPENDS = 3
TOLERANCE = 0.10  # issue 25: bytes per append constant within 10 % from 10 s to 10 min
SIZES = {  # one 1 s segment of Wan 2.1 1.3B at 832x480, 16 fps (4 latent frames, 16 video frames)
    "480p": dict(latent=(16, 4, 60, 104), frames=(16, 480, 832, 3), tokens=182, dim=1536, lr=(16, 2, 15, 26),
                 lr_clip=(120, 208), vae_dim=96, ssm=(1, 30, 12, 128, 64)),
    "tiny": dict(latent=(16, 4, 8, 16), frames=(16, 64, 128, 3), tokens=8, dim=32, lr=(16, 2, 2, 4),
                 lr_clip=(16, 32), vae_dim=8, ssm=(1, 2, 2, 16, 8)),
}
LAYOUTS = ("frame_preservation", "video_ssm")


def lr_cache_shapes(size: dict) -> list:
    """Shapes of the Wan 2.1 VAE's causal encoder cache (``VideoStream`` exact mode, the installed ComfyUI's layout)
    after a continuation part of the LR clip: ComfyUI's ``WanVAE`` (``dim = size["vae_dim"]``) under
    ``FakeTensorMode`` encodes the stream's first frame, then one 4-frame part (``models.vae_stream.streamed``, as
    the history stream does). Entries are shapes, ``"Rep"`` or None."""
    import_comfyui(cpu=True)
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from comfy.ldm.wan.vae import WanVAE

    from framememory.models.vae_stream import cache_slots, streamed

    h, w = size["lr_clip"]
    with FakeTensorMode():
        vae = WanVAE(dim=size["vae_dim"], z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                     temperal_downsample=[False, True, True], dropout=0.0)
        cache = [None] * cache_slots(vae, vae.encoder)  # the installed ComfyUI's layout (models/vae_stream.py)
        with streamed(vae, "encoder", cache):  # the stream's first frame, then one 4-frame continuation part
            vae.encode(torch.zeros(1, 3, 1, h, w))
        with streamed(vae, "encoder", cache, skip_first=True):
            vae.encode(torch.zeros(1, 3, 5, h, w))
        return [tuple(e.shape) if isinstance(e, torch.Tensor) else e for e in cache]


class TensorPool:
    """A few distinct random tensors per shape, handed out in turn: the records of a long history stay small in RAM
    (segments share tensors across files; no file holds one twice)."""

    def __init__(self, seed: int = 0, distinct: int = 3) -> None:
        import torch

        self.gen, self.distinct, self.pools = torch.Generator().manual_seed(seed), distinct, {}

    def get(self, shape: tuple, dtype, k: int):
        import torch

        key = (tuple(shape), dtype)
        if key not in self.pools:
            make = (lambda: torch.randint(0, 256, shape, generator=self.gen, dtype=torch.uint8)) \
                if dtype == torch.uint8 else (lambda: torch.randn(shape, generator=self.gen).to(dtype))
            self.pools[key] = [make() for _ in range(self.distinct)]
        return self.pools[key][k % self.distinct]


def make_segment(size: dict, layout: str, i: int, pool: TensorPool):
    """Segment ``i`` of a continuous history (1 s each) in ``layout``, tensors of ``size``'s real shapes."""
    import torch

    from framememory.memory.history import HistorySegment, PartKey

    f = size["frames"][0]
    encoded, lr, frames = {}, {}, None
    if layout == "frame_preservation":
        t = torch.arange(size["tokens"], dtype=torch.float32)
        positions = torch.stack([t % 2 + 4 * i, t % 7, t % 13], dim=1)
        encoded = {PartKey(): (pool.get((size["tokens"], size["dim"]), torch.float32, i), positions)}
        lr = {0: pool.get(size["lr"], torch.float32, i)}
    else:
        frames = pool.get(size["frames"], torch.uint8, i)
    return HistorySegment(latent=pool.get(size["latent"], torch.float32, i), frames=frames, num_frames=f,
                          start_frame=f * i, start_latent=size["latent"][1] * i, stream_start=i == 0,
                          encoded=encoded, lr_latents=lr)


def make_record(size: dict, layout: str, segments: list, step: int, pool: TensorPool, cache_shapes: list):
    """A MemoryRecord of ``segments`` with the state after ``step`` appends (LR stream cache or VideoSSM state, colour
    statistics: new tensors every step, as a run's are) and a storyboard position."""
    import torch

    from framememory.memory.config import EncoderConfig
    from framememory.memory.history import HistoryBuffer
    from framememory.memory.memory_file import MemoryRecord, StoryboardPosition, StreamState

    history = HistoryBuffer(segments)
    if layout == "frame_preservation":
        cache = tuple(torch.full(s, step + k / 64) if isinstance(s, tuple) else s  # one tensor per slot, as WanVAE's
                      for k, s in enumerate(cache_shapes))
        history.lr_streams = {0: StreamState("encode", 4, 4, True, cache)}
    else:
        history.states = {0: (size["latent"][1] * len(segments), pool.get(size["ssm"], torch.float32, step))}
    history.colour_stats = torch.full((3, 3), float(step), dtype=torch.float64)
    position = StoryboardPosition("0" * 64, 10_000, len(segments), 0, 7, float(len(segments)), 0, {"steps": 4})
    cfg = EncoderConfig(family="wan21", dim=size["dim"], rate=(4, 4, 2))
    return MemoryRecord(history, [cfg], ["synthetic"], 16.0, size["frames"][2], size["frames"][1], layout, position)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))


def measure_layout(size: dict, layout: str, lengths, work: str, cache_shapes: list, log=print) -> list[dict]:
    """One row per history length: the mean bytes and seconds of :data:`APPENDS` appends at that length."""
    from framememory.memory.memory_file import save_memory

    pool, segments, rows, step = TensorPool(), [], [], 0
    folder = os.path.join(work, f"{layout}.fmem")
    for seconds in lengths:
        while len(segments) < seconds - APPENDS:  # bring the folder to the length (one write of the new segments)
            segments.append(make_segment(size, layout, len(segments), pool))
        step += 1
        save_memory(folder, make_record(size, layout, segments, step, pool, cache_shapes))
        stats = []
        for _ in range(APPENDS):
            segments.append(make_segment(size, layout, len(segments), pool))
            step += 1
            stats.append(save_memory(folder, make_record(size, layout, segments, step, pool, cache_shapes)))
        assert all(s["segments_written"] == 1 for s in stats), stats
        index = os.path.getsize(os.path.join(folder, "index.json"))
        row = {"layout": layout, "history_s": len(segments), "bytes_per_append": sum(s["bytes"] for s in stats) // APPENDS,
               "index_bytes": index, "s_per_append": round(sum(s["seconds"] for s in stats) / APPENDS, 4),
               "folder_mb": round(folder_bytes(folder) / 2**20, 1)}
        row["memory1_bytes_per_append"] = folder_bytes(folder) - index
        rows.append(row)
        log(f"{layout} {row['history_s']} s: {row['bytes_per_append'] / 2**20:.2f} MiB, {row['s_per_append']} s "
            f"per append (memory/1: {row['memory1_bytes_per_append'] / 2**20:.0f} MiB)")
    shutil.rmtree(folder)
    return rows


def spread(rows: list[dict]) -> dict:
    """Per layout, (max - min) / min of the bytes per append over the lengths, and whether it is within
    :data:`TOLERANCE`."""
    out = {}
    for layout in dict.fromkeys(r["layout"] for r in rows):
        b = [r["bytes_per_append"] for r in rows if r["layout"] == layout]
        out[layout] = {"spread": round((max(b) - min(b)) / min(b), 5), "constant": (max(b) - min(b)) / min(b) <= TOLERANCE}
    return out


def run(size_name: str, lengths, work: str | None = None, log=print) -> dict:
    """Measure every layout at every length in a temporary folder under ``work``; returns rows and spreads."""
    size = SIZES[size_name]
    cache_shapes = lr_cache_shapes(size)
    tmp = tempfile.mkdtemp(prefix="memory_file_io_", dir=work)
    try:
        rows = [r for layout in LAYOUTS for r in measure_layout(size, layout, lengths, tmp, cache_shapes, log)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "spread": spread(rows), "size": size_name,
            "state_slots": len(cache_shapes)}


TABLE = ["layout", "history_s", "bytes_per_append", "index_bytes", "s_per_append", "folder_mb", "memory1_bytes_per_append"]


@dataclasses.dataclass(frozen=True)
class Args:
    """Bytes written and seconds per append of a memory file, 10 s to 10 min of history."""

    size: Literal["480p", "tiny"] = "480p"
    """segment shapes (:data:`SIZES`; tiny: what the tests use, no result file)"""
    lengths: tuple[int, ...] = LENGTHS_S
    """history lengths in seconds (each above the appends timed)"""
    work: str | None = None
    """folder for the temporary memory folders (default: system temp)"""


def main(args: Args) -> None:
    if min(args.lengths) <= APPENDS:
        print(f"memory_file_io.py: error: lengths must exceed {APPENDS} s", file=sys.stderr)
        raise SystemExit(2)
    t0 = time.perf_counter()
    result = run(args.size, sorted(args.lengths), args.work)
    print_table(result["rows"], TABLE)
    for layout, s in result["spread"].items():
        print(f"{layout}: bytes per append spread {100 * s['spread']:.2f} % over {min(args.lengths)}..{max(args.lengths)} s "
              f"({'constant' if s['constant'] else 'NOT constant'} within {100 * TOLERANCE:.0f} %)")
    if args.size == "480p":  # the tiny size is what the tests run; no result file
        out = write_result("memory_file_io", result["rows"], {"spread": result["spread"], "appends_per_length": APPENDS,
                                                               "state_slots": result["state_slots"],
                                                               "seconds": round(time.perf_counter() - t0, 1)})
        print(f"wrote {out}")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
