"""Reading video files with PyAV: the one video reader of the pack, its training data and its scripts (no ComfyUI
import). Writers (``av.open(..., "w")``) live with their callers.

* :func:`plan_video` + :func:`iter_frames`: a file streamed one decoded frame at a time, with the usual video-loader
  selection (:class:`FrameSelection`) and fitted to a size (Load Video as History, ``models/video_history.py``).
* :func:`timed_frames`: every frame of an open file with its time (the training reader, ``training/data.py``).
* :func:`read_frames`: every frame of a file as decoded, and its frame rate (the scripts' output checks, thumbnails).
* :func:`clip_seconds`: a file's duration from its container, no decoding (checks before reading).
* :func:`open_video` / :func:`open_container`: the file opened, with or without the checks that name the fix.

Frame selection, in this order: the file is resampled to the model's ``fps`` (for each time ``k / fps`` from the
first frame, the source frame nearest in time, ties the earlier one: :func:`memory.frames.resample_indexed`, the
same rule as ``training/data.py``'s reader, so every reader gives the same pixels of a clip), then
``skip_first_seconds`` drops the resampled frames before that time (the file is seeked, not decoded from the start),
``select_every_nth`` keeps every n-th of the rest and ``frame_load_cap`` keeps at most that many (0: all). Selected
frames are center-cropped and area-resized (:func:`memory.frames.fit_frames`, uint8). A first pass over the file's
packets (no decoding, :func:`plan_video`) counts the selected frames; :func:`iter_frames` decodes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..memory.frames import fit_frames, resample_indexed, to_uint8


@dataclass(frozen=True)
class FrameSelection:
    """Which frames of a file are read (module docstring): ``fps`` the model's frame rate the file is resampled to,
    ``skip_first_seconds`` start time (s, from the first frame), every ``select_every_nth`` resampled frame, at most
    ``frame_load_cap`` frames (0: no cap)."""

    fps: float
    skip_first_seconds: float = 0.0
    select_every_nth: int = 1
    frame_load_cap: int = 0

    def check(self) -> None:
        """Raise ValueError naming the input for a value out of range."""
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0 (the model's frame rate, 16 for Wan 2.1), got {self.fps}")
        if not self.skip_first_seconds >= 0:
            raise ValueError(f"skip_first_seconds must be >= 0, got {self.skip_first_seconds}")
        if self.select_every_nth < 1:
            raise ValueError(f"select_every_nth must be >= 1 (1 keeps every frame), got {self.select_every_nth}")
        if self.frame_load_cap < 0:
            raise ValueError(f"frame_load_cap must be >= 0 (0: no cap), got {self.frame_load_cap}")

    @property
    def first_index(self) -> int:
        """Index ``k0`` (at ``fps``) of the first resampled frame at or after ``skip_first_seconds``."""
        return max(0, math.ceil(self.skip_first_seconds * self.fps - 1e-6))


@dataclass(frozen=True)
class VideoPlan:
    """What the packet pass found: the source stream (``source_fps``, ``source_frames``, ``width x height``,
    ``duration_s``), its first frame time ``t0`` (s), ``selected`` frames the selection gives, the time (s, from
    ``t0``) of the last source frame before the first selected one (``seek_s``, seek target; None: read from the
    start)."""

    path: str
    source_fps: float
    source_frames: int
    width: int
    height: int
    duration_s: float
    t0: float
    selected: int
    seek_s: float | None


def select(resampled: Iterable[tuple[int, object]], sel: FrameSelection) -> Iterator[object]:
    """The items of :func:`memory.frames.resample_indexed` (started at ``sel.first_index``) that ``select_every_nth`` and
    ``frame_load_cap`` keep."""
    kept = 0
    for k, item in resampled:
        if (k - sel.first_index) % sel.select_every_nth:
            continue
        yield item
        kept += 1
        if sel.frame_load_cap and kept >= sel.frame_load_cap:
            return


def open_container(path: str | Path):
    """The file opened by PyAV for reading (an ``av.container.InputContainer``; use it as a context manager).
    Raises PyAV's ``av.error.FFmpegError`` (``FileNotFoundError`` among them) for a file it cannot open."""
    import av

    return av.open(str(path))


def open_video(path: Path):
    """``(container, video stream)`` of ``path``; raises ValueError naming the file and the fix (missing file, a file
    PyAV cannot open, no video stream)."""
    import av

    if not path.is_file():
        raise ValueError(f"video: no such file {path}; put it in ComfyUI's input folder or use the node's upload button")
    try:
        container = open_container(path)
    except av.error.FFmpegError as e:
        raise ValueError(f"video: PyAV cannot open {path.name} ({e}); re-encode it, e.g. "
                         f"`ffmpeg -i {path.name} -c:v libx264 -pix_fmt yuv420p out.mp4`") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"video: {path.name} has no video stream")
    return container, container.streams.video[0]


def plan_video(path: str | Path, sel: FrameSelection) -> VideoPlan:
    """Count the frames ``sel`` selects from ``path`` from its packets' timestamps (demuxing only, no decoding).

    Raises:
        ValueError: a bad selection, a missing / unreadable file, no video stream or no frame at all, or
        ``skip_first_seconds`` past the end of the clip.
    """
    import av

    sel.check()
    path = Path(path)
    container, stream = open_video(path)
    with container:
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        try:
            pts = [(p.pts, p.is_discard) for p in container.demux(stream) if p.size > 0]
        except av.error.FFmpegError as e:
            raise ValueError(f"video: the video stream of {path.name} cannot be read ({e}); re-encode the file") from e
        width, height = stream.codec_context.width, stream.codec_context.height
        base = float(stream.time_base) if stream.time_base else 1.0 / rate
    stamps = [p for p, discard in pts if not discard]
    if not stamps:
        raise ValueError(f"video: {path.name} has no video frames")
    times = sorted(p * base for p in stamps) if None not in stamps else [i / rate for i in range(len(stamps))]
    t0 = times[0]
    times = [t - t0 for t in times]
    if sel.first_index / sel.fps > times[-1]:
        raise ValueError(f"skip_first_seconds {sel.skip_first_seconds:g} is past the end of {path.name} "
                         f"({times[-1]:.2f} s); lower it")
    selected = sum(1 for _ in select(resample_indexed(((t, None) for t in times), sel.fps, sel.first_index), sel))
    before = [t for t in times if t < sel.first_index / sel.fps]
    return VideoPlan(str(path), rate, len(times), width, height, round(times[-1] + 1 / rate, 3), t0, selected,
                     before[-1] if before else None)


def _decoded(container, stream, plan: VideoPlan) -> Iterator[tuple[float, object]]:
    """``(time s from the first frame, av.VideoFrame)`` in presentation order, from ``plan.seek_s`` on (seeked to the
    key frame at or before it)."""
    rate = plan.source_fps
    if plan.seek_s is not None and stream.time_base:
        container.seek(int(round((plan.seek_s + plan.t0) / float(stream.time_base))), stream=stream, backward=True)
    for i, frame in enumerate(container.decode(stream)):
        yield (frame.time - plan.t0 if frame.time is not None else i / rate), frame


def iter_frames(plan: VideoPlan, sel: FrameSelection, width: int, height: int) -> Iterator[torch.Tensor]:
    """The selected frames of ``plan``'s file, each fitted to ``width x height``: uint8 ``[height, width, 3]``
    (one source frame decoded at a time). Raises ValueError when the file cannot be decoded."""
    import av

    container, stream = open_video(Path(plan.path))
    stream.thread_type = "AUTO"
    last = (None, None)  # (source frame, fitted): a frame repeated by the resampling is fitted once
    with container:
        try:
            for frame in select(resample_indexed(_decoded(container, stream, plan), sel.fps, sel.first_index), sel):
                if frame is not last[0]:
                    rgb = torch.from_numpy(np.ascontiguousarray(frame.to_ndarray(format="rgb24")))
                    last = (frame, to_uint8(fit_frames(rgb[None], width, height))[0])
                yield last[1]
        except av.error.FFmpegError as e:
            raise ValueError(f"video: decoding {Path(plan.path).name} failed ({e}); re-encode the file") from e


def timed_frames(container) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame of the first video stream of an open ``container`` (:func:`open_container`; it must have one) as
    ``(time s from the first decoded frame, uint8 [H, W, 3] RGB)``, in decoding order; a frame without a time is put
    at ``i / fps`` (the stream's average rate, else its guessed rate, else 25). Raises PyAV's errors."""
    stream = container.streams.video[0]
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    t0 = None
    for i, frame in enumerate(container.decode(stream)):
        t = frame.time if frame.time is not None else i / rate
        t0 = t if t0 is None else t0
        yield t - t0, frame.to_ndarray(format="rgb24")


def read_frames(path: str | Path) -> tuple[list[np.ndarray], float]:
    """Every frame of the first video stream of ``path`` as decoded (uint8 ``[H, W, 3]`` RGB each, a list: empty for
    a stream without frames) and the stream's average frame rate (fps; 0.0 where the file gives none). Raises PyAV's
    errors (``av.error.FFmpegError``) for a file it cannot open or decode, IndexError for one without video."""
    with open_container(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], fps


def clip_seconds(path: str | Path) -> float | None:
    """The duration of ``path`` (s) from its container, no decoding: the first video stream's duration, else the
    container's; None where neither is given (e.g. animated WebP). Raises ``av.error.FFmpegError`` for a file PyAV
    cannot open."""
    import av

    with open_container(path) as container:
        stream = container.streams.video[0] if container.streams.video else None
        if stream is not None and stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / av.time_base
        return None


__all__ = ["FrameSelection", "VideoPlan", "select", "open_container", "open_video", "plan_video", "iter_frames",
           "timed_frames", "read_frames", "clip_seconds"]
