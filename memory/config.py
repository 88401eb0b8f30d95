"""Configuration of the history encoder (arXiv 2512.23851, Sec. 3).

The config is a frozen dataclass; it travels as JSON in the safetensors metadata of an encoder file
(key ``framememory_config``) so that a file always says which DiT it was made for.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

FAMILIES = ("wan21", "wan22", "hunyuan_video")
MEMORY_TIMESTEPS = ("zero", "shared")  # see EncoderConfig.memory_timestep and models/families/
# The memory designs an encoder file can hold (EncoderConfig.memory_type), one module each in memory/designs/:
# "frame_preservation": arXiv 2512.23851 (all compressed history tokens); "pack_forcing": sink + top-K compressed mid
# blocks + recent frames with RoPE re-packing (Mao et al., PackForcing); "video_ssm": sink + recent frames + a gated
# delta-rule state per DiT block (arXiv 2512.04519). Their settings are fields of EncoderConfig (the file's JSON).
MEMORY_TYPES = ("frame_preservation", "pack_forcing", "video_ssm")


def parse_rate(rate: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """Parse a rate such as ``"4x4x2"`` (H x W x T, relative to the DiT token grid) into ``(4, 4, 2)``.

    Raises:
        ValueError: the text is not three positive integers joined by ``x``.
    """
    if isinstance(rate, (tuple, list)):
        parts = tuple(int(r) for r in rate)
    else:
        try:
            parts = tuple(int(p) for p in str(rate).lower().replace(" ", "").split("x"))
        except ValueError:
            parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError(f"rate {rate!r} is not of the form HxWxT with positive integers, e.g. '4x4x2'")
    return parts  # type: ignore[return-value]


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of one history encoder.

    ``dim == 0`` means "not fixed yet": an untrained, LR-branch-only encoder that takes the width of
    whatever DiT it is applied to (its HR branch is zero-initialised, so it adds nothing anyway).
    """

    family: str = "wan21"                 # target DiT family: one of FAMILIES
    dim: int = 1536                       # DiT inner width D (1536 Wan 2.1 1.3B, 5120 14B, 3072 HunyuanVideo)
    rate: tuple[int, int, int] = (4, 4, 2)  # compression H x W x T relative to the DiT token grid
    latent_channels: int = 16             # VAE latent channels C
    patch_size: tuple[int, int, int] = (1, 2, 2)  # DiT patchify (T, H, W) in latent cells
    vae_stride: tuple[int, int, int] = (4, 8, 8)  # video frames / pixels per latent cell (T, H, W); causal in T
    hr_channels: tuple[int, ...] = (64, 128, 256, 512)  # HR branch hidden widths; attention at the last one
    attn_heads: int = 8                   # heads of the HR branch's per-time-step spatial attention
    use_hr: bool = True                   # False: only the LR branch (ablation "Only LR")
    use_lr: bool = True                   # False: only the HR branch (ablation "Without LR")
    attn_layout: str = "per_time_step"    # HR attention: spatial, local to one memory time step (see encoder.py)
    overlap_latent_frames: int = 0        # add-on: the last N latent frames also as uncompressed tokens (paper: 3)
    cross_attention: bool = False         # add-on: every DiT block cross-attends to the HR branch's last hidden states
    memory_timestep: str = "zero"         # timestep of the memory tokens' modulation: "zero" (clean context, every family) or "shared" (the video tokens' sampling timestep; Wan 2.1 only, an ablation)
    dit_blocks: int = 0                   # DiT blocks with a cross-attention layer (cross_attention) or a state module (video_ssm); Wan 2.1 1.3B: 30, HunyuanVideo: 20 double + 40 single = 60
    memory_type: str = "frame_preservation"  # one of MEMORY_TYPES (files without the key: frame_preservation)
    sink_latent_frames: int = 0           # pack_forcing / video_ssm: the history's first N latent frames uncompressed (attention sink)
    top_k: int = 0                        # pack_forcing: compressed mid blocks kept per forward by query-key affinity (0: all)
    ssm_heads: int = 0                    # video_ssm: heads of each block's state (state [heads, D // heads, ssm_key_dim])
    ssm_key_dim: int = 64                 # video_ssm: key width of the state

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", parse_rate(self.rate))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "vae_stride", tuple(int(p) for p in self.vae_stride))
        object.__setattr__(self, "hr_channels", tuple(int(c) for c in self.hr_channels))
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {FAMILIES}")
        if self.dim < 0:
            raise ValueError(f"dim must be >= 0 (0 = take the DiT's width), got {self.dim}")
        if not (self.use_hr or self.use_lr):
            raise ValueError("at least one of use_hr / use_lr must be True")
        if self.attn_layout != "per_time_step":
            raise ValueError(f"attn_layout {self.attn_layout!r} is not supported (only 'per_time_step')")
        if self.memory_timestep not in MEMORY_TIMESTEPS:
            raise ValueError(f"memory_timestep must be one of {MEMORY_TIMESTEPS}, got {self.memory_timestep!r}")
        if self.overlap_latent_frames < 0:
            raise ValueError(f"overlap_latent_frames must be >= 0, got {self.overlap_latent_frames}")
        if self.hr_channels and self.hr_channels[-1] % self.attn_heads:
            raise ValueError(f"attn_heads {self.attn_heads} must divide the last HR width {self.hr_channels[-1]}")
        if self.cross_attention:
            if not self.use_hr:
                raise ValueError("cross_attention needs the HR branch (use_hr=True): it attends to its hidden states")
            if self.dim <= 0 or self.dim % self.attn_heads:
                raise ValueError(f"cross_attention needs a fixed DiT width divisible by attn_heads {self.attn_heads}, "
                                 f"got dim {self.dim}")
            if self.dit_blocks < 1:
                raise ValueError(f"cross_attention needs dit_blocks >= 1 (the DiT's block count), got {self.dit_blocks}")
        elif self.dit_blocks < 0:
            raise ValueError(f"dit_blocks must be >= 0, got {self.dit_blocks}")
        self._check_memory_type()

    def _check_memory_type(self) -> None:
        """Raise ValueError for settings of the PackForcing / VideoSSM memory types that cannot run."""
        if self.memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type must be one of {MEMORY_TYPES}, got {self.memory_type!r}")
        if min(self.sink_latent_frames, self.top_k, self.ssm_heads, self.ssm_key_dim) < 0:
            raise ValueError("sink_latent_frames, top_k, ssm_heads and ssm_key_dim must be >= 0")
        if self.memory_type == "video_ssm" and self.dim > 0 and self.ssm_heads:
            if self.dim % self.ssm_heads or self.ssm_key_dim < 1 or self.dit_blocks < 1:
                raise ValueError(f"video_ssm needs ssm_heads dividing dim {self.dim} (got {self.ssm_heads}), "
                                 f"ssm_key_dim >= 1 and dit_blocks >= 1 (got {self.dit_blocks})")
        if self.memory_type == "video_ssm" and self.cross_attention:
            raise ValueError("video_ssm and the cross-attention add-on both use dit_blocks: choose one")

    @property
    def rate_str(self) -> str:
        return "x".join(str(r) for r in self.rate)

    def with_dim(self, dim: int) -> "EncoderConfig":
        return dataclasses.replace(self, dim=dim)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "encoder config") -> "EncoderConfig":
        """Inverse of :meth:`to_json`. ``source`` names where the text comes from (e.g. the encoder file) in errors.

        Raises:
            ValueError: naming ``source``: the text is not a JSON object (with the parser's line and column), has
                unknown keys (a file from a newer version), or a value of the wrong type or out of range.
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: the config metadata is not valid JSON ({e}); re-save the encoder with "
                             "training/ or memory.io.save_encoder") from None
        if not isinstance(data, dict):
            raise ValueError(f"{source}: the config metadata must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: encoder config has unknown keys {unknown}; is the file from a newer "
                             "ComfyUI-FrameMemory?")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: invalid encoder config: {e}") from None
