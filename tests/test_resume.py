"""Memory files and resuming a storyboard (memory/memory_file.py, models/resume.py, Save / Load Memory): a run that is
stopped (interrupt, or the server killed) and continued from its memory file gives exactly the frames of the run that
was never stopped."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from framememory.memory.history import PartKey

REPO_ROOT = Path(__file__).resolve().parents[1]
W, H = 128, 64  # the in-process runs: small, the VAE's convolutions are most of their time


# ---- in process (tiny Wan 2.1 of the embedded default, real clip) -----------------------------------------------
@pytest.fixture(scope="module")
def story(tiny_wan):
    """(models..., start memory from 29 real frames, negative, shots of 2 segments, sampler settings)."""
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings

    model, vae, encoder, clip, video = tiny_wan
    torch.set_num_threads(1)  # for this module only: tests/conftest.py restores the count after it
    start, _ = history_from_frames(model, vae, encoder, video, 4, 16.0, W, H)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    return model, vae, encoder, clip, start, neg, parse_storyboard("1.0 | a cyclist\n1.0 | a car"), \
        SamplerSettings(2, 3.0, "euler", "simple", 7)


def _run(story, **kwargs):
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, start, neg, shots, sampler = story
    kwargs.setdefault("start", start)
    kwargs.setdefault("sampler", sampler)
    return run_storyboard(model, vae, clip, encoder, neg, shots, width=W, height=H, fps=16.0, latent_frames=4,
                          **kwargs)


def _assert_same_history(a, b):
    assert len(a.segments) == len(b.segments)
    for x, y in zip(a.segments, b.segments):
        assert torch.equal(x.latent, y.latent)
        assert (x.num_frames, x.start_frame, x.start_latent, x.stream_start) == \
               (y.num_frames, y.start_frame, y.start_latent, y.stream_start)
        assert x.encoded.keys() == y.encoded.keys() and x.lr_latents.keys() == y.lr_latents.keys()
        for k in x.encoded:
            assert all(torch.equal(s, t) for s, t in zip(x.encoded[k], y.encoded[k]))
        for k in x.lr_latents:
            assert torch.equal(x.lr_latents[k], y.lr_latents[k])
        assert (x.frames is None) == (y.frames is None)
        assert x.frames is None or torch.equal(x.frames, y.frames)


def test_memory_file_round_trip_is_exact(story, tmp_path):
    from framememory.models.resume import load_memory_file, save_memory_file

    _, vae, encoder, _, start, *_ = story
    path = tmp_path / "sub" / "start.safetensors"
    save_memory_file(str(path), start)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no temporary file left
    back = load_memory_file(str(path), encoder, vae)
    _assert_same_history(start.history, back.history)
    assert back.history.num_tokens == start.history.num_tokens > 0
    assert torch.equal(back.history.colour_stats, start.history.colour_stats)
    (a,), (b,) = start.history.lr_streams.values(), back.history.lr_streams.values()
    assert a.exact and b.exact and a.started == b.started and len(a.cache) == len(b.cache)
    for x, y in zip(a.cache, b.cache):
        assert (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y)
    assert (back.fps, back.width, back.height, back.mode, back.position) == (16.0, W, H, "frame_preservation", None)
    token, pos = back.history.memory(key=PartKey())
    assert torch.equal(token, start.history.memory(key=PartKey())[0]) and pos.shape[1] == 3


def test_interrupted_run_resumes_frame_identical(story, tmp_path, monkeypatch):
    """Interrupt after the first of two segments (no save_path: the interrupt writes the file), load it, continue with
    another seed in the widget: the frames, history, tokens and colour statistics equal the uninterrupted run's
    (colour correction on, so its replay is covered too)."""
    import comfy.model_management

    import framememory.models.storyboard as storyboard
    from framememory.memory.memory_file import load_memory
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.resume import load_memory_file

    _, vae, encoder, _, start, _, _, sampler = story
    full_path = tmp_path / "full.safetensors"
    full, final, report = _run(story, colour_correction=0.7, save_path=str(full_path))
    assert full.shape == (32, H, W, 3) and len(report["segments"]) == 2
    saved = load_memory(str(full_path))
    assert saved.position.finished and saved.position.next_segment == saved.position.total_segments == 2
    assert saved.position.elapsed_s == 2.0 and saved.position.run_start_segment == 2
    folder = tmp_path / "full.fmem"  # the memory folder: one file per segment, the state, the index
    first, second = (s["memory_file_bytes"] for s in report["segments"])
    segment_files = sorted(p.stat().st_size for p in folder.glob("segment-*"))
    assert len(segment_files) == 4 and segment_files[-1] - segment_files[0] < 64  # same tensors, headers differ a bit
    # the first write carried the 2 history segments too; the append wrote one segment, the state and the index
    assert abs(first - second - 2 * segment_files[0]) < 100, (first, second, segment_files)
    _assert_estimate_covers(story, folder, segments=4)

    generate = storyboard.generate_segment

    def stop_after_first(run, plan):
        out = generate(run, plan)
        if plan.index == 0:
            comfy.model_management.interrupt_current_processing(True)
        return out

    monkeypatch.setattr(storyboard, "generate_segment", stop_after_first)
    cut = tmp_path / "interrupted.safetensors"
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        _run(story, colour_correction=0.7, interrupt_path=str(cut))
    monkeypatch.setattr(storyboard, "generate_segment", generate)
    memory = load_memory_file(str(cut), encoder, vae)
    pos = memory.position
    assert (pos.next_segment, pos.next_shot, pos.next_seed, pos.elapsed_s) == (1, 1, 8, 1.0)
    other_seed = SamplerSettings(2, 3.0, "euler", "simple", 12345)  # the file's seed wins
    resumed, final2, report2 = _run(story, start=memory, sampler=other_seed, colour_correction=0.7)
    assert torch.equal(resumed, full), float((resumed - full).abs().max())
    assert report2["resumed_at_segment"] == 1 and [s.get("replayed", False) for s in report2["segments"]] == [True, False]
    _assert_same_history(final.history, final2.history)
    assert torch.equal(final.history.colour_stats, final2.history.colour_stats)
    with pytest.raises(ValueError, match="steps 2 .now 3"):
        _run(story, start=memory, sampler=SamplerSettings(3, 3.0, "euler", "simple", 7), colour_correction=0.7)


def test_load_memory_rejects_another_encoder(story, tmp_path):
    from framememory.memory.config import EncoderConfig
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.resume import load_memory_file, save_memory_file

    _, vae, encoder, _, start, *_ = story
    path = tmp_path / "m.safetensors"
    save_memory_file(str(path), start)
    other = MemoryEncoder(EncoderConfig(**{**json.loads(encoder.cfg.to_json()), "rate": (2, 2, 2)}), None, "other")
    with pytest.raises(ValueError, match="rate"):
        load_memory_file(str(path), other, vae)
    with pytest.raises(FileNotFoundError):
        load_memory_file(str(tmp_path / "missing.safetensors"), encoder, vae)


def _assert_estimate_covers(story, folder: Path, segments: int) -> None:
    """The free-space check's estimate (input_checks.memory_file_bytes) is at least the folder's real size."""
    from framememory.models.input_checks import memory_file_bytes

    model, _, encoder, *_ = story
    real = sum(p.stat().st_size for p in folder.iterdir())
    estimate = memory_file_bytes(model, encoder, "frame_preservation", W, H, 16.0, 4, segments)
    assert real <= estimate, (real, estimate)


def test_resume_refusals_name_the_file_and_the_fix(story, tmp_path):
    """resume without save_path, on a finished run, on another storyboard's run; nothing saved yet starts afresh (a
    folder whose first write never committed too); a memory input wins over the file."""
    import dataclasses

    from framememory.memory.memory_file import storyboard_hash
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.resume import resume_memory, save_memory_file

    _, vae, encoder, _, start, _, shots, _ = story
    with pytest.raises(ValueError, match="resume is on but save_path is empty: set save_path"):
        resume_memory(None, True, None, encoder, vae, shots)
    assert resume_memory(None, False, start, encoder, vae, shots) is start
    path = str(tmp_path / "run")
    assert resume_memory(path, True, None, encoder, vae, shots) is None  # nothing saved yet
    (tmp_path / "run.fmem").mkdir()
    (tmp_path / "run.fmem" / "segment-000000-000001.safetensors").write_bytes(b"half")  # stopped before a commit
    assert resume_memory(path, True, None, encoder, vae, shots) is None
    from framememory.memory.memory_file import StoryboardPosition

    finished = StoryboardPosition(storyboard_hash(shots), 2, 2, -1, 7, 2.0, 2, {})
    save_memory_file(path, dataclasses.replace(start, position=finished))
    with pytest.raises(ValueError, match=r"run.fmem holds a finished run of this storyboard \(2 of 2 segments\): "
                                         r"turn resume off"):
        resume_memory(path, True, None, encoder, vae, shots)
    other = parse_storyboard("3.0 | a boat")
    with pytest.raises(ValueError, match=r"run.fmem holds a run of another storyboard .*set the storyboard back"):
        resume_memory(path, True, None, encoder, vae, other)
    assert resume_memory(path, True, start, encoder, vae, other) is start  # the memory input wins
    unfinished = dataclasses.replace(finished, next_segment=1, next_shot=1)
    save_memory_file(path, dataclasses.replace(start, position=unfinished))
    assert resume_memory(path, True, None, encoder, vae, shots).position == unfinished


def test_mismatched_memory_and_save_path_refused_before_the_first_segment(story, tmp_path, monkeypatch):
    """A memory made at another fps, with latents of another channel count (another family's VAE) or tokens of another
    width (another DiT), and a save_path under a file, on a full disk or as a file, fail before any segment is
    sampled, naming the input and the fix."""
    import dataclasses

    import framememory.models.input_checks as checks
    import framememory.models.storyboard as storyboard
    from framememory.memory.history import HistoryBuffer

    _, _, _, _, start, *_ = story

    def never(*args, **kwargs):
        raise AssertionError("a segment was generated")

    monkeypatch.setattr(storyboard, "generate_segment", never)

    def with_segments(change) -> object:
        segments = [change(s) for s in start.history.segments]
        return dataclasses.replace(start, history=HistoryBuffer(segments))

    cases = {  # start memory / run kwargs -> error fragment
        "fps": (dataclasses.replace(start, fps=24.0), {}, "memory was made at 24 fps but this run is at 16 fps"),
        "channels": (with_segments(lambda s: dataclasses.replace(s, latent=torch.zeros(48, *s.latent.shape[1:]))), {},
                     "latents are 48 channels x 8x16 but this wan21 model at 128x64 makes 16 x 8x16"),
        "token width": (with_segments(lambda s: dataclasses.replace(s, encoded={
            k: (torch.zeros(v[0].shape[0], 3072), *v[1:]) for k, v in s.encoded.items()})), {},
            "tokens are 3072 wide but this wan21 model's width is 128"),
        "size": (dataclasses.replace(start, width=512), {}, "the memory is 512x64 but this run is 128x64"),
    }
    (tmp_path / "afile").write_text("x")
    (tmp_path / "taken.fmem").write_text("x")
    cases["parent is a file"] = (start, {"save_path": str(tmp_path / "afile" / "run.fmem")},
                                 "afile is a file where a folder is expected")
    cases["folder is a file"] = (start, {"save_path": str(tmp_path / "taken.fmem")}, "taken.fmem is a file, not a")
    for case, (memory, kwargs, fragment) in cases.items():
        with pytest.raises(ValueError) as err:
            _run(story, start=memory, **kwargs)
        assert fragment in str(err.value), (case, str(err.value))
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda p: shutil_usage(free=2 ** 10))  # a disk with 1 KiB free
    with pytest.raises(ValueError, match=r"memory file needs about 0\.\d\d GiB but the disk holding .* has 0\.00 GiB free"):
        _run(story, save_path=str(tmp_path / "run"))


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(total=2 * free, used=free, free=free)


# ---- through a real server, killed with SIGKILL mid-run -----------------------------------------------------------
STORY = "2.0 | a cyclist rides down a sunny city street\n2.0 | the cyclist passes parked cars"  # 4 segments of 16


def _prompt(tiny_api: dict, prefix: str, save_path: str = "", resume: bool = False, load: str | None = None) -> dict:
    api = json.loads(json.dumps(tiny_api))
    node = api["9"]["inputs"]
    node.update(storyboard=STORY, steps=2, include_history=False, save_path=save_path, resume=resume)
    api["10"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": prefix}}  # lossless
    del api["11"]
    if load is not None:
        api["12"] = {"class_type": "FrameMemoryLoadMemory",
                     "inputs": {"path": load, "memory_encoder": ["8", 0], "vae": ["5", 0]}}
        node["memory"] = ["12", 0]
    return api


def _frames(server, prompt_id: str) -> np.ndarray:
    from PIL import Image

    files = sorted(server.output_files(server.history(prompt_id), "10", (".png",)))
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _next_segment(folder: Path) -> int:
    """The next segment in the committed index of a memory folder (0 before its first commit)."""
    try:
        return json.loads((folder / "index.json").read_text())["position"]["next_segment"]
    except FileNotFoundError:  # not written yet
        return 0


@pytest.mark.slow  # 118 s: a whole server killed mid-run and restarted; the in-process resume and crash tests stay in the default suite
def test_server_killed_after_two_segments_resumes_frame_identical(comfyui_dir, media_dir, tmp_path):
    from framememory.headless.comfy_server import ComfyServer, add_demo_inputs, substitute_inputs
    from test_e2e_server import TINY_API, TINY_NAMES, VIDEO

    base = tmp_path / "base"
    first = ComfyServer(base, comfyui_dir=comfyui_dir)
    add_demo_inputs(first, media_dir, VIDEO)
    tiny = substitute_inputs(json.loads(TINY_API.read_text()), {**TINY_NAMES, ("LoadVideo", "file"): VIDEO})
    saved = first.output_dir / "resume_test" / "killed.fmem"
    with first:
        reference = _frames(first, first.run(_prompt(tiny, "full"), timeout=900)[0])
        first.post_prompt(_prompt(tiny, "killed", save_path="resume_test/killed"))
        deadline = time.monotonic() + 900
        while _next_segment(saved) < 2:
            assert time.monotonic() < deadline and first.alive(), "segment 2 was never saved" + first.log_tail_text()
            time.sleep(0.1)
        os.killpg(first.proc.pid, signal.SIGKILL)  # no clean-up, no interrupt: as a crash or a power cut
        first.proc.wait(timeout=60)
    stopped_at = _next_segment(saved)
    assert reference.shape == (64, 128, 256, 3) and 2 <= stopped_at < 4, (reference.shape, stopped_at)
    with ComfyServer(base, comfyui_dir=comfyui_dir) as second:
        loaded = _frames(second, second.run(_prompt(tiny, "resumed", load="resume_test/killed"), timeout=900)[0])
        flagged = _frames(second, second.run(_prompt(tiny, "flagged", save_path="resume_test/killed", resume=True),
                                             timeout=900)[0])
    assert loaded.shape == reference.shape and int(np.abs(loaded.astype(int) - reference).max()) == 0
    assert np.array_equal(flagged, reference)
    assert _next_segment(saved) == 4  # the resumed run finished the file
