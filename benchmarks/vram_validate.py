"""Validation of the fake-tensor estimate (benchmarks/vram_estimate.py): small configurations run on fake and on real
CPU tensors under the same tracker (two also under the stock ``MemTracker``), their real runs also counted by the
PyTorch profiler (:func:`validate`)."""
from __future__ import annotations

from vram_measure import (_real_inputs, absorb_case, build_dit, build_state_memory, default_dtype, dit_inputs,
                          dit_options, encoder_config, fake_mode, measure, mode_case)
from vram_specs import MIB, MODELS, MODES, SEGMENT_LATENTS, SMALL, WAN_VAE


def _init_real(module) -> None:
    """Random weights for a real (non-fake) module: N(0, 0.02), fp8 weights through a float32 copy."""
    import torch

    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape) * 0.02)


def small_case(name: str, fake: bool):
    """One validation case built on fake or real CPU tensors: ``(run, external)`` for :func:`measure`.
    ``name``: ``wan_bf16`` / ``wan_fp8`` (Wan DiT, 2 blocks of width 256, 20 s of history at 2x2x2 through the product
    path, cond + uncond), ``hunyuan_fp8`` (1 double + 1 single block, width 256), ``vae`` (WanVAE dim 16 decode),
    ``encoder`` (HistoryEncoder append with the DiT's patch embedding), ``pack_forcing`` / ``video_ssm`` (the Wan
    bf16 DiT in that memory mode after 60 s of history, :func:`mode_case`; VideoSSM with its state modules),
    ``absorb`` (VideoSSM's absorb of one segment, :func:`absorb_case`). The VAE case runs in float32."""
    import torch

    base = "hunyuan_video_fp8" if name == "hunyuan_fp8" else "wan21_14b_fp8" if name == "wan_fp8" else "wan21_1.3b_bf16"
    spec = {**MODELS[base], **SMALL}
    if name == "hunyuan_fp8":
        spec["dit"], spec["width"], spec["text_len"] = dict(hidden_size=256, num_heads=2, depth=1, depth_single_blocks=1), 224, 64
    if name == "vae":
        from comfy.ldm.wan.vae import WanVAE

        with default_dtype(torch.float32):  # bf16 Conv3d on a CPU is ~100x slower (no oneDNN kernel)
            vae = WanVAE(dim=16, **WAN_VAE)
        z = torch.empty(1, 16, 2, 8, 12)
        z = z if fake else (_init_real(vae), torch.randn(z.shape).to(z.dtype))[1]
        return (lambda: vae.decode(z)), (vae, z)
    if name == "absorb":
        ssm = build_state_memory(spec)
        return absorb_case(spec, ssm, fake=fake) if fake else (_init_real(ssm), absorb_case(spec, ssm, fake=fake))[1]
    dm = build_dit(spec)
    if not fake:
        _init_real(dm)
    if name == "encoder":
        return _encoder_case(spec, dm, fake)
    opts = dit_options(spec, dm)
    if name in MODES:
        ssm = build_state_memory(spec) if name == "video_ssm" else None
        if ssm is not None and not fake:
            _init_real(ssm)
        return mode_case(spec, dm, opts, 2, 60, name, ssm, fake)[:2]
    kw = dit_inputs(spec, 2, 20, "2x2x2")
    kw = kw if fake else _real_inputs(kw)
    x, t, ctx = kw.pop("x"), kw.pop("timestep"), kw.pop("context")
    return (lambda: dm(x, t, ctx, transformer_options=opts, **kw)), (dm, x, t, ctx, *kw.values())


def _encoder_case(spec: dict, dm, fake: bool):
    """``(run, external)`` of the HistoryEncoder append (4x4x2, HR widths 64..512) on one small segment."""
    import comfy.ops
    import torch

    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.families import family_for

    net = HistoryEncoder(encoder_config(spec, "4x4x2"), ops=comfy.ops.manual_cast).eval()
    adapter = family_for(dm)
    lat = torch.empty(1, spec["channels"], SEGMENT_LATENTS, spec["height"] // 8, spec["width"] // 8)
    tm, hm, wm = net.grid(lat)
    lr = torch.empty(1, spec["channels"], tm, hm * 2, wm * 2)
    if not fake:
        lat, lr = torch.randn(lat.shape), torch.randn(lr.shape)
    return (lambda: net(lat, lr, embed=lambda z: adapter.patch_embed(dm, z, device=None))), (net, lat, lr)


def profiler_peak(run) -> int:
    """Peak bytes allocated while ``run()`` executes on real CPU tensors, from the PyTorch profiler's memory timeline
    (allocator events, independent of MemTracker's storage accounting; includes op-internal workspaces)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                                         with_stack=True) as prof:
        run()
    cur = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        kind = getattr(action, "name", str(action))
        cur += size if kind in ("CREATE", "PREEXISTING") else -size if kind == "DESTROY" else 0
        peak = max(peak, cur)
    return peak


def validate(names=("wan_bf16", "wan_fp8", "hunyuan_fp8", "vae", "encoder", *MODES, "absorb"),
             stock=("wan_bf16", "hunyuan_fp8"),
             profiler: bool = True) -> list[dict]:
    """Each small case (:func:`small_case`) on fake tensors and on real CPU tensors under :func:`peak_tracker_class`
    (for the cases in ``stock`` also under the unmodified ``MemTracker``; with ``profiler`` also
    :func:`profiler_peak`). Returns rows in MiB with the relative differences to the fake estimate."""
    from torch.distributed._tools.mem_tracker import MemTracker

    rows = []
    for name in names:
        with fake_mode():
            est = measure(*_flat(small_case(name, fake=True)))
        run, ext = small_case(name, fake=False)
        real = measure(run, *ext)
        row = {"case": name, "fake_peak_mib": round(est["peak"] / MIB, 2), "real_peak_mib": round(real["peak"] / MIB, 2),
               "fake_act_mib": round(est["act"] / MIB, 2), "real_act_mib": round(real["act"] / MIB, 2),
               "diff_pct": round(100 * (real["peak"] - est["peak"]) / est["peak"], 2)}
        if name in stock:
            row["stock_tracker_mib"] = round(measure(run, *ext, tracker=MemTracker)["peak"] / MIB, 2)
        if profiler:
            row["profiler_mib"] = round(profiler_peak(run) / MIB, 2)
            row["profiler_vs_fake_pct"] = round(100 * (row["profiler_mib"] - row["fake_peak_mib"]) / row["fake_peak_mib"], 2)
        rows.append(row)
    return rows


def _flat(case):
    run, ext = case
    return (run, *ext)

