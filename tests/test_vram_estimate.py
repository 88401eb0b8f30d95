"""benchmarks/vram_estimate.py (issue 13): the fake-tensor VRAM estimate agrees with a real CPU run, and its replay of
ComfyUI's loading rules agrees with ComfyUI's own ``ModelPatcher``.

Small configurations only (ComfyUI's WanModel at width 256, 2 blocks, 208x112, 20 s of history at 2x2x2 through the
product path's memory patches, cond + uncond; PackForcing and VideoSSM at 20 s and 120 s): about 20 s on 2 CPU
cores.
"""
from __future__ import annotations

import math
import sys

import pytest

TOLERANCE = 0.01  # fake vs real peak, relative: the tracker sees the same storages (measured: < 0.1 %)


@pytest.fixture(scope="module")
def vram(comfy, repo_root):
    sys.path.insert(0, str(repo_root / "benchmarks"))
    try:
        import vram_estimate
    finally:
        sys.path.remove(str(repo_root / "benchmarks"))
    vram_estimate.comfy_setup()
    return vram_estimate


@pytest.mark.parametrize("case", ["wan_bf16", "wan_fp8"])
def test_fake_estimate_matches_real_cpu_run(vram, case):
    """The same tracker on fake and on real CPU tensors gives the same peak (bf16 weights; fp8 weights cast to bf16
    per layer by manual_cast), and the peak-only tracker equals the stock MemTracker on the real run."""
    from torch.distributed._tools.mem_tracker import MemTracker

    with vram.fake_mode():
        fake = vram.measure(*vram._flat(vram.small_case(case, fake=True)))
    run, ext = vram.small_case(case, fake=False)
    real = vram.measure(run, *ext)
    assert fake["act"] > 0 and fake["weights"] > 0
    assert abs(real["peak"] - fake["peak"]) <= TOLERANCE * fake["peak"], (fake, real)
    assert real["act"] == pytest.approx(fake["act"], rel=TOLERANCE)
    if case == "wan_bf16":
        assert vram.measure(run, *ext, tracker=MemTracker)["peak"] == real["peak"]


def test_memory_tokens_reach_every_block(vram):
    """Through the product path, 20 s of memory at 2x2x2 adds its tokens to the inputs and grows the activations by
    more than the tokens themselves (every block carries them); 0 s adds nothing."""
    spec = {**vram.MODELS["wan21_1.3b_bf16"], **vram.SMALL}
    with vram.fake_mode():
        dm = vram.build_dit(spec)
        opts = vram.dit_options(spec, dm)
        none, mem = (vram.dit_step(spec, dm, opts, 2, s, "2x2x2") for s in (0, 20))
    m, dim = mem["M"], spec["dit"]["dim"]
    assert none["M"] == 0 and m == vram.history_tokens(spec, 20, "2x2x2")[0] > 0
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
    monkeypatch.setattr(vram, "NUM_STREAMS", mm.NUM_STREAMS)
    cpu = torch.device("cpu")
    for budget in (0.1, 1_200_000, 2_000_000, 5_000_000):
        mp = comfy.model_patcher.ModelPatcher(net, load_device=cpu, offload_device=cpu)
        mp.load(cpu, lowvram_model_memory=budget)
        ours = vram.Patcher("net", vram.load_list(net))
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

    gib = vram.GIB
    card = vram.Card(12 * gib, 0.5 * gib)
    dit = vram.Patcher("DiT", [(60 * 2**20, 60 * 2**20, True)] * 240)  # 14 GiB of 60 MiB layers
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

    spec = {**vram.MODELS["wan21_1.3b_bf16"], **vram.SMALL}
    with vram.fake_mode():
        dm = vram.build_dit(spec)
        opts = vram.dit_options(spec, dm)
        ssm, reads = vram.build_state_memory(spec), []
        read = ssm.read
        ssm.read = lambda i, *args: reads.append(i) or read(i, *args)  # count the read-outs (product path)
        fp = {s: vram.dit_step(spec, dm, opts, 2, s, vram.MODE_RATE) for s in (20, 120)}
        pf = {s: vram.mode_step(spec, dm, opts, 2, s, "pack_forcing") for s in (20, 120)}
        ssm_rows = {s: vram.mode_step(spec, dm, opts, 2, s, "video_ssm", ssm) for s in (20, 120)}

    def growth(rows: dict) -> float:
        return rows[120]["act"] / rows[20]["act"] - 1

    assert fp[120]["M"] > fp[20]["M"] and growth(fp) > 4 * vram.FLAT_TOLERANCE
    for rows in (pf, ssm_rows):
        assert rows[120]["M"] == rows[20]["M"] and abs(growth(rows)) <= vram.FLAT_TOLERANCE
    cfg, dim = vram.mode_config(spec, "pack_forcing"), spec["dit"]["dim"]
    frame = (spec["height"] // 16) * (spec["width"] // 16)  # DiT tokens of one latent frame
    block = math.prod(memory_grid((2, spec["height"] // 8, spec["width"] // 8), cfg))  # one memory time step
    assert pf[120]["M"] == (cfg.sink_latent_frames + cfg.overlap_latent_frames) * frame + cfg.top_k * block
    carried = pf[120]["M_carried"] - pf[20]["M_carried"]
    assert carried > 0 and pf[120]["inputs"] - pf[20]["inputs"] == 2 * carried * (dim * 2 + 3 * 8 + 8)
    assert ssm_rows[120]["M"] == (1 + 3) * frame
    assert reads == [*range(spec["dit"]["num_layers"])] * 2  # every block read its state, at 20 s and at 120 s
