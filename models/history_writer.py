"""Writing history: the segments of a clip (Encode History, Load Video as History, the Storyboard's starting clip)
and each segment a Storyboard generates are appended to a memory's history and, in the modes that encode, only the
new part is encoded into memory tokens (arXiv 2512.23851 Sec. 4: "encode only the new part")."""
from __future__ import annotations

import torch

import comfy.model_management

from ..memory.frames import fit_frames
from ..memory.history import HistoryBuffer
from ..memory.storyboard import split_clip
from .colour_match import correct_segment, mean_std, record_colour
from .encoding import MemoryEncoder, MultiEncoder
from .experts import bind_encoder, encode_pending_experts
from .input_checks import check_fps, check_frame_size, check_history_inputs, check_memory_matches
from .memory_value import Memory
from .telemetry import phase
from .vae_stream import VideoStream


class HistoryWriter:
    """Appends a clip to a memory segment by segment as one continuous VAE stream: each segment is VAE-encoded
    continuing the stream (:class:`~models.vae_stream.VideoStream`), appended to the history
    (``HistoryBuffer.append``, its pixels as uint8) and, in the modes that encode (``Memory.encodes``), encoded into
    memory tokens at once for every expert (``encode_pending_experts``), which drops its pixels as soon as every
    encoder's LR branch covers them. The one path of :func:`history_from_frames` (Encode History, the Storyboard's
    starting clip) and :func:`models.video_history.history_from_video` (Load Video as History): only one segment of
    fitted frames exists at a time. In the modes that encode nothing (off, sliding_window, video_ssm)
    ``keep_pixels=False`` drops every segment's pixels after appending: the history then holds latents only, and a
    later run in an encoding mode cannot encode it (it raises; read the clip again in that mode).

    Args:
        model / model_low_noise: the DiT(s) the memory is for (Wan 2.2 A14B pair: both, see :mod:`models.experts`).
        vae: their VAE. encoder: MemoryEncoder or MultiEncoder. latent_frames: T per segment.
        fps / width / height: the clip's frame rate and the size its frames are given at. memory: history to
        continue (not changed; the clip starts a new VAE stream); its size must be ``width x height``.
        mode: :data:`memory.designs.MEMORY_MODES`.
    Raises:
        ValueError: a bad fps or size (:mod:`models.input_checks`), a memory of another size, an encoder/DiT
        mismatch, experts of different families, or an unknown mode.
    """

    def __init__(self, model, vae, encoder: MemoryEncoder | MultiEncoder, latent_frames: int, fps: float, width: int,
                 height: int, memory: Memory | None = None, model_low_noise=None, mode: str = "frame_preservation",
                 keep_pixels: bool = True) -> None:
        fps = check_fps(fps)
        adapter = check_frame_size(model, width, height, encoder, mode)
        if memory is not None:
            check_memory_matches(memory, model, width, height, fps)
        self.bound = bind_encoder(model, model_low_noise, vae, encoder, mode)
        self.vae, self.latent_frames, self.keep_pixels = vae, latent_frames, keep_pixels
        self.time_stride = adapter.VAE_STRIDE[0]
        self.mem = Memory(memory.history.copy() if memory else HistoryBuffer(), encoder, fps, width, height, mode)
        self.stream = VideoStream(vae, "encode", time_stride=self.time_stride)

    @property
    def frames_needed(self) -> int:
        """Video frames of the next segment: ``ft * (T - 1) + 1`` for the clip's first, then ``ft * T``."""
        return self.stream.frames_for(self.latent_frames)

    def append(self, frames: torch.Tensor) -> None:
        """Encode and append the next segment, frames ``[F, height, width, 3]`` float 0..1 or uint8,
        ``F = frames_needed``. Checks the interrupt first. Raises ValueError for another frame count or size."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        want = (self.frames_needed, self.mem.height, self.mem.width, 3)
        if tuple(frames.shape) != want:
            raise ValueError(f"the next history segment needs frames {list(want)}, got {list(frames.shape)}")
        first = not self.stream.started
        pixels = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames
        self.mem.history.append(self.stream.encode(pixels), frames, stream_start=first)
        record_colour(self.mem.history, frames)  # the reference of the colour-drift correction (models/colour_match.py)
        if self.mem.encodes:
            encode_pending_experts(self.bound.models, self.vae, self.mem.encoder, self.mem.history)
        elif not self.keep_pixels:
            self.mem.history.drop_frames([])  # no encoder needs them: every segment's pixels go


def history_from_frames(model, vae, encoder: MemoryEncoder | MultiEncoder, images: torch.Tensor, latent_frames: int,
                        fps: float, width: int, height: int, memory: Memory | None = None,
                        model_low_noise=None, mode: str = "frame_preservation") -> tuple[Memory, int]:
    """Turn a starting clip into history: frames are fitted to ``width x height``, cut into the segments of one
    continuous VAE stream (the first ``ft * (T - 1) + 1`` frames, then ``ft * T`` each; the oldest frames that do not
    fill a segment are dropped), encoded by the VAE as that stream (:class:`~models.vae_stream.VideoStream`) and
    into memory tokens, for ``model`` and, when given, the Wan 2.2 A14B low-noise expert ``model_low_noise`` (its
    own patch embedding), one segment at a time (:class:`HistoryWriter`). Appended to ``memory``, the clip starts a
    new VAE stream. ``mode`` "off" (see :data:`MEMORY_MODES`) skips the memory tokens: the history keeps latents and
    frames, unencoded. Returns ``(memory, dropped)``.

    Raises:
        ValueError: bad inputs (:func:`models.input_checks.check_history_inputs`: non-finite fps or frames, a size the
        family or memory cannot take), a clip shorter than one segment, a memory of another size, an encoder/DiT
        mismatch, experts of different families, or an unknown mode.
    """
    images = check_history_inputs(model, vae, encoder, images, latent_frames, fps, width, height, mode)  # RGB, finite
    writer = HistoryWriter(model, vae, encoder, latent_frames, fps, width, height, memory, model_low_noise, mode)
    skip, count = split_clip(int(images.shape[0]), latent_frames, writer.time_stride)
    pos = skip
    for _ in range(count):
        n = writer.frames_needed
        writer.append(fit_frames(images[pos:pos + n], width, height))  # one segment fitted at a time
        pos += n
    return writer.mem, skip


def append_generated(history: HistoryBuffer, samples: torch.Tensor, images: torch.Tensor, colour: float,
                     stats: dict) -> tuple[torch.Tensor, float | None]:
    """Append a generated segment to ``history`` (in place): its decoded frames ``images`` ``[F, H, W, 3]`` uint8 are
    first matched to the history's colours with strength ``colour`` (:func:`models.colour_match.correct_segment`;
    0: unchanged) and counted in its colour statistics (timed as ``stats["colour_s"]``, :func:`models.telemetry.
    phase`), then the segment (``samples`` ``[1, C, T, h, w]`` and the frames) is appended, starting the stream when
    the history is empty. Its memory tokens are not made here (``encode_pending_experts`` encodes only the new part).
    Returns ``(frames as appended, colour drift)`` (:func:`colour_drift`)."""
    with phase(stats, "colour"):  # matched to the history's colours (strength 0: unchanged), then part of them
        images = correct_segment(history, images, colour)
        colour_before = history.colour_stats
        record_colour(history, images)
        drift = colour_drift(colour_before, history.colour_stats)
    history.append(samples, images, stream_start=not history.segments)
    return images, drift


def colour_drift(before: torch.Tensor | None, after: torch.Tensor) -> float | None:
    """How far a new segment's mean colour lies from the history's before it: the CIE76 colour difference (Delta E*ab,
    Lab units; about 2.3 is just noticeable) of the two mean Lab colours, from the running
    :func:`models.colour_match.lab_stats` sums ``before`` and ``after`` the segment was added (``[3, 3]`` float64).
    None when the history had no colour yet (the first segment without a starting clip)."""
    if before is None:
        return None
    return round(float((mean_std(after - before)[0] - mean_std(before)[0]).norm()), 3)


__all__ = ["HistoryWriter", "history_from_frames", "append_generated", "colour_drift"]
