"""A video file read as history in bounded RAM (Load Video as History): the file is streamed with PyAV, one VAE
segment at a time, instead of decoded whole as float32 (stock LoadVideo + GetVideoComponents: a 14 s 720p clip put
the server at 7.3 GB).

Frames are selected, resampled to the model's ``fps`` and fitted to the storyboard size by the one video reader
(:mod:`models.video_reader`: :class:`~models.video_reader.FrameSelection`, the frames ``training/data.py`` gives)
and cut into the segments of one continuous VAE stream exactly as :func:`models.storyboard.history_from_frames`
does (the oldest frames that do not fill a segment are dropped): a first pass over the file's packets (no
decoding) counts the selected frames, the second decodes them.

Each segment goes through :class:`models.storyboard.HistoryWriter` (VAE stream encode, ``HistoryBuffer.append``,
memory tokens), the path of Encode History and the Storyboard's starting clip, and is then dropped. RAM held while
reading: one decoded source frame (plus the decoder's own reference frames), one segment of fitted uint8 frames,
and the history itself (latents, LR latents, memory tokens: it grows with the history, by design; pixels are kept
only until the LR branch has encoded them, and in the modes that encode nothing not at all, see
:class:`~models.storyboard.HistoryWriter`).
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import psutil
import torch

import comfy.utils

from ..memory.storyboard import split_clip
from .input_checks import check_memory
from .history_writer import HistoryWriter
from .memory_value import Memory
from .telemetry import peak_rss_mb
from .video_reader import FrameSelection, iter_frames, plan_video


@dataclass(frozen=True)
class VideoSource:
    """Where a history read by :func:`history_from_video` came from, kept on its Memory (``Memory.video_source``) so
    the Storyboard's include_history can stream the same frames back (:func:`video_history_frames`): the file
    (``path``, its ``mtime`` and ``size`` in bytes when read), the ``selection``, the size the frames were fitted to
    (``width x height`` px), ``frames_dropped`` (oldest selected frames that filled no segment), ``frames`` (history
    frames read from the file) and ``first_segment`` (index of the file's first segment in the history: > 0 when it
    continued another memory)."""

    path: str
    mtime: float
    size: int
    selection: FrameSelection
    width: int
    height: int
    frames_dropped: int
    frames: int
    first_segment: int


def history_from_video(model, vae, encoder, path: str | Path, sel: FrameSelection, width: int, height: int,
                       latent_frames: int, memory: Memory | None = None, mode: str = "frame_preservation",
                       on_segment: Callable[[int, int], None] | None = None) -> tuple[Memory, dict]:
    """Read ``path`` as history (module docstring): the frames ``sel`` selects, fitted to ``width x height``, the
    oldest that do not fill a segment dropped, encoded segment by segment by :class:`HistoryWriter` (appended to
    ``memory`` when given: the clip starts a new VAE stream). Progress: one step per segment, and
    ``on_segment(done, planned)`` after each segment when given (the node's progress text); the interrupt is checked
    per segment.

    Returns:
        ``(memory, report)``; report (JSON-able): file, source geometry, selection, frames read / dropped,
        segments, history frames and latent frames, memory tokens, seconds, peak RSS (MiB).
    Raises:
        ValueError: a bad selection or size, a missing or unreadable file, a selection shorter than one segment
        (naming the inputs to change), an encoder/DiT mismatch or an unknown mode (see ``HistoryWriter``);
        InterruptProcessingException when the user cancels.
    """
    t_start = time.perf_counter()
    plan = plan_video(path, sel)
    writer = HistoryWriter(model, vae, encoder, latent_frames, sel.fps, width, height, memory, mode=mode,
                           keep_pixels=False)
    try:
        skip, count = split_clip(plan.selected, latent_frames, writer.time_stride)
    except ValueError:
        raise ValueError(
            f"video {Path(path).name}: the selection gives {plan.selected} frames at {sel.fps:g} fps but one history "
            f"segment needs {writer.frames_needed} ({writer.frames_needed / sel.fps:.2f} s); lower skip_first_seconds "
            f"or select_every_nth, raise frame_load_cap (0: no cap), or lower segment_latent_frames") from None
    check_memory(model, vae, width, height, 0, writer.frames_needed, latent_frames)  # one segment at a time
    first_segment = len(writer.mem.history.segments)
    appended = _append_segments(writer, iter_frames(plan, sel, width, height), skip, count, on_segment)
    history = writer.mem.history
    stat = os.stat(path)
    writer.mem.video_source = VideoSource(str(Path(path).resolve()), stat.st_mtime, stat.st_size, sel, width, height,
                                          skip, history.num_frames - (memory.history.num_frames if memory else 0),
                                          first_segment)
    report = {"file": Path(path).name, "source": {"width": plan.width, "height": plan.height,
                                                  "fps": round(plan.source_fps, 3), "frames": plan.source_frames,
                                                  "duration_s": plan.duration_s},
              "selection": asdict(sel), "width": width, "height": height, "memory_mode": mode,
              "frames_selected": plan.selected, "frames_dropped_oldest": skip, "segments_planned": count,
              "segments": appended, "history_frames": history.num_frames, "history_latent_frames": history.latent_frames,
              "memory_tokens": history.num_tokens, "seconds": round(time.perf_counter() - t_start, 2),
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    return writer.mem, report


def _append_segments(writer: HistoryWriter, frames: Iterator[torch.Tensor], skip: int, count: int,
                     on_segment: Callable[[int, int], None] | None = None) -> int:
    """Feed ``frames`` (uint8 ``[H, W, 3]``) past the first ``skip`` to ``writer`` one segment at a time, ``count``
    segments at most, calling ``on_segment(done, count)`` after each; returns the segments appended. Raises
    ValueError when the file ends before the first."""
    bar, done, buf, n = comfy.utils.ProgressBar(count), 0, None, 0
    for i, frame in enumerate(frames):
        if i < skip:
            continue
        if buf is None:
            buf, n = torch.empty((writer.frames_needed, *frame.shape), dtype=torch.uint8), 0
        buf[n], n = frame, n + 1
        if n == buf.shape[0]:
            writer.append(buf)
            done, buf = done + 1, None
            bar.update(1)
            if on_segment is not None:
                on_segment(done, count)
            if done == count:
                break
    if done == 0:
        raise ValueError("video: the file ended before one whole history segment was decoded (its packets promised "
                         "more frames); re-encode the file")
    return done


def _size(n: int) -> str:
    """Bytes as a short text: GiB from 1 GiB on, else MiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def video_history_frames(memory, width: int, height: int) -> tuple[torch.Tensor | None, str]:
    """The history frames of a memory read by :func:`history_from_video`, streamed again from its file with the same
    reader, selection and fit (one source frame decoded at a time; the result is the IMAGE output's share anyway).

    Args:
        memory: a Memory; only one with a ``video_source`` (:class:`VideoSource`) has frames to give.
        width / height: the run's frame size (px); must be the size the history was read at.
    Returns:
        ``(frames [F, height, width, 3] float32 0..1, "")`` with F the history frames read from the file (the part
        of the history before it, when it continued another memory, is not included: the reason says so), or
        ``(None, reason)`` when no frames can be had: no source (a memory file, Encode History, a Storyboard's
        memory), the file gone or changed since it was read, another size, or not enough free RAM for them (twice
        their size: the output's concatenation copies them; checked before any frame is decoded).
    """
    source = getattr(memory, "video_source", None)
    if source is None:
        return None, ("the memory keeps no video source to stream its frames from (only a history read by Load Video "
                      "as History in this run has one; memory files and Storyboard memories keep no pixels)")
    name = Path(source.path).name
    if not os.path.isfile(source.path):
        return None, f"the video {name} the history was read from is gone ({source.path})"
    stat = os.stat(source.path)
    if (stat.st_mtime, stat.st_size) != (source.mtime, source.size):
        return None, f"the video {name} changed since the history was read from it"
    if (width, height) != (source.width, source.height):
        return None, f"the history was read at {source.width}x{source.height}, this run is {width}x{height}"
    need = source.frames * height * width * 3 * 4  # float32; the output's concatenation copies it once more
    free = psutil.virtual_memory().available
    if 2 * need > free:
        return None, (f"the history's {source.frames} frames at {width}x{height} need {_size(2 * need)} of RAM in the "
                      f"output and {_size(free)} is free: shorten the history (frame_load_cap) or switch "
                      "include_history off")
    out = torch.empty((source.frames, height, width, 3), dtype=torch.float32)
    n = 0
    try:
        plan = plan_video(source.path, source.selection)
        frames = itertools.islice(iter_frames(plan, source.selection, width, height), source.frames_dropped,
                                  source.frames_dropped + source.frames)
        for n, frame in enumerate(frames, 1):
            out[n - 1] = frame.float() / 255.0
    except ValueError as e:
        return None, f"the video {name} cannot be read again ({e})"
    if n != source.frames:
        return None, f"the video {name} gave {n} of the history's {source.frames} frames when read again"
    if source.first_segment:
        return out, (f"only the frames read from {name} are shown: the {source.first_segment} history segments before "
                     "them came from another memory, which keeps no pixels")
    return out, ""


__all__ = ["VideoSource", "history_from_video", "video_history_frames"]
