"""Memory tokens in Wan 2.2 TI2V 5B (ComfyUI ``WanModel`` with 48 latent channels in and out, ``model_base.WAN22``,
the Wan 2.2 VAE with 16x spatial stride), arXiv 2512.23851 Sec. 3.

The mechanism is the Wan adapter's (``wan21.py``); what differs is the latent geometry and the memory timestep:
Wan 2.2 5B runs with per-token timesteps (its clean first frame is trained at timestep 0), so memory tokens
always get the modulation of timestep 0, whether the sampler passes one timestep per sample or one per latent
frame (``Wan22ImageToVideoLatent``'s ``noise_mask``).
"""
from __future__ import annotations

from . import wan21

FAMILY = "wan22"
LATENT_CHANNELS = 48  # comfy.latent_formats.Wan22
VAE_STRIDE = (4, 16, 16)  # video frames, pixels per latent cell (t, h, w)
PATCH_SIZE = (1, 2, 2)  # latent cells per DiT token (t, h, w)
FPS = 24  # frame rate the family was trained at
MEMORY_TIMESTEPS = ("zero",)  # EncoderConfig.memory_timestep rules: memory tokens always at timestep 0
MEMORY_MODES = wan21.MEMORY_MODES  # the Wan adapter's hooks

width = wan21.width
token_grid = wan21.token_grid
patch_embed = wan21.patch_embed
cross_blocks = wan21.cross_blocks


def latent_format():
    """ComfyUI's latent format of the family (``process_in``: VAE latent -> model space)."""
    import comfy.latent_formats

    return comfy.latent_formats.Wan22()


def matches(dm) -> bool:
    """True for ComfyUI's ``WanModel`` T2V with 48 latent channels in and out (Wan 2.2 TI2V 5B; ComfyUI's
    detection: ``supported_models.WAN22_T2V``, ``out_dim`` 48)."""
    import comfy.ldm.wan.model as wan_model

    return (type(dm) is wan_model.WanModel and dm.model_type == "t2v" and dm.out_dim == LATENT_CHANNELS
            and dm.patch_embedding.in_channels == LATENT_CHANNELS)


def install(model, dm, memory_t0: bool = True) -> None:
    """Install the memory wrapper and per-block patches (memory tokens at timestep 0) on ``model`` (a clone).
    Raises ValueError for ``memory_t0`` False (the "shared" ablation is Wan 2.1 only)."""
    if not memory_t0:
        raise ValueError("Wan 2.2 TI2V 5B memory tokens always get timestep 0 (memory_timestep 'zero')")
    wan21.install(model, dm, memory_t0=True)
