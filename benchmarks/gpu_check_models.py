"""The models of the GPU check (benchmarks/gpu_check.py) with random weights, loaded through ComfyUI's own loaders:
Wan 2.1 1.3B's DiT (``WanModel``, UNETLoader's path), its VAE (``WanVAE``, VAELoader's), umt5-xxl fp8-scaled in
Comfy-Org's file layout with a small sentencepiece vocabulary trained here (CLIPLoader's), and the memory encoders as
files (Load Memory Encoder's). At real size or the dry run's tiny size (``size``: an entry of ``gpu_check.SIZES``)."""
from __future__ import annotations

import dataclasses
import io
import math
import os

PROMPTS = ("a cyclist rides down a sunny city street", "blurry, distorted, static, low quality")


def init_random(module, seed: int, device: str):
    """Every parameter of ``module`` from a seeded generator on ``device`` (fast on a GPU), copied into the module:
    matrices uniform +-sqrt(3 / fan_in), biases 0, norm scales 1, Wan modulation tables N(0, 1 / dim) (the rules of
    demo/tiny_models.init_weights); the DiT's output head 0, so sampled latents stay finite whatever the weights."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if "modulation" in name:
                v = torch.randn(p.shape, generator=g, device=device) / math.sqrt(p.shape[-1])
            elif leaf == "bias" or name.startswith("head.head."):
                v = torch.zeros(p.shape, device=device)
            elif p.ndim == 1 or "norm" in name or leaf in ("gamma", "scale"):
                v = torch.ones(p.shape, device=device)
            else:
                v = (torch.rand(p.shape, generator=g, device=device) * 2 - 1) * math.sqrt(3.0 / p[0].numel())
            p.copy_(v.to(p.dtype))
    return module


def dit_state_dict(size: dict, device: str, build_device: str = "cpu") -> dict:
    """A Wan 2.1 t2v ``WanModel`` of ``size`` (ComfyUI's class), random weights (bf16 at real size), as the state dict
    a diffusion_models file holds. ``build_device`` "meta": shapes only (tests)."""
    import torch

    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    dtype = getattr(torch, size["dtype"])  # bf16 at real size, as the Comfy-Org file; float32 for the CPU dry run
    dm = WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, out_dim=16, freq_dim=256,
                  text_dim=4096, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                  operations=comfy.ops.disable_weight_init, device=build_device, dtype=dtype, **size["dit"])
    if build_device != "meta":
        init_random(dm, 0, device)
    return dm.state_dict()


def load_dit(size: dict, device: str):
    """The DiT through UNETLoader's path (``comfy.sd.load_diffusion_model_state_dict``): ComfyUI detects Wan 2.1
    1.3B from the keys and shapes and wraps it in its model patcher."""
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(dit_state_dict(size, device))


def load_vae(size: dict, device: str):
    """The Wan 2.1 VAE (``WanVAE``, base width ``size['vae_dim']``) through VAELoader's path (``comfy.sd.VAE``)."""
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE

    vae = WanVAE(dim=size["vae_dim"], z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    return comfy.sd.VAE(sd=init_random(vae, 1, device).state_dict())


def spiece_model(texts) -> bytes:
    """A small sentencepiece model (pad 0, eos 1, unk 2, as umt5's) trained on ``texts``: the tokenizer the umt5-xxl
    file would carry, which cannot be downloaded here; token ids stay below its vocabulary, the model is real size."""
    import sentencepiece

    out = io.BytesIO()
    words = " ".join(texts).split()
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=40,
                                             pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
                                             minloglevel=2)
    return out.getvalue()


def umt5_scaled_layout() -> dict:
    """``{key: meta tensor}`` of umt5-xxl in Comfy-Org's fp8-scaled file layout: every Linear's weight fp8 e4m3fn and a
    float32 scalar ``scale_weight`` beside it, bf16 embedding and norms (the ``scaled_fp8`` marker is added by the
    caller). Built from ComfyUI's own class: before ComfyUI 0.4 with its ``t5xxl_scaled_fp8`` option (which has these
    keys), later (quantization metadata instead) in bf16 with every ``nn.Linear`` given that layout; the same keys."""
    import inspect

    import torch

    import comfy.text_encoders.wan

    fp8, bf16, prefix = torch.float8_e4m3fn, torch.bfloat16, "umt5xxl.transformer."
    if "t5xxl_scaled_fp8" in inspect.signature(comfy.text_encoders.wan.te).parameters:
        te = comfy.text_encoders.wan.te(dtype_t5=bf16, t5xxl_scaled_fp8=fp8)(device="meta", dtype=bf16)
        sd = dict(te.state_dict())
    else:
        te = comfy.text_encoders.wan.te(dtype_t5=bf16)(device="meta", dtype=bf16)
        sd = dict(te.state_dict())
        for name, m in te.named_modules():
            if isinstance(m, torch.nn.Linear):
                sd[f"{name}.weight"] = torch.empty(m.weight.shape, dtype=fp8, device="meta")
                sd[f"{name}.scale_weight"] = torch.empty((), dtype=torch.float32, device="meta")
    # the wrapper's own logit_scale is not in the file; neither is the marker (added by umt5_state_dict)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and not k.endswith("scaled_fp8")}


def umt5_state_dict(device: str, build_device: str = "cpu") -> dict:
    """umt5-xxl as Comfy-Org's ``umt5_xxl_fp8_e4m3fn_scaled`` holds it (ComfyUI's own class built with fp8-scaled
    linears: fp8 e4m3fn weights + ``scale_weight``, bf16 embedding and norms, the ``scaled_fp8`` marker), random
    weights generated on ``device``. ``build_device`` "meta": shapes only (tests). Layout: :func:`umt5_scaled_layout`."""
    import torch

    fp8 = torch.float8_e4m3fn
    sd = {}
    g = torch.Generator(device=device).manual_seed(2)
    for k, v in umt5_scaled_layout().items():
        if build_device == "meta":
            sd[k] = torch.empty(v.shape, dtype=v.dtype, device="meta")
        elif k.endswith("scale_weight") or "layer_norm" in k:
            sd[k] = torch.ones(v.shape, dtype=v.dtype)
        else:  # drawn in bf16 on the device (the 1 B-entry embedding is 2 GiB there), stored in the file's dtype
            bound = math.sqrt(3.0 / v[0].numel()) if v.ndim > 1 else 0.02
            r = torch.rand(v.shape, generator=g, device=device, dtype=torch.bfloat16)
            sd[k] = r.mul_(2).sub_(1).mul_(bound).to(v.dtype).cpu()
            del r
    sd["scaled_fp8"] = torch.empty(0, dtype=fp8, device=build_device)
    return sd


def load_text_encoder(size: dict, device: str):
    """Real size: umt5-xxl through CLIPLoader's path (``comfy.sd.load_text_encoder_state_dicts``, type wan); tiny:
    the pack's stand-in text encoder (demo/text_encoder.py)."""
    if size["text"] == "stand-in":
        from framememory.demo.text_encoder import StandInTextEncoder

        return StandInTextEncoder()
    import torch

    import comfy.sd

    sd = umt5_state_dict(device)
    sd["spiece_model"] = torch.frombuffer(bytearray(spiece_model(PROMPTS)), dtype=torch.uint8)
    return comfy.sd.load_text_encoder_state_dicts([sd], clip_type=comfy.sd.CLIPType.WAN)


def encoder_files(size: dict, folder: str) -> dict:
    """The memory encoders as files through Load Memory Encoder's path (``MemoryEncoder.from_file``): the Fig. 2
    encoder at 4x4x2 (frame_preservation, and pack_forcing with its defaults sink 2 / recent 2 / top-K 16, as
    vram_estimate.py plans it) and a VideoSSM state file (every block, ``ssm_heads`` x ``ssm_key_dim``)."""
    from framememory.memory.config import EncoderConfig
    from framememory.memory.encoder import HistoryEncoder
    from framememory.memory.io import save_encoder
    from framememory.memory.designs.video_ssm import StateMemory
    from framememory.models.encoding import MemoryEncoder
    from framememory.memory.designs.video_ssm import DEFAULTS as SSM_DEFAULTS

    dim = size["dit"]["dim"]
    fp = EncoderConfig(family="wan21", dim=dim, rate=(4, 4, 2), hr_channels=size["hr_channels"],
                       attn_heads=size["attn_heads"])
    ssm = dataclasses.replace(fp, memory_type="video_ssm", use_hr=False, dit_blocks=size["dit"]["num_layers"],
                              ssm_heads=size["ssm_heads"], ssm_key_dim=size["ssm_key_dim"], **SSM_DEFAULTS)
    out = {}
    for name, cfg, net in (("fig2", fp, HistoryEncoder), ("video_ssm", ssm, StateMemory)):
        path = os.path.join(folder, f"gpu_check_{name}.safetensors")
        save_encoder(path, net(cfg).state_dict(), cfg)
        out[name] = MemoryEncoder.from_file(path)
    return out


def encoder_for(encoders: dict, mode: str):
    return encoders["video_ssm"] if mode == "video_ssm" else encoders["fig2"]


class MeasuredClip:
    """The text encoder as the Storyboard uses it (``tokenize``, ``encode_from_tokens_scheduled``), each encode timed
    and its VRAM peak recorded as phase ``text`` (``models.telemetry.phase``) into ``stats``."""

    def __init__(self, clip, stats: dict) -> None:
        self.clip, self.stats = clip, stats

    def tokenize(self, text: str, **kwargs):
        return self.clip.tokenize(text, **kwargs)

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        from framememory.models.telemetry import phase

        with phase(self.stats, "text"):
            return self.clip.encode_from_tokens_scheduled(tokens, **kwargs)

