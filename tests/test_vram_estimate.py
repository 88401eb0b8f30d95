"""benchmarks/vram_estimate.py (issue 13): the fake-tensor VRAM estimate agrees with a real CPU run, and its replay of
ComfyUI's loading rules agrees with ComfyUI's own ``ModelPatcher``.

Small configurations only (ComfyUI's WanModel at width 256, 2 blocks, 208x112, 20 s of history at 2x2x2 through the
product path's memory patches, cond + uncond; PackForcing and VideoSSM at 20 s and 120 s): about 20 s on 2 CPU
cores.
"""
from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest

TOLERANCE = 0.01  # fake vs real peak, relative: the tracker sees the same storages (measured: < 0.1 %)


@pytest.fixture(scope="module")
def vram(comfy, repo_root):
    """The estimate's modules, ComfyUI imported as vram_estimate.py imports it: ``specs`` (benchmarks/vram_specs.py),
    ``measure`` (vram_measure.py), ``plan`` (vram_plan.py), ``validate`` (vram_validate.py)."""
    from framememory.headless.comfy_import import import_comfyui

    sys.path.insert(0, str(repo_root / "benchmarks"))
    try:
        import vram_measure
        import vram_plan
        import vram_specs
        import vram_validate
    finally:
        sys.path.remove(str(repo_root / "benchmarks"))
    import_comfyui(cpu=True, sdpa=True)
    return SimpleNamespace(specs=vram_specs, measure=vram_measure, plan=vram_plan, validate=vram_validate)


@pytest.mark.parametrize("case", ["wan_bf16", "wan_fp8"])
def test_fake_estimate_matches_real_cpu_run(vram, case):
    """The same tracker on fake and on real CPU tensors gives the same peak (bf16 weights; fp8 weights cast to bf16
    per layer by manual_cast), and the peak-only tracker equals the stock MemTracker on the real run."""
    from torch.distributed._tools.mem_tracker import MemTracker

    with vram.measure.fake_mode():
        fake = vram.measure.measure(*vram.validate._flat(vram.validate.small_case(case, fake=True)))
    run, ext = vram.validate.small_case(case, fake=False)
    real = vram.measure.measure(run, *ext)
    assert fake["act"] > 0 and fake["weights"] > 0
    assert abs(real["peak"] - fake["peak"]) <= TOLERANCE * fake["peak"], (fake, real)
    assert real["act"] == pytest.approx(fake["act"], rel=TOLERANCE)
    if case == "wan_bf16":
        assert vram.measure.measure(run, *ext, tracker=MemTracker)["peak"] == real["peak"]


def test_memory_tokens_reach_every_block(vram):
    """Through the product path, 20 s of memory at 2x2x2 adds its tokens to the inputs and grows the activations by
    more than the tokens themselves (every block carries them); 0 s adds nothing."""
    spec = {**vram.specs.MODELS["wan21_1.3b_bf16"], **vram.specs.SMALL}
    with vram.measure.fake_mode():
        dm = vram.measure.build_dit(spec)
        opts = vram.measure.dit_options(spec, dm)
        none, mem = (vram.measure.dit_step(spec, dm, opts, 2, s, "2x2x2") for s in (0, 20))
    m, dim = mem["M"], spec["dit"]["dim"]
    assert none["M"] == 0 and m == vram.measure.history_tokens(spec, 20, "2x2x2")[0] > 0
    tokens_bytes = 2 * m * dim * 2  # [B=2, M, D] bf16
    assert mem["inputs"] - none["inputs"] >= tokens_bytes
    assert mem["act"] - none["act"] > tokens_bytes


def test_patcher_replay_matches_comfy_model_patcher(vram, monkeypatch):
    """``Patcher.load`` / ``partially_unload`` reproduce ComfyUI's ``ModelPatcher.load`` / ``partially_unload`` on a
    real module (loaded bytes, offload buffer, low-VRAM flag), with this machine's NUM_STREAMS."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import torch

    ops = comfy.ops.manual_cast
    net = torch.nn.ModuleDict({"a": ops.Linear(256, 512), "b": ops.Linear(512, 512), "d": ops.Conv3d(8, 16, 3),
                               "c": torch.nn.ModuleList([ops.Linear(128, 128) for _ in range(5)])})
    monkeypatch.setattr(vram.plan, "NUM_STREAMS", mm.NUM_STREAMS)
    cpu = torch.device("cpu")
    for budget in (0.1, 1_200_000, 2_000_000, 5_000_000):
        mp = comfy.model_patcher.ModelPatcher(net, load_device=cpu, offload_device=cpu)
        mp.load(cpu, lowvram_model_memory=budget)
        ours = vram.plan.Patcher("net", vram.measure.load_list(net))
        ours.load(budget, full=False)
        assert (ours.on_card, ours.buffer, ours.lowvram) == (
            net.model_loaded_weight_memory, net.model_offload_buffer_memory, net.model_lowvram), budget
        for free in (100_000, 400_000):
            assert ours.partially_unload(free) == mp.partially_unload(cpu, memory_to_free=free)
            assert (ours.on_card, ours.buffer) == (net.model_loaded_weight_memory, net.model_offload_buffer_memory)
        mp.detach()


def test_card_keeps_comfy_inference_reserve(vram):
    """A DiT larger than the card is partially loaded so that ComfyUI's minimum memory stays free: loaded weights +
    offload buffer + max(minimum_inference_memory, memory_required + reserve) fit the card."""
    import comfy.model_management as mm

    gib = vram.specs.GIB
    card = vram.plan.Card(12 * gib, 0.5 * gib)
    dit = vram.plan.Patcher("DiT", [(60 * 2**20, 60 * 2**20, True)] * 240)  # 14 GiB of 60 MiB layers
    card.load_models_gpu([dit], memory_required=2 * gib, minimum_memory_required=1 * gib)
    assert dit.lowvram and 0 < dit.on_card < dit.size
    reserve = max(mm.minimum_inference_memory(), 1 * gib + mm.extra_reserved_memory())
    assert dit.on_card + dit.buffer + reserve <= 11.5 * gib
    assert card.free() >= reserve


def test_bounded_modes_flat_while_frame_preservation_grows(vram):
    """PackForcing and VideoSSM through the product path (``pack_context``'s scoring, top-K and re-packing on the
    carried conds; ``StateMemory.read`` after every block) at the validation size: from 20 s to 120 s of history the
    tokens the blocks attend to stay the same and the DiT step's activations stay within 5 %, while Frame
    Preservation's grow. PackForcing's conds still carry every compressed mid block: its inputs grow by exactly those
    tokens (bf16 tokens, int64 positions and labels), nothing else."""
    from framememory.memory.grid import memory_grid

    spec = {**vram.specs.MODELS["wan21_1.3b_bf16"], **vram.specs.SMALL}
    with vram.measure.fake_mode():
        dm = vram.measure.build_dit(spec)
        opts = vram.measure.dit_options(spec, dm)
        ssm, reads = vram.measure.build_state_memory(spec), []
        read = ssm.read
        ssm.read = lambda i, *args: reads.append(i) or read(i, *args)  # count the read-outs (product path)
        fp = {s: vram.measure.dit_step(spec, dm, opts, 2, s, vram.specs.MODE_RATE) for s in (20, 120)}
        pf = {s: vram.measure.mode_step(spec, dm, opts, 2, s, "pack_forcing") for s in (20, 120)}
        ssm_rows = {s: vram.measure.mode_step(spec, dm, opts, 2, s, "video_ssm", ssm) for s in (20, 120)}

    def growth(rows: dict) -> float:
        return rows[120]["act"] / rows[20]["act"] - 1

    assert fp[120]["M"] > fp[20]["M"] and growth(fp) > 4 * vram.specs.FLAT_TOLERANCE
    for rows in (pf, ssm_rows):
        assert rows[120]["M"] == rows[20]["M"] and abs(growth(rows)) <= vram.specs.FLAT_TOLERANCE
    cfg, dim = vram.measure.mode_config(spec, "pack_forcing"), spec["dit"]["dim"]
    frame = (spec["height"] // 16) * (spec["width"] // 16)  # DiT tokens of one latent frame
    block = math.prod(memory_grid((2, spec["height"] // 8, spec["width"] // 8), cfg))  # one memory time step
    assert pf[120]["M"] == (cfg.sink_latent_frames + cfg.overlap_latent_frames) * frame + cfg.top_k * block
    carried = pf[120]["M_carried"] - pf[20]["M_carried"]
    assert carried > 0 and pf[120]["inputs"] - pf[20]["inputs"] == 2 * carried * (dim * 2 + 3 * 8 + 8)
    assert ssm_rows[120]["M"] == (1 + 3) * frame
    assert reads == [*range(spec["dit"]["num_layers"])] * 2  # every block read its state, at 20 s and at 120 s


def test_plan_uses_comfy_estimate_with_the_declared_memory(vram, monkeypatch):
    """The replay's ``memory_required`` is ComfyUI's own ``BaseModel.memory_required`` (the NVIDIA flash-attention
    branch, run here on the installed ComfyUI) of the noise shape the pack declares (``memory_plan.planned_shape``):
    the memory tokens count 2 x at batch 2 and 1 x at batch 1, 4 latent cells a token."""
    import types

    import comfy.model_base
    import comfy.model_management
    import comfy.supported_models as sm
    import torch

    from framememory.models.memory_plan import planned_shape

    monkeypatch.setattr(comfy.model_management, "pytorch_attention_flash_attention", lambda: True)
    for name in ("wan21_1.3b_bf16", "wan21_14b_fp8", "hunyuan_video_fp8"):
        spec = vram.specs.MODELS[name]
        factor = (sm.HunyuanVideo.memory_usage_factor if spec["kind"] == "hunyuan" else
                  sm.WAN21_T2V({"image_model": "wan2.1", "model_type": "t2v", "dim": spec["dit"]["dim"]}).memory_usage_factor)
        model = types.SimpleNamespace(memory_usage_factor_conds=(), memory_usage_shape_process={}, manual_cast_dtype=None,
                                      memory_usage_factor=factor, get_dtype=lambda: torch.bfloat16,
                                      get_dtype_inference=lambda: torch.bfloat16)
        h, w = spec["height"] // spec["stride"][1], spec["width"] // spec["stride"][2]
        for batch, attended in ((2, 0), (2, 21840), (1, 21840)):
            shape = planned_shape([batch, spec["channels"], vram.specs.SEGMENT_LATENTS, h, w], attended, 4)
            assert vram.plan.dit_memory_required(spec, batch, attended) == pytest.approx(
                comfy.model_base.BaseModel.memory_required(model, shape), rel=1e-9), (name, batch, attended)
        extra = vram.plan.dit_memory_required(spec, 2, 1000) - vram.plan.dit_memory_required(spec, 2)
        assert extra == pytest.approx(2 * (vram.plan.dit_memory_required(spec, 1, 1000) - vram.plan.dit_memory_required(spec, 1)))


def test_absorb_declaration_covers_the_measured_absorb(vram):
    """What the pack declares for one VideoSSM absorb call (``memory_plan.absorb_bytes``) covers its activation peak
    measured on the product's ``StateMemory.absorb`` (fake tensors) by at most 2x, at the validation size and for a
    token count that is no multiple of the delta rule's chunk."""
    from framememory.models.memory_plan import absorb_bytes

    spec = {**vram.specs.MODELS["wan21_1.3b_bf16"], **vram.specs.SMALL}
    with vram.measure.fake_mode():
        ssm = vram.measure.build_state_memory(spec)
        for frames in (1, 4):
            step = vram.measure.absorb_step(spec, ssm, frames)
            assert step["tokens"] % 64 and step["declared"] == absorb_bytes(ssm.cfg, step["tokens"])
            assert step["act"] + step["inputs"] <= step["declared"] <= 2 * (step["act"] + step["inputs"]), step


def test_why_not_names_the_reason_and_what_to_set(comfy, repo_root):
    """Rows that fit at no ``--reserve-vram`` up to 4 GiB get the limiting phase's reason and the best fitting
    alternative at the same history (a rate, a mode, or a shorter history); fitting rows get none."""
    sys.path.insert(0, str(repo_root / "benchmarks"))
    try:
        import vram_report
    finally:
        sys.path.remove(str(repo_root / "benchmarks"))

    def row(**kw):
        base = dict(model="m", history_s=120, rate="4x4x2", M=100, dit_act_b1_gib=3.0, text_gib=8.0,
                    text_margin_gib=0.3, sample_gib=10.0, sample_margin_gib=0.5, decode_gib=9.0, decode_margin_gib=0.5,
                    peak_plus_margin_gib=10.5, fits=True, reserve_vram_needed_gib=0.4)
        return {**base, **kw}

    big = row(rate="2x2x2", M=9000, sample_gib=13.0, peak_plus_margin_gib=13.9, fits=False, reserve_vram_needed_gib=None)
    short = row(rate="2x2x2", history_s=60, M=4500, fits=False, reserve_vram_needed_gib=1.2)
    ok = row()
    absorb = row(absorb_gib=15.0, absorb_margin_gib=1.0, absorb_act_gib=9.0, absorb_declared_gib=11.0,
                 absorb_proj_gib=5.9, peak_plus_margin_gib=16.0, fits=False, reserve_vram_needed_gib=None,
                 mode="video_ssm", rate="-")
    pf = row(mode="pack_forcing", peak_plus_margin_gib=10.9, fits=False, reserve_vram_needed_gib=0.9)
    vram_report.add_why_not([big, short, ok], [absorb, pf])
    assert "why_not" not in ok and "why_not" not in short and "why_not" not in pf
    assert "9000 memory tokens" in big["why_not"] and "3.00 GiB" in big["why_not"]
    assert big["set_instead"] == "memory_mode frame_preservation with a 4x4x2 encoder (10.50 GiB)"
    assert "absorb of one latent frame needs 9.00 GiB" in absorb["why_not"] and "5.90 GiB" in absorb["why_not"]
    assert absorb["set_instead"] == "memory_mode frame_preservation with a 4x4x2 encoder (10.50 GiB)"
    alone = row(rate="2x2x2", M=9000, sample_gib=13.0, peak_plus_margin_gib=13.9, fits=False,
                reserve_vram_needed_gib=None)
    vram_report.add_why_not([alone, short], [])
    assert alone["set_instead"].startswith("at most 60 s of history")


def test_result_file_gives_every_120_s_row_a_verdict(repo_root):
    """benchmarks/results/vram_estimate.json keeps its ``rows`` / ``mode_rows`` layout (gpu_check.py reads it) and
    every row at 120 s of history fits with ComfyUI's defaults, names the smallest ``--reserve-vram`` that fits, or
    says why not and what to set instead; every model and bounded mode the issue lists is there."""
    import json

    data = json.loads((repo_root / "benchmarks" / "results" / "vram_estimate.json").read_text())
    rows = [r for r in data["rows"] + data["mode_rows"] if r["history_s"] == 120]
    want = {("wan21_1.3b_bf16", "4x4x2"), ("wan21_14b_fp8", "4x4x2"), ("wan22_5b_bf16", "4x4x2"),
            ("wan22_5b_fp8", "4x4x2"), ("hunyuan_video_fp8", "4x4x2")}
    assert want <= {(r["model"], r["rate"]) for r in data["rows"] if r["history_s"] == 120}
    modes = {(r["model"], r["mode"]) for r in data["mode_rows"] if r["history_s"] == 120}
    assert {(m, mode) for m in ("wan21_1.3b_bf16", "wan21_14b_fp8", "wan22_5b_bf16")
            for mode in ("pack_forcing", "video_ssm")} <= modes
    for r in rows:
        assert not {"fits_declared", "peak_plus_margin_declared_gib"} & set(r)  # the plan is what ComfyUI now does
        if r["fits"]:
            assert r["peak_plus_margin_gib"] <= data["target_gib"] and "why_not" not in r
        elif r["reserve_vram_needed_gib"] is not None:
            assert r["reserve_peak_plus_margin_gib"] <= data["target_gib"] and "why_not" not in r
        else:
            assert r["why_not"] and r["set_instead"], r
