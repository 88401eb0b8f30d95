"""A deterministic, linear stand-in for a video VAE (reproduction runs where no real VAE weights exist).

No Wan / HunyuanVideo VAE weights are reachable here (docs/design.md section 3), and a randomly initialised VAE gives
latents that carry no image structure. The reproduction of arXiv 2512.23851's frame-retrieval table
(``training/reproduce.py``) therefore uses :class:`PatchPCAVAE`, a *patch PCA*:

* **Space.** Every frame is cut into non-overlapping ``8 x 8 x 3`` pixel patches (spatial compression 8, like Wan's
  VAE); each patch (192 values) minus the mean patch is projected onto the top 16 principal components (16 latent
  channels, like Wan 2.1's latent) and divided by the component's standard deviation, so every channel has unit
  variance on the training patches (like a *model-space* latent after ``process_latent_in``). Decoding is the
  transpose: ``patch = mean + sum_c z_c * std_c * component_c``.
* **Time.** No temporal compression inside the stand-in: one latent frame per video frame. To keep the *time scale*
  of Wan's latent (its causal VAE makes one latent frame per 4 video frames), clips are sampled at ``fps / 4``
  (4 fps for Wan's 16 fps) before encoding, so a latent frame still stands for a quarter second of video.
* **Fit.** The mean and components are fitted once, on patches sampled from the *training* clips only (exact
  eigen-decomposition of the 192 x 192 patch covariance in float64, ``torch.linalg.eigh``; component signs fixed
  so each component's largest-magnitude entry is positive, so a fit is reproducible bit for bit).

Because encode and decode are affine (decode without clamping is linear in the latent), the paper's
inference-time LR branch (decode -> pixel-space downsample -> encode, :meth:`PatchPCAVAE.lr_latent`) is cheap and
exact even for Stage I's *masked* histories, which are not images.

The decoder's reconstruction PSNR on held-out clips is the ceiling of any frame-retrieval PSNR measured through it.
Files: safetensors with tensors ``mean`` ``[192]``, ``components`` ``[16, 192]``, ``std`` ``[16]`` and JSON metadata
under ``framememory_standin_vae``.
"""
from __future__ import annotations

import json
import os

import torch
from einops import rearrange

from ..memory.config import EncoderConfig, parse_rate
from ..memory.encoder import lr_clip
from ..memory.grid import memory_grid

META_KEY = "framememory_standin_vae"
FORMAT = "patch_pca_vae/1"


class PatchPCAVAE:
    """Patch-PCA stand-in VAE (module docstring). Build with :meth:`fit` or :meth:`load`.

    Args:
        mean: ``[P]`` mean patch, ``P = patch * patch * 3`` (pixel values 0..1, channel-last patch order ``(y x c)``).
        components: ``[C, P]`` orthonormal rows (principal directions, by decreasing variance).
        std: ``[C]`` standard deviation of each component's coefficient on the fitting patches (> 0).
        patch: spatial compression (pixels per latent cell along H and W).
        info: free-form JSON-able dict stored in the file (e.g. fitting clips, explained variance).
    Raises:
        ValueError: inconsistent shapes.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, std: torch.Tensor, patch: int = 8,
                 info: dict | None = None) -> None:
        p = patch * patch * 3
        if mean.shape != (p,) or components.ndim != 2 or components.shape[1] != p or std.shape != components.shape[:1]:
            raise ValueError(f"inconsistent PCA tensors: mean {tuple(mean.shape)}, components "
                             f"{tuple(components.shape)}, std {tuple(std.shape)} for {patch}x{patch}x3 patches")
        self.mean = mean.float()
        self.components = components.float()
        self.std = std.float()
        self.patch = patch
        self.info = dict(info or {})

    # ------------------------------------------------------------------------------------------------ shape

    @property
    def channels(self) -> int:
        """Latent channels C (16)."""
        return self.components.shape[0]

    @property
    def vae_stride(self) -> tuple[int, int, int]:
        """``(1, patch, patch)``: video frames / pixels per latent cell (T, H, W) of the *sampled* clip."""
        return 1, self.patch, self.patch

    def to(self, device=None, dtype=None) -> "PatchPCAVAE":
        """Move (and optionally cast) the tensors in place and return self. Encode / decode compute in float32
        whatever ``dtype`` the tensors are stored in."""
        self.mean, self.components, self.std = (t.to(device=device, dtype=dtype)
                                                for t in (self.mean, self.components, self.std))
        return self

    # ------------------------------------------------------------------------------------------------ fit

    @classmethod
    def fit(cls, clips, channels: int = 16, patch: int = 8, max_patches: int = 200_000, seed: int = 0,
            info: dict | None = None) -> "PatchPCAVAE":
        """Fit on frames of the training clips.

        Args:
            clips: iterable of ``[F, H, W, 3]`` float (0..1) or uint8 tensors / arrays, ``H`` and ``W`` multiples of
                ``patch``.
            channels: latent channels (principal components kept, at most ``patch * patch * 3``).
            patch: spatial compression (pixels per latent cell along H and W).
            max_patches: patches sampled (uniformly, without replacement) from all clips together.
            seed: seeds that sampling (used only when there are more than ``max_patches`` patches).
            info: extra entries for :attr:`info` (stored in the file).
        Returns:
            the fitted stand-in; ``info`` gains ``explained_variance`` (fraction of the patch variance kept),
            ``fit_patches`` and ``seed``.
        Raises:
            ValueError: no clips, a clip that is not ``[F >= 1, H, W, 3]`` with sizes multiples of ``patch``,
            ``channels`` outside ``1 .. patch * patch * 3``, or fewer patches than ``channels``.
        """
        if not 1 <= channels <= patch * patch * 3:
            raise ValueError(f"channels must be in 1..{patch * patch * 3} for {patch}x{patch}x3 patches, got {channels}")
        clips = [torch.as_tensor(c) for c in clips]
        if not clips:
            raise ValueError("PatchPCAVAE.fit needs at least one clip")
        for c in clips:
            _check_frames(c, patch)
        counts = [c.shape[0] * (c.shape[1] // patch) * (c.shape[2] // patch) for c in clips]
        total = sum(counts)
        if total < channels:
            raise ValueError(f"{total} patches are too few to fit {channels} components")
        keep = torch.arange(total)
        if total > max_patches:  # sample before converting: clips stay in their (uint8) storage
            keep = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_patches].sort().values
        rows, start = [], 0
        for c, n in zip(clips, counts):
            local = keep[(keep >= start) & (keep < start + n)] - start
            start += n
            if local.numel():
                rows.append(_as_frames(cls._patches(c, patch)[local]).double())
        x = torch.cat(rows)  # [N, P] float64, pixel values 0..1
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(1, xc.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        order = evals.argsort(descending=True)[:channels]
        comps = evecs[:, order].T.contiguous()  # [C, P]
        sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
        comps = comps * sign
        std = evals[order].clamp_min(1e-12).sqrt()
        info = {**(info or {}), "explained_variance": float(evals[order].sum() / evals.sum()),
                "fit_patches": int(x.shape[0]), "seed": seed}
        return cls(mean.float(), comps.float(), std.float(), patch, info)

    @staticmethod
    def _patches(frames: torch.Tensor, patch: int) -> torch.Tensor:
        """``[F, H, W, 3]`` -> ``[F * h * w, patch * patch * 3]`` in ``(y x c)`` order (same dtype)."""
        _check_frames(frames, patch)
        return rearrange(frames, "f (h y) (w x) c -> (f h w) (y x c)", y=patch, x=patch)

    # ------------------------------------------------------------------------------------------------ codec

    def encode(self, frames) -> torch.Tensor:
        """Frames -> latent.

        Args:
            frames: ``[F, H, W, 3]`` float in 0..1 (or uint8 0..255), ``H`` and ``W`` multiples of 8: the clip
                *already sampled* at ``fps / 4`` (one latent frame per frame; module docstring).
        Returns:
            ``[1, 16, F, H / 8, W / 8]`` float32 (unit variance per channel on the training data), on ``frames``'
            device.
        Raises:
            ValueError: wrong shape or a size that is not a multiple of 8.
        """
        x = _as_frames(frames)
        _check_frames(x, self.patch)
        return self._project(x.unsqueeze(0))

    def _project(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, F, H, W, 3]`` float -> ``[B, C, F, H/p, W/p]`` (affine, no checks beyond divisibility)."""
        p = self.patch
        b, f, hh, ww, _ = pixels.shape
        if hh % p or ww % p:
            raise ValueError(f"frame size {ww}x{hh} is not a multiple of {p}")
        mean, comps, std = self._tensors(pixels.device)
        x = rearrange(pixels.float(), "b f (h y) (w x) c -> b f h w (y x c)", y=p, x=p)
        z = ((x - mean) @ comps.T) / std  # [B, F, h, w, C]
        return rearrange(z, "b f h w c -> b c f h w").contiguous()

    def _tensors(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, components, std)`` as float32 on ``device``."""
        return tuple(t.to(device=device, dtype=torch.float32) for t in (self.mean, self.components, self.std))

    def decode(self, latent: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latent -> frames.

        Args:
            latent: ``[B, C, T, h, w]`` with ``C`` = :attr:`channels` (16), any float dtype.
            clamp: clamp to 0..1 like a real VAE decode; False keeps the decoder affine (used by :meth:`lr_latent`).
        Returns:
            ``[B, T, 8h, 8w, 3]`` float32 (0..1 when ``clamp``), on ``latent``'s device.
        Raises:
            ValueError: not a 5-D latent with :attr:`channels` channels.
        """
        if latent.ndim != 5 or latent.shape[1] != self.channels:
            raise ValueError(f"expected a [B, {self.channels}, T, h, w] latent, got {tuple(latent.shape)}")
        p = self.patch
        mean, comps, std = self._tensors(latent.device)
        z = rearrange(latent.float(), "b c t h w -> b t h w c")
        x = (z * std) @ comps + mean  # [B, T, h, w, P]
        x = rearrange(x, "b t h w (y x c) -> b t (h y) (w x) c", y=p, x=p, c=3)
        return x.clamp(0, 1) if clamp else x

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``training.data.prepare_dataset``'s encoder signature: ``[F, H, W, 3]`` 0..1 -> ``[1, C, F, h, w]``."""
        return self.encode(frames)

    # ------------------------------------------------------------------------------------------------ LR branch

    def lr_config(self, rate, patch_size: tuple[int, int, int] = (1, 2, 2)) -> EncoderConfig:
        """An :class:`EncoderConfig` (``dim`` 0, LR branch only) with this stand-in's ``vae_stride`` and ``rate``."""
        if isinstance(rate, EncoderConfig):
            rate, patch_size = rate.rate, rate.patch_size
        return EncoderConfig(dim=0, rate=parse_rate(rate), latent_channels=self.channels, patch_size=patch_size,
                             vae_stride=self.vae_stride, use_hr=False, use_lr=True)

    def lr_latent(self, latent: torch.Tensor, rate, patch_size: tuple[int, int, int] = (1, 2, 2),
                  clamp: bool = False) -> torch.Tensor:
        """The paper's inference-time LR branch input for a (possibly masked) latent: decode -> pixel-space downsample
        -> encode (arXiv 2512.23851: "the history is downsampled in pixel space, then goes through the DiT's own
        VAE").

        The downsample is the nodes' own :func:`memory.encoder.lr_clip` (one LR path for inference, training and
        this stand-in): the region the memory grid covers, area-resized by ``rh x rw``, and means of ``rt``
        consecutive frames (one stand-in frame = one latent frame, ``vae_stride`` ``(1, 8, 8)``), over the first
        ``Tm * rt`` frames.

        ``clamp`` True clamps the decoded frames to 0..1 as a real VAE decode does. With ``clamp`` False (default)
        the map is linear in ``latent``, hence exact for masked histories (their noised frames decode outside 0..1).

        Args:
            latent: ``[B, 16, T, h, w]``. rate: ``"4x4x2"``, ``(rh, rw, rt)`` or an EncoderConfig.
        Returns:
            ``[B, 16, Tm, 2 Hm, 2 Wm]`` float32 with ``(Tm, Hm, Wm) = memory_grid((T, h, w), cfg)``, so the DiT's
            1x2x2 patch embedding lands exactly on the memory grid.
        Raises:
            ValueError: the latent is below one memory token at this rate.
        """
        cfg = self.lr_config(rate, patch_size)
        t, h, w = latent.shape[2:]
        tm, hm, wm = memory_grid((t, h, w), cfg)
        if min(tm, hm, wm) < 1:
            raise ValueError(f"latent of (T, h, w) = {(t, h, w)} is below one memory token at rate {cfg.rate_str}")
        x = self.decode(latent, clamp=clamp)[:, : tm * cfg.patch_size[0] * cfg.rate[2]]  # [B, T', H, W, 3]
        x = torch.stack([lr_clip(clip, cfg, stream_start=False, clamp=clamp) for clip in x])  # [B, Tm, H', W', 3]
        return self._project(x)

    # ------------------------------------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write a safetensors file (atomically, :func:`memory.io.save_safetensors_atomic`) with the tensors and JSON
        metadata."""
        from ..memory.io import save_safetensors_atomic

        meta = {"format": FORMAT, "patch": self.patch, "channels": self.channels, "info": self.info}
        save_safetensors_atomic(os.fspath(path), {"mean": self.mean, "components": self.components, "std": self.std},
                                {META_KEY: json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PatchPCAVAE":
        """Read a file written by :meth:`save` (tensors on CPU). Raises FileNotFoundError, or ValueError when it is
        not one (no metadata, unknown format, missing tensors, inconsistent shapes)."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"stand-in VAE file not found: {path}")
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = (f.metadata() or {}).get(META_KEY)
            if meta is None:
                raise ValueError(f"{path} has no '{META_KEY}' metadata: not a PatchPCAVAE file")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(meta)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown stand-in VAE format {meta.get('format')!r}")
        missing = {"mean", "components", "std"} - set(tensors)
        if missing:
            raise ValueError(f"{path}: stand-in VAE file lacks tensors {sorted(missing)}")
        return cls(tensors["mean"], tensors["components"], tensors["std"], int(meta["patch"]), meta.get("info"))


def _as_frames(frames) -> torch.Tensor:
    """Array / tensor ``[F, H, W, 3]`` (uint8 0..255 or float 0..1) -> float32 tensor 0..1."""
    x = torch.as_tensor(frames)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    return x.float()


def _check_frames(frames: torch.Tensor, patch: int) -> None:
    """Raise ValueError unless ``frames`` is ``[F >= 1, H, W, 3]`` with ``H`` and ``W`` multiples of ``patch``."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [F, H, W, 3], got {tuple(frames.shape)}")
    if frames.shape[0] < 1 or frames.shape[1] % patch or frames.shape[2] % patch:
        raise ValueError(f"frames {tuple(frames.shape)}: need F >= 1 and H, W multiples of {patch}")


def reconstruction_psnr(vae: PatchPCAVAE, clips) -> dict:
    """Encode -> decode PSNR / SSIM (torchmetrics, data_range 1) of ``clips`` (``[F, H, W, 3]`` each, uint8 0..255 or
    float 0..1), the ceiling of frame-retrieval metrics measured through ``vae``.

    Returns ``{"psnr" (dB), "ssim", "frames"}``: means over frames (PSNR per frame, then averaged), frame count.
    Raises ValueError for a clip that is not ``[F, H, W, 3]`` with sizes multiples of ``vae.patch``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr, ssim, n = 0.0, 0.0, 0
    for c in clips:
        x = _as_frames(c)
        _check_frames(x, vae.patch)
        y = vae.decode(vae.encode(x))[0]  # [F, H, W, 3]
        a, b = y.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2)
        psnr += peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3)).sum().item()
        ssim += structural_similarity_index_measure(a, b, data_range=1.0, reduction="none").sum().item()
        n += x.shape[0]
    return {"psnr": psnr / max(n, 1), "ssim": ssim / max(n, 1), "frames": n}


__all__ = ["PatchPCAVAE", "reconstruction_psnr", "META_KEY"]
