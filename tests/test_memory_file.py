"""Memory folders (memory/memory_file.py, format memory/2): an exact round trip, appends that write only the new
segment (bytes per append constant as the history grows), clear errors for damaged, foreign and old files, the old
single-file format read as before, and a write that fails (file size limit) leaving the last committed segment.
Crash safety under SIGKILL is in tests/test_memory_file_crash.py; the save_path checks in
tests/test_memory_file_checks.py."""
from __future__ import annotations

import json
import os
import resource
import signal
import sys

import pytest
import torch
from safetensors.torch import save_file

from framememory.memory.memory_file import (INDEX, MemoryFileError, MemoryRecord, StreamState, find_memory,
                                            load_memory, memory_folder, save_memory)


@pytest.fixture(scope="module")
def bench(repo_root):
    """benchmarks/memory_file_io.py: the synthetic records of real-shaped tensors (here its tiny size)."""
    sys.path.insert(0, str(repo_root / "benchmarks"))
    import memory_file_io

    yield memory_file_io
    sys.path.remove(str(repo_root / "benchmarks"))


@pytest.fixture(scope="module")
def cache_shapes(bench):
    return bench.lr_cache_shapes(bench.SIZES["tiny"])


def _record(bench, cache_shapes, n: int, layout: str = "frame_preservation", step: int = 1, segments=None,
            pool=None) -> MemoryRecord:
    """A tiny record of ``n`` segments (``segments``: the first ones, reused) in ``layout``."""
    size, pool = bench.SIZES["tiny"], pool or bench.TensorPool()
    segments = list(segments or [])
    while len(segments) < n:
        segments.append(bench.make_segment(size, layout, len(segments), pool))
    return bench.make_record(size, layout, segments, step, pool, cache_shapes)


def assert_same_record(a: MemoryRecord, b: MemoryRecord) -> None:
    """Every tensor, description and setting of two records equal (used by the crash tests too)."""
    assert len(a.history.segments) == len(b.history.segments)
    for x, y in zip(a.history.segments, b.history.segments):
        assert torch.equal(x.latent, y.latent)
        assert (x.frames is None) == (y.frames is None) and (x.frames is None or torch.equal(x.frames, y.frames))
        assert (x.num_frames, x.start_frame, x.start_latent, x.stream_start) == \
               (y.num_frames, y.start_frame, y.start_latent, y.stream_start)
        assert x.encoded.keys() == y.encoded.keys() and x.lr_latents.keys() == y.lr_latents.keys()
        for k in x.encoded:
            assert len(x.encoded[k]) == len(y.encoded[k])
            assert all(torch.equal(s, t) for s, t in zip(x.encoded[k], y.encoded[k]))
        assert all(torch.equal(x.lr_latents[k], y.lr_latents[k]) for k in x.lr_latents)
    assert a.history.lr_streams.keys() == b.history.lr_streams.keys()
    for p, s in a.history.lr_streams.items():
        t = b.history.lr_streams[p]
        assert (s.mode, s.time_stride, s.context, s.started) == (t.mode, t.time_stride, t.context, t.started)
        assert (s.cache is None) == (t.cache is None) and (s.tail is None) == (t.tail is None)
        for u, v in zip(s.cache or (), t.cache or ()):
            assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
    assert a.history.states.keys() == b.history.states.keys()
    assert all(a.history.states[e][0] == b.history.states[e][0] and torch.equal(a.history.states[e][1],
                                                                                b.history.states[e][1])
               for e in a.history.states)
    assert torch.equal(a.history.colour_stats, b.history.colour_stats)
    assert (a.fps, a.width, a.height, a.mode, a.position, a.encoder_names) == \
           (b.fps, b.width, b.height, b.mode, b.position, b.encoder_names)
    assert [c.to_json() for c in a.encoders] == [c.to_json() for c in b.encoders]


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("layout", ["frame_preservation", "video_ssm"])
def test_round_trip_is_exact(bench, cache_shapes, tmp_path, layout):
    record = _record(bench, cache_shapes, 4, layout)
    if layout == "frame_preservation":  # a group of two: the first segment's tokens are empty views of the second's
        seg0, seg1 = record.history.segments[:2]
        record.history.segments[0] = type(seg0)(**{**seg0.__dict__, "encoded": {
            k: tuple(t[:0] for t in v) for k, v in seg1.encoded.items()}})
        cache = list(record.history.lr_streams[0].cache)
        cache[0], cache[1] = "Rep", None  # WanVAE's markers survive
        record.history.lr_streams[0] = StreamState("encode", 4, 4, True, tuple(cache))
        record.history.lr_streams[1] = StreamState("encode", 4, 4, True, None, torch.rand(5, 8, 8, 3))  # context mode
    stats = save_memory(tmp_path / "story", record)
    folder = tmp_path / "story.fmem"
    assert stats["segments_written"] == 4 and stats["generation"] == 1 and stats["bytes"] > 0
    assert _files(folder) == [INDEX, *(f"segment-{i:06d}-000001.safetensors" for i in range(4)),
                              "state-000001.safetensors"]
    assert_same_record(record, load_memory(tmp_path / "story"))
    assert_same_record(record, load_memory(folder))  # the folder's own name works too


def test_appends_write_one_segment_and_constant_bytes(bench, tmp_path):
    """The benchmark at tiny size: every append writes one segment file + the state + the index, and the bytes per
    append at 40 s of history are those at 8 s within 1 % (the index grows by a few bytes per segment)."""
    result = bench.run("tiny", [8, 40], work=str(tmp_path), log=lambda *_: None)
    rows = {(r["layout"], r["history_s"]): r for r in result["rows"]}
    for layout in bench.LAYOUTS:
        short, long = rows[(layout, 8)], rows[(layout, 40)]
        assert abs(long["bytes_per_append"] - short["bytes_per_append"]) / short["bytes_per_append"] < 0.01, (short, long)
        assert long["memory1_bytes_per_append"] > 4 * long["bytes_per_append"]  # memory/1 rewrote the whole file
        assert result["spread"][layout]["constant"]


def test_changed_segment_is_rewritten_and_stale_files_go(bench, cache_shapes, tmp_path):
    from dataclasses import replace

    pool = bench.TensorPool()
    record = _record(bench, cache_shapes, 3, "video_ssm", pool=pool)
    folder = memory_folder(tmp_path / "m")
    save_memory(folder, record)
    segments = list(record.history.segments)
    segments[2] = replace(segments[2], frames=None)  # its pixels dropped: a new object
    record2 = _record(bench, cache_shapes, 4, "video_ssm", step=2, segments=segments, pool=pool)
    stats = save_memory(folder, record2)
    assert stats["segments_written"] == 2 and stats["generation"] == 2  # segment 2 again + the new segment 3
    assert _files(folder) == [INDEX, "segment-000000-000001.safetensors", "segment-000001-000001.safetensors",
                              "segment-000002-000002.safetensors", "segment-000003-000002.safetensors",
                              "state-000002.safetensors"]
    assert_same_record(record2, load_memory(folder))
    again = _record(bench, cache_shapes, 4, "video_ssm", step=3)  # equal tensors, but objects this writer never saw
    assert save_memory(folder, again)["segments_written"] == 4
    assert _files(folder) == [INDEX, *(f"segment-{i:06d}-000003.safetensors" for i in range(4)), "state-000003.safetensors"]


def test_loaded_folder_is_appended_to(bench, cache_shapes, tmp_path):
    """Loading registers the folder: a resumed run that saves back appends only its new segment."""
    folder = memory_folder(tmp_path / "m")
    save_memory(folder, _record(bench, cache_shapes, 5))
    loaded = load_memory(folder)
    record = _record(bench, cache_shapes, 6, step=2, segments=loaded.history.segments)
    assert save_memory(folder, record)["segments_written"] == 1
    assert_same_record(record, load_memory(folder))


def _write_memory1(path, record: MemoryRecord) -> None:
    """A file in the single-file layout ``memory/1`` that the pack wrote until issue 25: tensors
    ``segment.{i}.latent|frames|lr.{p}|encoded.{p}.{e}.{j}``, ``lr_stream.{p}.cache.{k}``, ``state.{e}``,
    ``history.colour_stats``; the whole description as JSON under ``framememory_memory``."""
    tensors, segments = {}, []
    for i, seg in enumerate(record.history.segments):
        tensors[f"segment.{i}.latent"] = seg.latent
        if seg.frames is not None:
            tensors[f"segment.{i}.frames"] = seg.frames
        for key, entry in seg.encoded.items():
            for j, t in enumerate(entry):
                tensors[f"segment.{i}.encoded.{key.part}.{key.expert}.{j}"] = t.clone()
        for part, lr in seg.lr_latents.items():
            tensors[f"segment.{i}.lr.{part}"] = lr.clone()
        segments.append({"num_frames": seg.num_frames, "start_frame": seg.start_frame, "start_latent": seg.start_latent,
                         "stream_start": seg.stream_start, "frames": seg.frames is not None,
                         "encoded": {f"{k.part},{k.expert}": len(v) for k, v in seg.encoded.items()},
                         "lr": sorted(seg.lr_latents)})
    streams = {}
    for p, s in record.history.lr_streams.items():
        streams[str(p)] = {"mode": s.mode, "time_stride": s.time_stride, "context": s.context, "started": s.started,
                           "cache": [e if not isinstance(e, torch.Tensor) else "tensor" for e in s.cache], "tail": False}
        tensors.update({f"lr_stream.{p}.cache.{k}": e.clone() for k, e in enumerate(s.cache) if isinstance(e, torch.Tensor)})
    tensors["history.colour_stats"] = record.history.colour_stats
    meta = {"format": "memory/1", "segments": segments, "lr_streams": streams, "states": {},
            "encoders": [json.loads(c.to_json()) for c in record.encoders], "encoder_names": record.encoder_names,
            "fps": record.fps, "width": record.width, "height": record.height, "mode": record.mode,
            "position": record.position.__dict__}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), {"framememory_memory": json.dumps(meta)})


def test_memory1_file_still_loads_and_the_next_write_goes_to_the_folder(bench, cache_shapes, tmp_path):
    record = _record(bench, cache_shapes, 3)
    old = tmp_path / "story.safetensors"
    _write_memory1(old, record)
    assert find_memory(tmp_path / "story") == str(old)
    loaded = load_memory(tmp_path / "story")  # the name without suffix, as the nodes pass it
    assert_same_record(record, loaded)
    assert_same_record(record, load_memory(old))
    longer = _record(bench, cache_shapes, 4, step=2, segments=loaded.history.segments)
    save_memory(tmp_path / "story", longer)
    assert find_memory(tmp_path / "story") == str(tmp_path / "story.fmem") and old.exists()  # the folder wins
    assert_same_record(longer, load_memory(tmp_path / "story"))


def _break_index(folder, text: str) -> None:
    (folder / INDEX).write_text(text)


DAMAGED = {  # case -> (make the damage in a saved folder / file, fragments of the error)
    "index not JSON": (lambda f: _break_index(f, "{not json"), ["index.json is not valid JSON", "Save Memory"]),
    "index without segments": (lambda f: _break_index(f, json.dumps({"format": "memory/2", "generation": 1})),
                               ["index.json lacks segments", "damaged"]),
    "index of a newer format": (lambda f: _break_index(f, json.dumps({"format": "memory/9"})),
                                ["format 'memory/9'", "update ComfyUI-FrameMemory"]),
    "segment file deleted": (lambda f: os.remove(f / "segment-000001-000001.safetensors"),
                             ["segment 1", "segment-000001-000001.safetensors is missing", "damaged"]),
    "segment file truncated": (lambda f: os.truncate(f / "segment-000000-000001.safetensors", 40),
                               ["segment 0", "not a readable safetensors file"]),
    "index names tensors that are not there": (
        lambda f: _break_index(f, (f / INDEX).read_text().replace('"lr_streams": {"0": {"mode": "encode"',
                                                                  '"lr_streams": {"7": {"mode": "encode"')),
        ["does not match its tensors", "KeyError", "lr_stream.7"]),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_folder_names_the_file_and_the_fix(bench, cache_shapes, tmp_path, case):
    damage, fragments = DAMAGED[case]
    save_memory(tmp_path / "m", _record(bench, cache_shapes, 2))
    damage(tmp_path / "m.fmem")
    with pytest.raises(ValueError) as err:
        load_memory(tmp_path / "m")
    assert str(tmp_path / "m.fmem") in str(err.value)
    assert all(f in str(err.value) for f in fragments), str(err.value)


SINGLE_FILES = {  # case -> (tensors, metadata, fragments of the error)
    "metadata not JSON": ({"w": torch.zeros(1)}, {"framememory_memory": "{oops"}, ["metadata is not valid JSON"]),
    "metadata without segments": ({"w": torch.zeros(1)}, {"framememory_memory": json.dumps({"format": "memory/1"})},
                                  ["no 'segments' list"]),
    "an encoder file": ({"w": torch.zeros(1)}, {"framememory_config": "{}"}, ["not a FrameMemory memory file"]),
}


@pytest.mark.parametrize("case", list(SINGLE_FILES))
def test_foreign_or_broken_single_file_names_the_file(tmp_path, case):
    tensors, meta, fragments = SINGLE_FILES[case]
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), meta)
    with pytest.raises(ValueError) as err:
        load_memory(tmp_path / "x")
    assert str(path) in str(err.value) and all(f in str(err.value) for f in fragments), str(err.value)


def test_not_safetensors_and_missing(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_memory(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="run the Storyboard with save_path first"):
        load_memory(tmp_path / "nothing")


def test_failed_write_names_the_file_and_keeps_the_last_segment(bench, cache_shapes, tmp_path):
    """A write the kernel refuses (a file size limit, EFBIG; a full disk, ENOSPC, takes the same path) raises
    MemoryFileError naming the file and the fix, leaves no temporary file, and the folder still loads as before."""
    folder = memory_folder(tmp_path / "m")
    first = _record(bench, cache_shapes, 2, "video_ssm")
    save_memory(folder, first)
    before = _files(folder)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # far below one segment's frames
    try:
        with pytest.raises(MemoryFileError) as err:
            save_memory(folder, _record(bench, cache_shapes, 3, "video_ssm", step=2, segments=first.history.segments))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(err.value)
    assert "segment-000002-000002.safetensors" in message and "the disk is full" in message, message
    assert _files(folder) == before
    assert_same_record(first, load_memory(folder))


def test_folder_name_taken_by_a_file(bench, cache_shapes, tmp_path):
    (tmp_path / "m.fmem").write_text("not a folder")
    with pytest.raises(MemoryFileError, match="m.fmem is a file: choose another save_path"):
        save_memory(tmp_path / "m", _record(bench, cache_shapes, 1))
