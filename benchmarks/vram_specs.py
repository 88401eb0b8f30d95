"""The models, card and margins of the VRAM estimate (benchmarks/vram_estimate.py): ComfyUI's real-size
configurations of every family the pack runs, the 12 GiB card the plan is made for, and the bounded memory modes'
settings. Constants only (no torch, no ComfyUI)."""
from __future__ import annotations

GIB = 2 ** 30
MIB = 2 ** 20
TARGET_GIB = 11.5          # issue 13: peak at 120 s of history on a 12 GB card
CARD_GIB = 12.0            # RTX 4070: 12 GiB (cudaMemGetInfo total 12282 MiB ~ 11.99 GiB)
CUDA_CONTEXT_GIB = 0.5     # CUDA context + cuBLAS handles: visible to ComfyUI as used memory (see MARGIN)
DEFAULT_RESERVE_GIB = 0.4  # ComfyUI's EXTRA_RESERVED_VRAM on Linux (--reserve-vram unset)
HISTORIES = (0, 20, 60, 120)
RATES = ("4x4x2", "2x2x2")
SEGMENT_LATENTS = 4        # 1 s segment on Wan 2.1 (16 frames at 16 fps)
PATCH_VOLUME = 4           # latent cells per DiT token (patch 1x2x2, every family)
# What the fake-tensor estimate cannot see, added on top of the planned peak (see the README section):
MARGIN = dict(allocator_frac=0.10,  # caching-allocator rounding / fragmentation, fraction of the activation peak
              workspaces_gib=0.25,  # cuBLAS / cuDNN (Conv3d in the VAE) workspaces
              sage=True)            # sageattention: int8 q, k + fp16 v of the largest attention call
MODES = ("pack_forcing", "video_ssm")  # models/memory_modes.py, Wan families only
MODE_MODELS = ("wan21_1.3b_bf16", "wan21_14b_fp8", "wan22_5b_bf16")
MODE_HISTORIES = (20, 60, 120)
MODE_RATE = "4x4x2"  # PackForcing's compressed mid blocks: the Fig. 2 encoder at 4x4x2 (a block = one memory time step)
SSM_VALUE_DIM = 128  # VideoSSM state [H, dv, dk] per block, H = D / dv: 12 heads on the 1.3B, 40 on the 14B
SSM_KEY_DIM = 64
CONSTANT_LIMIT = 1 << 22  # FakeTensor constants up to this many elements (index metadata, see fake_constants)
FLAT_TOLERANCE = 0.05  # issue 13: a bounded memory mode's peak stays within 5 % from 20 s to 120 s of history
MODELS = {
    "wan21_1.3b_bf16": dict(kind="wan", adapter="wan", weight="bfloat16", width=832, height=480, fps=16, channels=16,
                            stride=(4, 8, 8), vae="wan21", te="umt5", text_len=512, cfg=5.0,
                            dit=dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)),
    "wan21_14b_fp8": dict(kind="wan", adapter="wan", weight="float8_e4m3fn", width=832, height=480, fps=16, channels=16,
                          stride=(4, 8, 8), vae="wan21", te="umt5", text_len=512, cfg=5.0,
                          dit=dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)),
    "wan22_5b_bf16": dict(kind="wan", adapter="wan22", weight="bfloat16", width=832, height=480, fps=24, channels=48,
                          stride=(4, 16, 16), vae="wan22", te="umt5", text_len=512, cfg=5.0,
                          dit=dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30)),
    # the 5B with fp8 weights (a remedy), only the rows that need it:
    "wan22_5b_fp8": dict(kind="wan", adapter="wan22", weight="float8_e4m3fn", width=832, height=480, fps=24, channels=48,
                         stride=(4, 16, 16), vae="wan22", te="umt5", text_len=512, cfg=5.0,
                         dit=dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30),
                         cases=((0, "4x4x2"), (120, "4x4x2"), (120, "2x2x2"))),
    "hunyuan_video_fp8": dict(kind="hunyuan", adapter="hunyuan", weight="float8_e4m3fn", width=848, height=480, fps=24,
                              channels=16, stride=(4, 8, 8), vae="hunyuan", te="llava_llama3", text_len=256, cfg=1.0,
                              dit=dict(hidden_size=3072, num_heads=24, depth=20, depth_single_blocks=40)),
}
HUNYUAN_DIT = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                   mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2], qkv_bias=True,
                   guidance_embed=True, byt5=False, meanflow=False, use_cond_type_embedding=False, vision_in_dim=None)
HUNYUAN_VAE = dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                   num_res_blocks=2, attn_resolutions=[], dropout=0.0, conv3d=True, time_compress=4)  # comfy/sd.py
WAN_VAE = dict(z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True],
               dropout=0.0)  # comfy/sd.py, Wan 2.1 VAE (dim read from the state dict: 96)

MIXED = "2x2x2 last 20 s + 4x4x2"  # a coarser rate for old history (a combination the pack does not offer yet)
SMALL = dict(width=208, height=112, dit=dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2))  # validation size
