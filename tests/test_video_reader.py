"""The one video reader (models/video_reader.py) on a real clip: every reading function gives the frames PyAV decodes,
and its callers (the training reader, the scripts' checks) give what they gave before it existed."""
from __future__ import annotations

import itertools

import av
import numpy as np
import pytest
import torch

from framememory.memory.frames import fit_frames, resample_indexed, to_uint8
from framememory.models.video_reader import (FrameSelection, clip_seconds, iter_frames, open_container, plan_video,
                                             read_frames, timed_frames)

W, H, FPS = 256, 128, 16.0


def pyav_frames(path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of ``path`` decoded by PyAV directly (rgb24) and its time (s): the reference."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return [f.to_ndarray(format="rgb24") for f in frames], [f.time for f in frames]


def test_read_frames_gives_every_decoded_frame_and_the_rate(media_dir):
    want, _ = pyav_frames(media_dir / "bikes.mp4")
    got, fps = read_frames(media_dir / "bikes.mp4")
    assert fps == 25.0 and len(got) == len(want) == 250  # bikes.mp4: 10 s at 25 fps, 640x272
    assert all(g.dtype == np.uint8 and g.shape == (272, 640, 3) and np.array_equal(g, w) for g, w in zip(got, want))


def test_timed_frames_and_the_training_reader(media_dir):
    from framememory.training.data import decode_frames

    want, times = pyav_frames(media_dir / "carphone_pristine.mp4")
    with open_container(media_dir / "carphone_pristine.mp4") as container:
        got = list(timed_frames(container))
    assert [t for t, _ in got] == [t - times[0] for t in times]
    assert all(np.array_equal(g, w) for (_, g), w in zip(got, want)) and len(got) == len(want)
    trained = list(itertools.islice(decode_frames(media_dir / "carphone_pristine.mp4", W, H), 20))
    for (t, frame), (t_ref, raw) in zip(trained, got):  # the training reader: the same frames, fitted
        fitted = to_uint8(fit_frames(torch.from_numpy(raw.copy())[None], W, H))[0].numpy()
        assert t == t_ref and np.array_equal(frame, fitted)


def test_streamed_selection_is_the_decoded_frames_resampled(media_dir):
    sel = FrameSelection(FPS, skip_first_seconds=1.0, select_every_nth=2, frame_load_cap=12)
    want, times = pyav_frames(media_dir / "bikes.mp4")
    resampled = resample_indexed(zip([t - times[0] for t in times], want), FPS)  # the one resampling rule
    picked = [f for k, f in resampled if k >= sel.first_index and (k - sel.first_index) % 2 == 0][:12]
    got = list(iter_frames(plan_video(media_dir / "bikes.mp4", sel), sel, W, H))
    assert len(got) == len(picked) == 12
    for frame, raw in zip(got, picked):
        assert torch.equal(frame, to_uint8(fit_frames(torch.from_numpy(raw.copy())[None], W, H))[0])


def test_clip_seconds_from_the_container(media_dir, tmp_path):
    assert clip_seconds(media_dir / "bikes.mp4") == pytest.approx(10.0, abs=0.05)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    with pytest.raises(av.error.FFmpegError):
        clip_seconds(junk)
