"""Benchmark 3 at 480p on the CPU: preset ``cpu-480p`` of ``sampling_step.py`` (issue 13).

Usage: nice -n 5 python benchmarks/sampling_step.py --preset cpu-480p --repeats 1 [--widths 1.3b 14b] [--skip-full]

Block rows. ComfyUI's own ``WanModel`` with ONE block (``num_layers=1``) at the real width of Wan 2.1 1.3B (1536,
ffn 8960, 12 heads) and 14B (5120, ffn 13824, 40 heads), random weights, float32 (this CPU class, AVX2 without bf16
matrix units, runs bf16 matmuls far slower than fp32), through the product path: the memory wrapper and per-block
patches of ``models/families/wan21.py``, memory tokens as the Storyboard passes them. Attention: PyTorch SDPA
(``comfy.cli_args.args.use_pytorch_cross_attention = True`` before ComfyUI's attention module is imported, as a GPU
run uses it, plus the ``sdpa`` override of ``models/attention.py``). Input: one 1 s segment at 832x480 = latent
``[1, 16, 4, 60, 104]`` = 6240 video tokens, text ``[1, 512, 4096]``. ``block_s`` is the block module alone (forward
hooks on ``blocks[0]``); ``rest_s`` is the rest of the forward (embeddings, head, and the wrapper's memory RoPE,
concatenation and split, which a 30-block model pays once per forward).

Overhead rows. The pack's own work per appended 1 s segment at 480p (``models.encoding.encode_pending`` on a
history whose stream is already running: ``lr_clip``, the LR clip through ComfyUI's real Wan 2.1 VAE class
(``WanVAE`` dim 96, random weights) continuing the LR stream, the DiT's patch embedding, the HR branch at the real
widths 64..512 -> 1536; then ``next_memory`` (gather) and ``attach_memory`` (conds)), plus the memory RoPE / patch
bookkeeping per forward, as a fraction of the DiT's time for a 20-step segment (1.3B no-memory block time x 30
blocks x 20 steps x 2 for cond + uncond). Target <= 3 %.

Rows are written to ``benchmarks/results/sampling_step_cpu-480p.json`` after each case, so a stopped run keeps what
it measured.
"""
from __future__ import annotations

import time

from common import print_table, write_result
from framememory.headless.comfy_import import import_comfyui

WIDTHS = {  # Wan 2.1 block shapes and block count
    "1.3b": dict(dim=1536, ffn=8960, heads=12, blocks=30),
    "14b": dict(dim=5120, ffn=13824, heads=40, blocks=40),
}
CASES = [("no memory", None, None), ("20s 4x4x2", 20, "4x4x2"), ("60s 4x4x2", 60, "4x4x2"),
         ("120s 4x4x2", 120, "4x4x2"), ("20s 2x2x2", 20, "2x2x2")]
FULL_CASE = ("20s full (1x1x1)", 20, "1x1x1")  # 80 latent frames x 1560 tokens: 1.3B only
WIDTH, HEIGHT, FPS, SEG_T, TEXT_LEN = 832, 480, 16, 4, 512
STEPS, CFG_CALLS = 20, 2  # a 20-step segment, cond + uncond
TARGET_RATIO, TARGET_SPEEDUP, TARGET_OVERHEAD = 1.15, 0.7, 0.03
RESULT = "sampling_step_cpu-480p"


class HookTimer:
    """Wall seconds spent inside each of some modules (forward pre/post hooks), summed over calls.

    ``HookTimer({"name": module, ...})`` as a context manager; ``seconds[name]`` afterwards. ``progress``: print
    every call's end with the time since the timer started (for cases that run for minutes). ``clock``: wall time
    by default; ``time.process_time`` counts this process's CPU seconds (all threads), which other jobs on a shared
    machine do not inflate."""

    def __init__(self, modules: dict, progress: bool = False, clock=time.perf_counter) -> None:
        self.modules, self.progress, self.clock = modules, progress, clock
        self.seconds = {k: 0.0 for k in modules}
        self._handles, self._start = [], {}

    def __enter__(self) -> "HookTimer":
        self.t0 = self.clock()
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_pre_hook(lambda *_, n=name: self._start.__setitem__(n, self.clock())))
            self._handles.append(mod.register_forward_hook(lambda *_, n=name: self._stop(n)))
        return self

    def _stop(self, name: str) -> None:
        now = self.clock()
        self.seconds[name] += now - self._start.pop(name)
        if self.progress:
            print(f"    {name} done at {now - self.t0:.1f} s", flush=True)

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def setup_comfy():
    """Import ComfyUI for a CPU run with PyTorch SDPA attention; returns the ``torch`` module."""
    import_comfyui(cpu=True, sdpa=True)  # SDPA before comfy.ldm.modules.attention is imported
    import torch
    import comfy.ldm.modules.attention as attention

    assert attention.optimized_attention is attention.attention_pytorch, "ComfyUI did not pick PyTorch SDPA"
    return torch


def block_model(spec: dict):
    """ComfyUI's ``WanModel`` with one block of the real width, fp32, random weights (N(0, 0.02)), eval mode."""
    import torch
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    torch.manual_seed(0)
    dm = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=TEXT_LEN, in_dim=16, dim=spec["dim"],
                  ffn_dim=spec["ffn"], freq_dim=256, text_dim=4096, out_dim=16, num_heads=spec["heads"], num_layers=1,
                  qk_norm=True, cross_attn_norm=True, operations=comfy.ops.manual_cast, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for prm in dm.parameters():
            prm.normal_(0, 0.02)
    return dm.eval()


def memory_kwargs(dim: int, seconds: int | None, rate: str | None) -> dict:
    """The forward kwargs of ``seconds`` of 480p history at ``rate`` (random tokens at the real positions)."""
    import torch
    from framememory.memory.config import EncoderConfig
    from framememory.memory.grid import memory_grid, memory_positions

    if not seconds:
        return {}
    lat = (seconds * FPS - 1) // 4 + 1
    cfg = EncoderConfig(dim=dim, rate=rate)
    pos = memory_positions(memory_grid((lat, HEIGHT // 8, WIDTH // 8), cfg), cfg, t_start=-lat)
    tokens = torch.randn(1, pos.shape[0], dim) * 0.5
    return {"memory_tokens": tokens, "memory_positions2": (pos[None] * 2).round().long()}


def product_options(dm, backend: str = "sdpa") -> dict:
    """``transformer_options`` of the product path on ``dm`` (here one block): the memory patches
    (``families.install_memory``: the Wan per-block patches and memory wrapper) and the attention ``backend``."""
    from framememory.models.attention import attention_override
    from framememory.models.families import install_memory

    return {**install_memory(dm), "optimized_attention_override": attention_override(backend)}


def time_forward(dm, kw: dict, repeats: int, progress: bool = False) -> tuple[float, float]:
    """``(forward_s, block_s)``: median over ``repeats`` of one forward of a 480p segment (block time by hooks)."""
    import torch

    torch.manual_seed(1)
    x = torch.randn(1, 16, SEG_T, HEIGHT // 8, WIDTH // 8)
    ctx, ts, opts = torch.randn(1, TEXT_LEN, 4096) * 0.1, torch.tensor([500.0]), product_options(dm)
    mods = {"block": dm.blocks[0]}
    if progress:
        mods.update({"self_attn": dm.blocks[0].self_attn, "cross_attn": dm.blocks[0].cross_attn, "ffn": dm.blocks[0].ffn})
    runs = []
    with torch.no_grad():
        for _ in range(repeats):
            with HookTimer(mods, progress) as timer:
                t0 = time.perf_counter()
                dm(x, ts, ctx, transformer_options=opts, **kw)
                runs.append((time.perf_counter() - t0, timer.seconds["block"]))
    return sorted(runs)[len(runs) // 2]


def warm_up(dm) -> None:
    """One forward of a small latent (kernel selection, allocator) with a little memory, untimed."""
    import torch

    x = torch.randn(1, 16, SEG_T, 16, 16)
    kw = {"memory_tokens": torch.randn(1, 8, dm.dim), "memory_positions2": torch.zeros(1, 8, 3, dtype=torch.long)}
    with torch.no_grad():
        dm(x, torch.tensor([500.0]), torch.randn(1, TEXT_LEN, 4096) * 0.1, transformer_options=product_options(dm), **kw)


def full_case_fits(spec: dict, tokens: int) -> tuple[bool, str]:
    """Whether one block at ``tokens`` tokens fits in available RAM (fp32: the FFN's two hidden activations and about
    ten D-wide ones), with a 1.5 GiB margin, and the reason when not."""
    import psutil

    need = tokens * (2 * spec["ffn"] + 10 * spec["dim"]) * 4 + 1.5 * 2**30
    have = psutil.virtual_memory().available
    return have >= need, f"needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available"


def case_row(name: str, spec: dict, kw: dict, repeats: int, step_flops, progress: bool = False) -> dict:
    n = SEG_T * (HEIGHT // 16) * (WIDTH // 16)
    m = kw["memory_tokens"].shape[1] if kw else 0
    fwd, blk = time_forward_once(spec, kw, repeats, progress)
    return {"case": name, "N": n, "M": m, "block_s": round(blk, 3), "rest_s": round(fwd - blk, 4),
            "flop_ratio": round(step_flops(spec["dim"], spec["ffn"], 1, n + m) / step_flops(spec["dim"], spec["ffn"], 1, n), 3)}


_MODELS: dict = {}


def time_forward_once(spec: dict, kw: dict, repeats: int, progress: bool) -> tuple[float, float]:
    """:func:`time_forward` on the (cached, warmed-up) one-block model of ``spec``."""
    key = spec["dim"]
    if key not in _MODELS:
        _MODELS.clear()  # one width in RAM at a time
        _MODELS[key] = block_model(spec)
        warm_up(_MODELS[key])
    return time_forward(_MODELS[key], kw, repeats, progress)


def overhead_parts(repeats: int) -> dict:
    """Seconds of the pack's own work for one appended 1 s segment at 480p (module docstring), minimum over
    ``repeats`` appends to a history whose LR stream is already running (2 segments encoded first, untimed)."""
    import torch
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE
    from framememory.demo.tiny_models import TINY_VAE, init_weights, tiny_wan21_dit
    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.history import HistoryBuffer
    from framememory.models import families
    from framememory.models.conds import attach_memory
    from framememory.models.encoding import MemoryEncoder, encode_pending, next_memory

    torch.manual_seed(0)  # the encoding uses the DiT's patch embedding only: a 1.3B-width DiT with one small block
    model = comfy.sd.load_diffusion_model_state_dict(tiny_wan21_dit(dim=1536, num_heads=12, num_layers=1, ffn_dim=256).state_dict())
    vae = comfy.sd.VAE(sd=init_weights(WanVAE(**{**TINY_VAE, "dim": 96}), 1).state_dict())  # real Wan 2.1 VAE size
    cfg = EncoderConfig(dim=1536)  # real HR widths 64, 128, 256, 512
    net = HistoryEncoder(cfg)
    with torch.no_grad():
        net.hr.proj.weight.normal_(0, 0.02)  # a trained encoder's HR branch adds something (zero-init skips nothing)
    encoder = MemoryEncoder(cfg, net.state_dict(), "benchmark-random")
    history = HistoryBuffer()

    def append() -> None:
        frames = 16 if history.segments else 13
        history.append(torch.randn(1, 16, SEG_T, HEIGHT // 8, WIDTH // 8), torch.rand(frames, HEIGHT, WIDTH, 3))

    for _ in range(2):
        append()
        encode_pending(model, vae, encoder, history)
    mods = {"vae_encode": vae.first_stage_model.encoder, "hr_branch": encoder.network(model)[0].hr,
            "patch_embed": families.diffusion_model(model).patch_embedding}
    conds = [[torch.zeros(1, TEXT_LEN, 4096), {}]]
    runs = []
    for _ in range(repeats):
        append()
        with HookTimer(mods) as timer:
            t0 = time.perf_counter()
            assert encode_pending(model, vae, encoder, history) == 1
            t1 = time.perf_counter()
        tokens, positions = next_memory(model, encoder, history)
        t2 = time.perf_counter()
        attach_memory(conds, tokens, positions), attach_memory(conds, tokens, positions)  # positive and negative
        t3 = time.perf_counter()
        runs.append({"encode_s": t1 - t0, **timer.seconds, "gather_s": t2 - t1, "attach_s": t3 - t2})
    best = min(runs, key=lambda r: r["encode_s"])
    best["encode_other_s"] = best["encode_s"] - sum(best[k] for k in mods)  # lr_clip, LR stream and cache bookkeeping
    return {k: round(v, 4) for k, v in best.items()}


def overhead_summary(parts: dict, rows: list[dict]) -> dict:
    """The overhead of one 1 s segment as a fraction of the 1.3B DiT's sampling time of that segment."""
    none = next(r for r in rows if r["case"] == "no memory")
    mem = next(r for r in rows if r["case"] == "20s 4x4x2")
    forwards = STEPS * CFG_CALLS
    rope = max(0.0, mem["rest_s"] - none["rest_s"])  # memory RoPE, concat / split, vec: once per forward
    dit = none["block_s"] * WIDTHS["1.3b"]["blocks"] * forwards
    pack = parts["encode_s"] + parts["gather_s"] + parts["attach_s"] + rope * forwards
    return {**parts, "memory_rope_and_patches_per_forward_s": round(rope, 4), "forwards_per_segment": forwards,
            "pack_s_per_segment": round(pack, 3), "dit_s_per_segment": round(dit, 1),
            "fraction": round(pack / dit, 5), "target": TARGET_OVERHEAD}


def add_ratios(rows: list[dict]) -> None:
    """``time_ratio`` and ``time/flop`` of every row against its width's no-memory row (in place)."""
    for r in rows:
        base = next(b for b in rows if b["width"] == r["width"] and b["case"] == "no memory")
        r["time_ratio"] = round(r["block_s"] / base["block_s"], 3)
        r["time/flop"] = round(r["time_ratio"] / r["flop_ratio"], 3)


def targets(rows: list[dict]) -> dict:
    """Worst time/FLOP ratio per width, and the 1.3B speed-up of 20 s at 4x4x2 over the full 20 s history."""
    out = {}
    for width in dict.fromkeys(r["width"] for r in rows):
        worst = max(r["time/flop"] for r in rows if r["width"] == width)
        out[f"worst_time_per_flop_{width}"] = worst
    full = next((r for r in rows if r["case"] == FULL_CASE[0]), None)
    mem = next((r for r in rows if r["width"] == "1.3b" and r["case"] == "20s 4x4x2"), None)
    if full and mem:
        speedup, flops = full["block_s"] / mem["block_s"], full["flop_ratio"] / mem["flop_ratio"]
        out.update(speedup_vs_full=round(speedup, 2), flop_speedup_vs_full=round(flops, 2),
                   speedup_per_flop_speedup=round(speedup / flops, 3))
    return out


def run(args, step_flops) -> None:
    """The cpu-480p preset (module docstring): overhead, block rows per width, then the full 20 s history (1.3B)."""
    torch = setup_comfy()
    rows, extra = [], {"preset": "cpu-480p", "dtype": "float32", "attention": "sdpa (use_pytorch_cross_attention)",
                       "repeats": args.repeats, "resolution": f"{WIDTH}x{HEIGHT}", "block_count": "1 block per width"}
    print(f"threads {torch.get_num_threads()}; overhead of one 1 s segment at 480p ...", flush=True)
    parts = overhead_parts(max(args.repeats, 2))
    print("  ", parts, flush=True)
    plan = [(w, c) for w in args.widths for c in CASES]
    if not args.skip_full and "1.3b" in args.widths:
        plan.append(("1.3b", FULL_CASE))
    for width, (name, secs, rate) in plan:
        spec = WIDTHS[width]
        kw = memory_kwargs(spec["dim"], secs, rate)
        full = rate == "1x1x1"
        if full:
            fits, why = full_case_fits(spec, 6240 + kw["memory_tokens"].shape[1])
            print(f"  {width} {name}: {why}", flush=True)
            if not fits:
                extra["full_case_skipped"] = why
                break
        t0 = time.perf_counter()
        rows.append({"width": width, **case_row(name, spec, kw, 1 if full else args.repeats, step_flops, progress=full),
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(f"  {width} {name}: M={rows[-1]['M']} block {rows[-1]['block_s']} s (wall {rows[-1]['wall_s']} s)", flush=True)
        add_ratios(rows)
        if width == "1.3b" and name == "20s 4x4x2":
            extra["overhead"] = overhead_summary(parts, rows)
        write_result(RESULT, rows, {**extra, "targets": targets(rows)})
    print_table(rows, ["width", "case", "N", "M", "block_s", "rest_s", "time_ratio", "flop_ratio", "time/flop", "wall_s"])
    print("targets:", targets(rows), "\noverhead:", extra.get("overhead"))
