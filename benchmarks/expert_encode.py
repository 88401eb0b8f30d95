"""Encode time of one new 1 s segment for a Wan 2.2 A14B pair: per expert (before issue 13) vs shared (now).

Usage: nice -n 19 python benchmarks/expert_encode.py [--size 832x480] [--dim 5120] [--repeats 2]

Two Wan 2.1-architecture DiTs of width ``--dim`` (one small block each: encoding uses only the patch embedding) with
different weights, ComfyUI's Wan 2.1 VAE class at its real size (dim 96, random weights), a memory encoder at the real
HR widths (64..512 -> dim) with a non-zero HR projection. A history of 2 encoded segments is extended by one 1 s
segment (16 frames, continuing the stream), then encoded for both experts:

- ``per_expert``: ``models.encoding.encode_pending`` for each expert on its own (the HR branch runs per expert);
- ``shared``: ``models.experts.encode_pending_experts`` (VAE encode and HR branch once, patch embedding per expert).

Both paths start from copies of the same history; the LR clip's VAE encode runs once in both (the history keeps one
LR latent per encoder), so the difference is one HR branch per segment; ``without_vae_s`` leaves out the time inside
the VAE's encoder (forward hooks). Times are CPU seconds of this process (``time.process_time``, all threads: robust
to other jobs on a shared machine). Minimum over ``--repeats`` appends.
Writes benchmarks/results/expert_encode_<W>x<H>_d<dim>.json.
"""
from __future__ import annotations

import dataclasses
import time

import tyro

from common import print_table, write_result
from framememory.headless.comfy_import import import_comfyui
from sampling_step_480p import HookTimer


def build(dim: int):
    """``(models [high, low], vae, encoder)`` of the module docstring."""
    import torch
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE
    from framememory.demo.tiny_models import TINY_VAE, init_weights, tiny_wan21_dit
    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.encoding import MemoryEncoder

    heads = dim // 128
    models = [comfy.sd.load_diffusion_model_state_dict(
        tiny_wan21_dit(seed=s, dim=dim, num_heads=heads, num_layers=1, ffn_dim=256).state_dict()) for s in (0, 7)]
    vae = comfy.sd.VAE(sd=init_weights(WanVAE(**{**TINY_VAE, "dim": 96}), 1).state_dict())
    cfg = EncoderConfig(dim=dim)
    net = HistoryEncoder(cfg)
    with torch.no_grad():
        net.hr.proj.weight.normal_(0, 0.02)
    return models, vae, MemoryEncoder(cfg, net.state_dict(), "benchmark-random")


@dataclasses.dataclass(frozen=True)
class Args:
    """Encode time of one new 1 s segment for a Wan 2.2 A14B pair: per expert vs shared."""

    size: str = "832x480"
    """WxH of the video"""
    dim: int = 5120
    """DiT width (Wan 2.2 A14B experts: 5120)"""
    repeats: int = 2
    """timed appends (the minimum is reported)"""


def main(args: Args) -> None:
    width, height = (int(v) for v in args.size.split("x"))
    import_comfyui(cpu=True)
    import torch

    from framememory.memory.history import HistoryBuffer, PartKey
    from framememory.models.encoding import encode_pending
    from framememory.models.experts import encode_pending_experts

    torch.manual_seed(0)
    models, vae, encoder = build(args.dim)
    history = HistoryBuffer()

    def append(hist: HistoryBuffer) -> None:
        frames = 16 if hist.segments else 13
        hist.append(torch.randn(1, 16, 4, height // 8, width // 8), torch.rand(frames, height, width, 3))

    for _ in range(2):  # the stream is running: the timed segments continue it
        append(history)
        encode_pending_experts(models, vae, encoder, history)
    paths = {"per_expert": lambda h: [encode_pending(models[e], vae, encoder, h, expert=e) for e in (1, 0)],
             "shared": lambda h: encode_pending_experts(models, vae, encoder, h)}
    times = {k: [] for k in paths}
    for _ in range(args.repeats):
        append(history)
        out = {}
        for name, run in paths.items():  # both from the same history (copies), alternating
            hist = history.copy()
            with HookTimer({"vae": vae.first_stage_model.encoder}, clock=time.process_time) as timer:
                t0 = time.process_time()
                run(hist)
                total = time.process_time() - t0
            times[name].append((total, total - timer.seconds["vae"]))
            out[name] = hist.segments[-1].encoded
        assert all(torch.equal(a, b) for k in (PartKey(0, 0), PartKey(0, 1))
                   for a, b in zip(out["per_expert"][k], out["shared"][k])), "the two paths disagree"
        history = hist
    rows = [{"path": k, "encode_s_min": round(min(t[0] for t in v), 3),
             "without_vae_s_min": round(min(t[1] for t in v), 3)} for k, v in times.items()]
    print_table(rows, ["path", "encode_s_min", "without_vae_s_min"])
    print("written:", write_result(f"expert_encode_{width}x{height}_d{args.dim}", rows, vars(args)))


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n")[0]))
