"""Benchmark 4: the whole storyboard loop, with per-phase time, VRAM and host RAM, under a 12 GiB VRAM cap.

Usage:
  python benchmarks/storyboard_loop.py --preset cpu-tiny [--seconds 60]   # CPU leak check with tiny models
  python benchmarks/storyboard_loop.py --preset gpu-1.3b [--seconds 60]   # Wan 2.1 1.3B real shapes, bf16, 480p
  python benchmarks/storyboard_loop.py --preset gpu-14b-fp8               # Wan 2.1 14B real shapes, fp8 weights

Runs ``models.storyboard.run_storyboard`` in-process on ComfyUI's own classes with random weights (the real Wan VAE
shape, base width 96, on the GPU presets; the tiny one on CPU) and the stand-in text encoder, 1 s segments, with
ComfyUI's model management doing the offloading. VRAM cap: before ComfyUI is imported, a ballast tensor fills the
card down to ``--cap-gib`` free (so ComfyUI's own free-memory checks see a 12 GiB card); reported VRAM peaks are
``torch.cuda.max_memory_allocated/reserved`` per phase minus the ballast. Prints per-segment rows and a summary
(peaks per phase, RSS slope over the second half = leak check, seconds per generated second) and writes
benchmarks/results/storyboard_loop_<preset>.json. Target (issue 5): VRAM peak <= 11.5 GiB, no OOM at decode.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Literal

import tyro

from common import print_table, write_result
from framememory.headless.comfy_import import import_comfyui

PRESETS = {
    "cpu-tiny": dict(device="cpu", width=256, height=128, steps=2, dit="tiny", vae="tiny"),
    "gpu-1.3b": dict(device="cuda", width=832, height=480, steps=4,
                     dit=dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30), dtype="bfloat16", vae="real"),
    "gpu-14b-fp8": dict(device="cuda", width=832, height=480, steps=4,
                        dit=dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), dtype="float8_e4m3fn", vae="real"),
}


@dataclasses.dataclass(frozen=True)
class Args:
    """Benchmark 4: the whole storyboard loop, with per-phase time, VRAM and host RAM, under a 12 GiB VRAM cap."""

    preset: Literal["cpu-tiny", "gpu-1.3b", "gpu-14b-fp8"] = "cpu-tiny"
    """model size and device (module docstring)"""
    seconds: float = 60.0
    """seconds of video to generate (history grows to this)"""
    cap_gib: float = 12.0
    """VRAM the process may use (GPU presets)"""


def hold_ballast(p: dict, cap_gib: float):
    """``(ballast tensor or None, its bytes)``: on CUDA a uint8 tensor filling the card down to ``cap_gib`` GiB free,
    made before ComfyUI is imported (hold it to the end of the run)."""
    if p["device"] != "cuda":
        return None, 0
    import torch

    free, total = torch.cuda.mem_get_info()
    ballast_bytes = max(0, int(free - cap_gib * 2**30))
    ballast = torch.empty(ballast_bytes, dtype=torch.uint8, device="cuda")
    print(f"VRAM cap: ballast {ballast_bytes / 2**30:.1f} GiB, {torch.cuda.mem_get_info()[0] / 2**30:.1f} GiB free")
    return ballast, ballast_bytes


def build_models(p: dict):
    """``(MODEL, VAE, memory encoder)`` of preset ``p``, random weights, loaded through ComfyUI's loaders: the tiny
    Wan 2.1 DiT and VAE on ``cpu-tiny``; otherwise the real DiT shapes (N(0, 0.02) bf16 weights, loaded in
    ``p["dtype"]``) and the real Wan 2.1 VAE shape (base width 96)."""
    import torch
    import comfy.ops
    import comfy.sd
    from comfy.ldm.wan.model import WanModel
    from comfy.ldm.wan.vae import WanVAE

    from framememory.demo.tiny_models import init_weights, tiny_encoder_config, tiny_wan21_dit, tiny_wan21_vae, TINY_DIT
    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.encoding import MemoryEncoder

    if p["dit"] == "tiny":
        dit_sd = tiny_wan21_dit().state_dict()
        enc_cfg = tiny_encoder_config()
        model_options = {}
    else:
        with torch.device("meta"):
            skeleton = WanModel(operations=comfy.ops.disable_weight_init, **{**TINY_DIT, **p["dit"]})
        g = torch.Generator().manual_seed(0)
        dit_sd = {k: (torch.randn(v.shape, generator=g) * 0.02).to(torch.bfloat16) for k, v in skeleton.state_dict().items()}
        enc_cfg = EncoderConfig(dim=p["dit"]["dim"])
        model_options = {"dtype": getattr(torch, p["dtype"])}
    model = comfy.sd.load_diffusion_model_state_dict(dit_sd, model_options=model_options)
    del dit_sd
    vae_module = tiny_wan21_vae() if p["vae"] == "tiny" else init_weights(
        WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True]), 1)
    vae = comfy.sd.VAE(sd=vae_module.state_dict())
    net = HistoryEncoder(enc_cfg)
    with torch.no_grad():
        net.hr.proj.weight.normal_(0, 0.02)
    return model, vae, MemoryEncoder(enc_cfg, net.state_dict(), "benchmark-random")


def rss_slope(rows: list[dict]) -> float:
    """Least-squares slope (MB per segment) of the current RSS over the second half of the segments (the output
    frames themselves add 16 * W * H * 3 bytes per segment after the first: uint8 frames kept for the IMAGE output)."""
    half = rows[len(rows) // 2:]
    xs = [r["index"] for r in half]
    ys = [r["rss_mb"] for r in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-9, sum((x - mx) ** 2 for x in xs))


def summarize(p: dict, rows: list[dict], report: dict, generated_frames: int, wall: float) -> dict:
    """The run's summary: segments, seconds per generated second, peak RSS and its slope, and on CUDA the VRAM peaks
    per phase (GiB) against the 11.5 GiB target."""
    frames_mb = 16 * p["width"] * p["height"] * 3 / 2**20  # one continuous stream: 16 frames per 4 latent frames
    gen_seconds = generated_frames / 16.0
    summary = {
        "segments": len(rows), "generated_s": round(gen_seconds, 2), "wall_s": round(wall, 1),
        "s_per_generated_s": round(wall / gen_seconds, 2), "final_memory_tokens": report["final_memory_tokens"],
        "peak_rss_mb": report["peak_rss_mb"], "rss_slope_mb_per_segment_2nd_half": round(rss_slope(rows), 2),
        "output_frames_mb_per_segment": round(frames_mb, 2),
    }
    if p["device"] == "cuda":
        for ph in ("sample", "decode", "encode"):
            summary[f"{ph}_peak_alloc_gib"] = round(max(r[f"{ph}_peak_alloc_mb"] for r in rows) / 1024, 2)
            summary[f"{ph}_peak_reserved_gib"] = round(max(r[f"{ph}_peak_reserved_mb"] for r in rows) / 1024, 2)
        peak = max(summary[f"{ph}_peak_reserved_gib"] for ph in ("sample", "decode", "encode"))
        summary["target_peak_le_11.5_gib"] = "met" if peak <= 11.5 else f"MISSED ({peak} GiB)"
    return summary


def main(args: Args) -> None:
    p = PRESETS[args.preset]
    ballast, ballast_bytes = hold_ballast(p, args.cap_gib)  # noqa: F841 (held to the end)
    import_comfyui(cpu=p["device"] == "cpu")
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.memory.storyboard import Shot
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder = build_models(p)
    clip = StandInTextEncoder()
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    shots = [Shot(0, "a long walk through a city", 0.0, args.seconds)]
    t0 = time.perf_counter()
    frames, mem, report = run_storyboard(model, vae, clip, encoder, neg, shots, SamplerSettings(p["steps"], 3.0, "euler", "simple", 0),
                                         p["width"], p["height"], 16.0, 4)
    wall = time.perf_counter() - t0
    rows = report["segments"]
    for r in rows:
        for k in list(r):
            if k.endswith("_mb") and "peak_" in k and k != "peak_rss_mb":
                r[k] = round(r[k] - ballast_bytes / 2**20, 1)
    cols = ["index", "memory_tokens", "sample_s", "decode_s", "encode_s", "rss_mb", "peak_rss_mb"]
    if p["device"] == "cuda":
        cols += ["sample_peak_alloc_mb", "decode_peak_alloc_mb", "encode_peak_alloc_mb", "sample_peak_reserved_mb"]
    print_table(rows, cols)
    summary = summarize(p, rows, report, frames.shape[0], wall)
    for k, v in summary.items():
        print(f"{k}: {v}")
    print("written:", write_result(f"storyboard_loop_{args.preset}", rows, {"summary": summary, "preset": args.preset,
                                                                          "cap_gib": args.cap_gib if ballast_bytes else None}))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
