"""Crash safety of memory folders (memory/memory_file.py): a writer killed with SIGKILL at any moment leaves a folder
that loads exactly as its last committed segment, and the next writer continues it and leaves no stale file.

Two ways of killing: at every file-system step of a run's writes (the writer kills itself on its k-th ``os.fsync`` /
``os.replace`` / ``os.remove`` call, for every k), and at random moments (a writer appending in a loop, killed from
outside after a random delay, then continued by the next writer, again and again). Writers are forked from a helper
process that has imported torch but run nothing (so forking is safe), which keeps each kill cheap.

The records: segment ``i`` has seeded random tensors of the tiny size of benchmarks/memory_file_io.py; the newest
segment keeps its pixels and loses them when the next one is appended (as a 2x2x8 encoder group does), so every append
writes two segment files, the state and the index."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
BENCHMARKS = TESTS.parent / "benchmarks"
FIRST = 2  # segments of the first write
LAST = 4  # segments after the scripted run (two appends)


def _bench():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import memory_file_io

    return memory_file_io


def segment(i: int, frames: bool):
    """Segment ``i``: tensors seeded by ``i`` (the same in every process); pixels only when ``frames``."""
    import torch

    from framememory.memory.history import HistorySegment, PartKey

    size, g = _bench().SIZES["tiny"], torch.Generator().manual_seed(1000 + i)
    tokens = torch.randn(size["tokens"], size["dim"], generator=g)
    positions = torch.arange(size["tokens"] * 3, dtype=torch.float32).reshape(-1, 3) + i
    latent, lr = torch.randn(size["latent"], generator=g), torch.randn(size["lr"], generator=g)
    pixels = torch.randint(0, 256, size["frames"], generator=g, dtype=torch.uint8)
    return HistorySegment(latent=latent, frames=pixels if frames else None, num_frames=16, start_frame=16 * i,
                          start_latent=4 * i, stream_start=i == 0, encoded={PartKey(): (tokens, positions)},
                          lr_latents={0: lr})


def record(segments: list, cache_shapes: list):
    """The record after ``len(segments)`` segments (state tensors filled with that count)."""
    bench = _bench()
    return bench.make_record(bench.SIZES["tiny"], "frame_preservation", list(segments), len(segments),
                             bench.TensorPool(), cache_shapes)


def expected(n: int, cache_shapes: list):
    return record([segment(i, frames=i == n - 1) for i in range(n)], cache_shapes)


def append(folder: str, segments: list, cache_shapes: list) -> None:
    """Drop the last segment's pixels (a new object), add the next segment with pixels, save."""
    from framememory.memory.memory_file import save_memory

    if segments:
        segments[-1] = replace(segments[-1], frames=None)
    segments.append(segment(len(segments), frames=True))
    save_memory(folder, record(segments, cache_shapes))


def _kill_on_call(k: int) -> None:
    """Make the k-th call of os.fsync / os.replace / os.remove (from now on) kill this process first."""
    calls = [0]

    def wrap(fn):
        def inner(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return inner
    os.fsync, os.replace, os.remove = wrap(os.fsync), wrap(os.replace), wrap(os.remove)


def _scripted_run(folder: str, cache_shapes: list) -> None:
    """The writes of one run: a first write of FIRST segments, then appends up to LAST."""
    from framememory.memory.memory_file import save_memory

    segments = [segment(i, frames=i == FIRST - 1) for i in range(FIRST)]
    save_memory(folder, record(segments, cache_shapes))
    while len(segments) < LAST:
        append(folder, segments, cache_shapes)


def _appending_loop(folder: str, cache_shapes: list) -> None:
    """Continue the folder (load it if it holds a segment) and append forever."""
    from framememory.memory.memory_file import find_memory, load_memory

    segments = list(load_memory(folder).history.segments) if find_memory(folder) else []
    while True:
        append(folder, segments, cache_shapes)


def helper(mode: str, work: str, count: int, seed: int) -> None:
    """Run in a subprocess: fork one writer per kill point (``mode`` "steps": writer k dies at its k-th step, k = 1 ..
    count, each in folder ``work/k.fmem``) or per trial (``mode`` "random": ``count`` trials on ``work/loop.fmem``,
    each writer killed after a random delay, the next trial only after the test answers on stdin). Prints one JSON
    line per writer: ``{"k", "killed"}``."""
    cache_shapes = _bench().lr_cache_shapes(_bench().SIZES["tiny"])
    import framememory.memory.memory_file  # noqa: F401  (imported before forking)

    rng = random.Random(seed)
    for k in range(1, count + 1):
        pid = os.fork()
        if pid == 0:
            if mode == "steps":
                _kill_on_call(k)
                _scripted_run(os.path.join(work, f"{k}.fmem"), cache_shapes)
            else:
                _appending_loop(os.path.join(work, "loop.fmem"), cache_shapes)
            os._exit(0)
        if mode == "random":
            time.sleep(rng.uniform(0.0, 0.6))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"k": k, "killed": os.WIFSIGNALED(status)}), flush=True)
        if mode == "random":
            sys.stdin.readline()  # the test has checked the folder


def _start_helper(mode: str, work: Path, count: int, seed: int = 0) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_memory_file_crash as t; "
            f"t.helper({mode!r}, {str(work)!r}, {count}, {seed})")
    env = {**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def cache_shapes():
    return _bench().lr_cache_shapes(_bench().SIZES["tiny"])


def _check_folder(folder: Path, cache_shapes: list) -> int:
    """The folder loads as exactly the record of its committed segment count and holds only the files its index
    names; returns that count (0: no commit yet, nothing loads)."""
    from framememory.memory.memory_file import find_memory, load_memory
    from test_memory_file import assert_same_record

    if find_memory(folder) is None:
        return 0
    loaded = load_memory(folder)
    n = loaded.position.next_segment
    assert_same_record(expected(n, cache_shapes), loaded)
    return n


def _files_named_by_index(folder: Path) -> set[str]:
    index = json.loads((folder / "index.json").read_text())
    return {"index.json", f"state-{index['state']:06d}.safetensors",
            *(f"segment-{i:06d}-{g:06d}.safetensors" for i, g in enumerate(index["segments"]))}


def test_sigkill_at_every_write_step_leaves_the_last_commit(tmp_path, cache_shapes):
    from framememory.memory.memory_file import load_memory, memory_folder

    steps = 36  # the scripted run makes 34 calls (10 for the first write, 12 per append): the last two complete it
    proc = _start_helper("steps", tmp_path, steps)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["k"] for r in results] == list(range(1, steps + 1))
    counts = []
    for r in results:
        folder = tmp_path / f"{r['k']}.fmem"
        counts.append(_check_folder(folder, cache_shapes))
        if not r["killed"]:
            assert counts[-1] == LAST and set(os.listdir(folder)) == _files_named_by_index(folder)
    killed = [c for r, c in zip(results, counts) if r["killed"]]
    assert len(killed) == 34 and killed == sorted(killed)  # commits only move forward
    assert set(killed) == {0, FIRST, FIRST + 1, LAST}  # each commit (and 'nothing yet') was seen
    for r, n in zip(results, counts):  # the next writer continues every killed folder and leaves no stale file
        folder = tmp_path / f"{r['k']}.fmem"
        segments = list(load_memory(folder).history.segments) if n else []
        append(memory_folder(folder), segments, cache_shapes)
        assert _check_folder(folder, cache_shapes) == n + 1
        assert set(os.listdir(folder)) == _files_named_by_index(folder), (r, sorted(os.listdir(folder)))


def test_sigkill_at_random_moments_then_continue(tmp_path, cache_shapes):
    trials, seed = 12, 25
    proc = _start_helper("random", tmp_path, trials, seed)
    counts = []
    try:
        for _ in range(trials):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-3000:]
            assert json.loads(line)["killed"]
            counts.append(_check_folder(tmp_path / "loop.fmem", cache_shapes))
            proc.stdin.write("go\n")
            proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert counts == sorted(counts) and counts[-1] >= 3, counts  # every trial resumed the last one's commit and grew
