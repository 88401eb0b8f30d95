"""Tooltip texts shared by several nodes: the facts that differ per supported model family (models/families.py,
README "Supported model families"), written once so every node states them alike."""
from __future__ import annotations

from ..memory.storyboard import MAX_STORYBOARD_SECONDS

FAMILIES = "Wan 2.1 (T2V / I2V), Wan 2.2 (TI2V 5B, or the A14B experts) or HunyuanVideo (T2V)"

MODEL = (f"A {FAMILIES} model from the stock Load Diffusion Model (LoRAs may be applied); its patch embedding is "
         "the memory encoder's LR branch.")
VAE_KINDS = ("Wan 2.1 VAE for Wan 2.1 and Wan 2.2 A14B, Wan 2.2 VAE for Wan 2.2 TI2V 5B, HunyuanVideo VAE for "
             "HunyuanVideo")
VAE = f"The model's VAE: {VAE_KINDS}."
CLIP = ("Text encoder for the shot prompts: umt5-xxl (Load CLIP, type wan) for Wan 2.1 and Wan 2.2; clip_l + llava_llama3 "
        "(DualCLIPLoader, type hunyuan_video) for HunyuanVideo.")
FPS = "16 for Wan 2.1 and Wan 2.2 A14B, 24 for Wan 2.2 TI2V 5B and HunyuanVideo"
SEGMENT = ("the VAEs of Wan 2.1, Wan 2.2 and HunyuanVideo all pack 4 video frames per latent frame, so 4 latent frames = 13 video frames for a "
           "stream's first segment, then 16: about 1 s at 16 fps, 0.7 s at 24 fps")
SIZE = ("a multiple of the model's token size: 16 px (Wan 2.1, Wan 2.2 A14B, HunyuanVideo) or 32 px (Wan 2.2 TI2V 5B), "
        "and at least one memory token (4x4x2 encoder: 64 px; 128 px on Wan 2.2 TI2V 5B)")
STORYBOARD = (
    "One shot per line: 'seconds | prompt' (the shot's duration, a vertical bar, its prompt). Lines starting with # "
    "and empty lines are ignored. Each ~1 s segment gets the prompt of the shot its middle falls in. At most "
    f"{MAX_STORYBOARD_SECONDS:g} s in all ({MAX_STORYBOARD_SECONDS / 60:g} min); chain Storyboards through their "
    "memory output for longer videos. Example:\n"
    "2.0 | a cyclist rides down a sunny city street\n"
    "1.5 | close-up of the cyclist's face, smiling\n"
    "# a comment\n"
    "3.0 | the cyclist passes parked cars, camera follows")

__all__ = ["FAMILIES", "MODEL", "VAE_KINDS", "VAE", "CLIP", "FPS", "SEGMENT", "SIZE", "STORYBOARD"]
