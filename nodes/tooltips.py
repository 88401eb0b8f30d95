"""Tooltip texts shared by several nodes: the facts that differ per supported model family (models/families/,
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


MEMORY_MODE = (
    "How much of the past each new second sees. Each mode needs its own memory encoder file (Load Memory Encoder) and "
    "the Stage II LoRA trained with it (LoraLoaderModelOnly); the lab set's names are given.\n"
    "frame_preservation (default): a compressed memory of everything so far. Files: *_encoder + *_lora.\n"
    "pack_forcing: the first frames, the older parts most like the new second, and the last frames; memory stays the "
    "same size however long the video. Files: *_packforcing_encoder + *_packforcing_lora. Wan only.\n"
    "video_ssm: the first and last frames plus a fixed-size running summary. Files: *_videossm + *_videossm_lora. Wan "
    "only.\n"
    "sliding_window: only the last 3 latent frames (older scenes are forgotten). off: no memory, to compare against.\n"
    "Change it for long videos whose memory must stay bounded (pack_forcing, video_ssm) or to compare with off. A Load "
    "Video as History feeding this node reads the video in this mode.")
FOLLOWS_STORYBOARD = ("Set on the Storyboard: when this node's memory output feeds a Storyboard, the value is taken "
                      "from it (the widget follows it and is read-only); edit it here only when the node feeds none.")
INCLUDE_HISTORY = (
    "Put the history's frames before the generated ones in the output: the start_images clip, or the frames of the "
    "video a Load Video as History read (streamed again from the file, at width x height). It cannot when the memory "
    "comes from a memory file or another Storyboard, or the video file is gone: then nothing is put before, and the "
    "report says why (history_frames_in_output: 0 and a reason).")
MODEL_LOW_NOISE = (
    "Only for Wan 2.2 A14B: its low-noise expert (e.g. wan2.2_t2v_low_noise_14B), with the high-noise expert on "
    "'model'. Each segment is sampled as the stock Wan 2.2 14B template does it: the high-noise expert up to "
    "switch_step, this one to the end. Leave empty for every other model.")
SWITCH_STEP = (
    "Only with model_low_noise (Wan 2.2 A14B): the step where the low-noise expert takes over. 0 = half the steps "
    "(the stock templates use 10 of 20; 2 of 4 with the LightX2V 4-step LoRAs). Ignored otherwise.")
COLOUR_STRENGTH = (
    "Only with colour_correction on: how strongly each new segment's colours are pulled to the history's. 1 = fully, "
    "0 = not at all. Lower it when the story really changes colour (night falls).")
RESUME = (
    "Turn on to finish a run that stopped (server restart, crash) from the memory folder in save_path: it continues "
    "with the next segment, same seeds, same frames. Needs save_path and the same storyboard and settings. Leave off "
    "otherwise; a memory from Load Memory resumes without it.")

__all__ = ["FAMILIES", "MODEL", "VAE_KINDS", "VAE", "CLIP", "FPS", "SEGMENT", "SIZE", "STORYBOARD", "MEMORY_MODE",
           "FOLLOWS_STORYBOARD", "INCLUDE_HISTORY", "MODEL_LOW_NOISE", "SWITCH_STEP", "COLOUR_STRENGTH", "RESUME"]
