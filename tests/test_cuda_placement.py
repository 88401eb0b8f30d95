"""Device placement of the history encoder under ComfyUI's model management, on a real CUDA device (issue 3).

Needs a CUDA GPU, so it is marked ``cuda`` and left out of the default suite. Run it with

    FRAMEMEMORY_TEST_GPU=1 python -m pytest -m cuda tests/test_cuda_placement.py

(``FRAMEMEMORY_TEST_GPU=1`` keeps conftest from forcing ComfyUI onto the CPU). Without a CUDA device it fails with
that message: a test that cannot run here must not pass.

What it checks, on the tiny Wan 2.1 models of the embedded default and an encoder with the paper's HR widths
(64..512), while a ballast tensor leaves too little free VRAM for the DiT and the encoder together (the situation
of a 12 GB card with real models, scaled down):

* the encoder is loaded on the GPU by ``comfy.model_management.load_models_gpu`` when a segment is encoded;
* during every DiT call of the sampling loop the encoder's weights are back on its offload device (ComfyUI's
  ``free_memory`` unloaded it to make room for the DiT), and the DiT's weights are on the GPU;
* the history (latents, memory tokens, positions) stays on the CPU throughout;
* the loop still produces the right number of finite frames.

Status (2026-11-23): not yet run on a GPU (none was lent to the session that wrote it). A copy with the device
checks turned to CPU and no ballast passed, so the storyboard/wrapper plumbing is right; the ballast arithmetic
(``ComfyUI load_models_gpu``: it frees ``1.1 x model size + minimum_inference_memory()``) is untested on CUDA.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.cuda


def _param_devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


@pytest.fixture(scope="module")
def cuda_comfy(comfy):
    import comfy.model_management as mm

    if os.environ.get("FRAMEMEMORY_TEST_GPU") != "1" or not torch.cuda.is_available():
        pytest.fail("this test needs a CUDA GPU and FRAMEMEMORY_TEST_GPU=1 (conftest otherwise forces ComfyUI onto the "
                    "CPU); run: FRAMEMEMORY_TEST_GPU=1 python -m pytest -m cuda tests/test_cuda_placement.py")
    assert mm.get_torch_device().type == "cuda"
    return comfy


def test_encoder_is_offloaded_while_the_dit_samples(cuda_comfy, tiny_wan):
    import comfy.model_management as mm
    import comfy.patcher_extension
    from framememory.memory.config import EncoderConfig
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, _, clip, video = tiny_wan
    dev = mm.get_torch_device()
    encoder = MemoryEncoder(EncoderConfig(family="wan21", dim=128, rate="4x4x2"))  # HR widths 64, 128, 256, 512
    enc_patcher = encoder.patcher(model)
    enc_bytes = enc_patcher.model_size()
    dit_bytes = model.model_size()
    assert enc_bytes > 16 * 2**20, enc_bytes  # big enough that the margin below is not allocator noise

    mm.unload_all_models()
    mm.soft_empty_cache(True)
    # Free VRAM: what the DiT needs (ComfyUI asks for 1.1 x its size plus the minimum inference memory) plus half the
    # encoder. Loading the DiT while the encoder is resident then has to unload the encoder.
    target = int(1.1 * dit_bytes + mm.minimum_inference_memory() + 0.5 * enc_bytes)
    free = mm.get_free_memory(dev)
    assert free > target, f"GPU has only {free / 2**30:.2f} GiB free"
    ballast = torch.empty(free - target, dtype=torch.uint8, device=dev)

    seen = {"dit_calls": 0, "encoder_on_gpu_in_dit_call": 0, "dit_on_cpu_in_dit_call": 0}

    def record(executor, x, timestep, *args, **kwargs):
        seen["dit_calls"] += 1
        if "cuda" in _param_devices(enc_patcher.model):
            seen["encoder_on_gpu_in_dit_call"] += 1
        if _param_devices(model.model.diffusion_model) != {"cuda"}:
            seen["dit_on_cpu_in_dit_call"] += 1
        return executor(x, timestep, *args, **kwargs)

    watched = model.clone()
    watched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_placement", record)
    try:
        start, _ = history_from_frames(watched, vae, encoder, video, 4, 16.0, 256, 128)
        # the encoder ran on the GPU and is still resident (nothing needed the room yet)
        assert _param_devices(enc_patcher.model) == {"cuda"}
        assert any(lm.model is enc_patcher for lm in mm.current_loaded_models)
        for seg in start.history.segments:
            assert seg.latent.device.type == "cpu"
        neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
        shots = parse_storyboard("0.8 | a cyclist\n0.8 | a car")
        frames, final, report = run_storyboard(watched, vae, clip, encoder, neg, shots,
                                               SamplerSettings(2, 3.0, "euler", "simple", 1), 256, 128, 16.0, 4, start)
    finally:
        del ballast
        mm.unload_all_models()
        mm.soft_empty_cache(True)

    assert seen["dit_calls"] >= 4  # 2 segments x 2 steps (cond and uncond batched)
    assert seen["encoder_on_gpu_in_dit_call"] == 0, seen
    assert seen["dit_on_cpu_in_dit_call"] == 0, seen
    assert frames.shape == (26, 128, 256, 3) and torch.isfinite(frames).all()
    assert final.history.num_tokens == 2 * report["segments"][0]["memory_tokens"]  # 4 segments, 2 before the first
    for seg in final.history.segments:
        assert seg.latent.device.type == "cpu"
        assert seg.encoded and all(t.device.type == "cpu" for entry in seg.encoded.values() for t in entry)
