"""Memory with DiTs as users load them: fp8 weights (UNETLoader weight_dtype) and LoRAs applied by the stock
LoraLoaderModelOnly path; the encoder under ComfyUI's model management."""
from __future__ import annotations

import pytest
import torch
from memory_checks import random_memory, sample_tiny_wan
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def files(comfy, tmp_path_factory):
    from framememory.demo.tiny_models import tiny_wan21_dit

    d = tmp_path_factory.mktemp("compat")
    dm = tiny_wan21_dit(seed=0)
    save_file({k: v.contiguous() for k, v in dm.state_dict().items()}, str(d / "dit.safetensors"))
    g = torch.Generator().manual_seed(5)
    lora = {}
    for name, shape_a, shape_b in (
        ("blocks.0.self_attn.q", (8, 128), (128, 8)),
        ("blocks.1.ffn.0", (8, 128), (256, 8)),
        ("patch_embedding", (8, 16, 1, 2, 2), (128, 8, 1, 1, 1)),
    ):
        lora[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(shape_a, generator=g) * 0.2
        lora[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(shape_b, generator=g) * 0.2
    save_file(lora, str(d / "lora.safetensors"))
    return d


def test_fp8_weights_sample_with_memory(files):
    import comfy.sd
    from framememory.models.families import patch_embed

    model = comfy.sd.load_diffusion_model(str(files / "dit.safetensors"), model_options={"dtype": torch.float8_e4m3fn})
    assert model.model.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    with_mem = sample_tiny_wan(model, random_memory())
    without = sample_tiny_wan(model, None)
    assert torch.isfinite(with_mem).all() and (with_mem - without).abs().max() > 1e-3
    assert patch_embed(model, torch.randn(1, 16, 2, 8, 8)).shape == (1, 128, 2, 4, 4)


def test_stock_lora_applies_to_memory_sampling_and_lr_branch(files):
    import comfy.sd
    import comfy.utils
    from framememory.models.families import patch_embed

    base = comfy.sd.load_diffusion_model(str(files / "dit.safetensors"))
    lora_sd = comfy.utils.load_torch_file(str(files / "lora.safetensors"))
    lora_model, _ = comfy.sd.load_lora_for_models(base, None, lora_sd, 1.0, 0)  # what LoraLoaderModelOnly does
    assert len(lora_model.patches) == 3  # every LoRA key was recognised
    mem = random_memory()
    a, b = sample_tiny_wan(base, mem), sample_tiny_wan(lora_model, mem)
    assert torch.isfinite(b).all() and (a - b).abs().max() > 1e-3
    latent = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    # the LR branch goes through the DiT's own (LoRA-patched) patch embedding
    assert (patch_embed(lora_model, latent) - patch_embed(base, latent)).abs().max() > 1e-3


def test_encoder_is_a_managed_model(files):
    """The encoder runs as a ComfyUI model patcher: load_models_gpu puts it in current_loaded_models and the
    patcher's offload device is ComfyUI's unet offload device; the untrained (LR-only) encoder has no weights and no
    patcher."""
    import comfy.model_management as mm
    import comfy.sd
    from framememory.demo.tiny_models import tiny_encoder_config
    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.encoding import MemoryEncoder

    model = comfy.sd.load_diffusion_model(str(files / "dit.safetensors"))
    enc = MemoryEncoder(tiny_encoder_config(), HistoryEncoder(tiny_encoder_config()).state_dict(), "t")
    patcher = enc.patcher(model)
    assert patcher is enc.patcher(model)  # built once per width
    assert patcher.offload_device == mm.unet_offload_device() and patcher.load_device == mm.get_torch_device()
    mm.load_models_gpu([patcher])
    assert any(lm.model is patcher for lm in mm.current_loaded_models)
    assert all(p.device == patcher.load_device for p in patcher.model.parameters())
    assert type(patcher.model.hr.proj).__module__ == "comfy.ops"  # comfy.ops layers: streamable under low VRAM
    net, same = enc.network(model)  # the Fig. 2 encoder and its patcher
    assert same is patcher and net is patcher.model and net.hr is not None
    lr_only, none = MemoryEncoder.untrained().network(model)  # no weights: nothing to manage
    assert none is None and lr_only.hr is None and lr_only.cfg.dim == 128


def test_encoder_and_lr_branch_under_the_patcher_class_comfyui_installs(files, monkeypatch):
    """ComfyUI >= 0.12 makes ``CoreModelPatcher`` ``ModelPatcherDynamic`` (comfy-aimdo dynamic VRAM) on NVIDIA at
    start-up (main.py). The encoder's patcher class is looked up when the patcher is built, so the pack gets whatever
    ComfyUI installed: here a recording subclass, then (where it exists) ``ModelPatcherDynamic`` itself, which ComfyUI
    reroutes to ``ModelPatcher`` for a CPU load device: the dynamic path proper needs an NVIDIA GPU and is not run
    here. Under both, the encoder loads through load_models_gpu and the LR branch's patch_embed outside sampling gives
    the tokens of the plain patcher."""
    import comfy.model_management as mm
    import comfy.model_patcher as mp
    import comfy.sd
    from framememory.demo.tiny_models import tiny_encoder_config
    from framememory.memory.encoder import HistoryEncoder
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.families import patch_embed

    weights = HistoryEncoder(tiny_encoder_config()).state_dict()
    latent = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    reference = patch_embed(comfy.sd.load_diffusion_model(str(files / "dit.safetensors")), latent)
    built = []

    class Recording(mp.ModelPatcher):
        def __init__(self, *args, **kwargs):
            built.append(self)
            super().__init__(*args, **kwargs)

    classes = [Recording] + ([mp.ModelPatcherDynamic] if hasattr(mp, "ModelPatcherDynamic") else [])
    for cls in classes:
        monkeypatch.setattr(mp, "CoreModelPatcher", cls, raising=False)
        model = comfy.sd.load_diffusion_model(str(files / "dit.safetensors"))
        patcher = MemoryEncoder(tiny_encoder_config(), weights, "t").patcher(model)
        assert isinstance(patcher, mp.ModelPatcher)
        if cls is Recording:
            assert patcher in built
        mm.load_models_gpu([patcher])
        assert any(lm.model is patcher for lm in mm.current_loaded_models)
        torch.testing.assert_close(patch_embed(model, latent), reference, rtol=0, atol=0)
