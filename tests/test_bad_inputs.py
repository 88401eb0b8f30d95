"""Bad inputs fail at once with a message naming the input and the fix (issue 14, points 1-5).

Fast unit tests of ``models/input_checks.py`` and the lazy segment plan, then ONE real headless ComfyUI server (tiny
random Wan 2.1 models, FRAMEMEMORY_DEMO=1, like tests/test_e2e_server.py) that gets every bad prompt through
``POST /prompt`` and must answer each with an execution error in seconds, stay alive, and still run a good prompt.
"""
from __future__ import annotations

import json
import math
import time
import tracemalloc
from pathlib import Path

import av
import pytest
import requests
import torch

from framememory.headless.comfy_server import ComfyServer, substitute_inputs

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_API = REPO_ROOT / "demo" / "workflows" / "api" / "storyboard_wan21_tiny_api.json"
TINY_NAMES = {
    ("UNETLoader", "unet_name"): "framememory_tiny_wan21.safetensors",
    ("VAELoader", "vae_name"): "framememory_tiny_wan21_vae.safetensors",
    ("FrameMemoryLoadEncoder", "encoder_name"): "framememory_tiny_wan21_encoder.safetensors",
}
BROKEN_ENCODER = "broken_config.safetensors"
FRAME = "bikes_frame0.png"  # the first frame of bikes.mp4 (a real street): LoadImage is far cheaper than LoadVideo
GIB = 2 ** 30


# ---- unit tests of the checks -------------------------------------------------------------------
def test_segment_schedule_is_lazy_and_matches_the_list():
    from framememory.memory.storyboard import (MAX_STORYBOARD_SECONDS, SegmentSchedule, parse_storyboard,
                                               plan_segments)

    shots = parse_storyboard("1.0 | a\n2.0 | b\n0.3 | c")
    for continues in (False, True):
        lazy = SegmentSchedule(shots, 16.0, 4, continues=continues)
        assert list(lazy) == plan_segments(shots, 16.0, 4, continues=continues)
        assert list(lazy[1:]) == list(lazy)[1:] and lazy[-1] == list(lazy)[-1]
    hour = parse_storyboard(f"{MAX_STORYBOARD_SECONDS / 2} | a\n{MAX_STORYBOARD_SECONDS / 2} | b")
    tracemalloc.start()
    schedule = SegmentSchedule(hour, 16.0, 4)
    last = schedule[len(schedule) - 1]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(schedule) == 3600 and last.shot == 1 and last.start_frame + last.frames == schedule.total_frames
    assert peak < 64 * 1024, f"planning an hour allocated {peak} bytes"
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="over the limit of 3600 s"):
        SegmentSchedule(parse_storyboard("1e9 | a cat"), 16.0, 4)
    assert time.perf_counter() - t0 < 0.1


def test_storyboard_durations_and_length_limit():
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.input_checks import check_storyboard_length

    for bad in ("inf", "nan", "-inf"):
        with pytest.raises(ValueError, match="line 1: duration must be > 0 and finite"):
            parse_storyboard(f"{bad} | a cat")
    shots = parse_storyboard("1e6 | a cat")  # finite: parsed, then refused with the estimate
    with pytest.raises(ValueError) as err:
        check_storyboard_length(shots, 16.0, 4, 4, tokens_per_s=182.0)
    text = str(err.value)
    assert "1e+06 s: 1e+06 segments" in text and "1.667e+04 minutes" in text, text
    assert "1.82e+08 memory tokens at the end" in text and "limit is 3600 s" in text, text
    with pytest.raises(ValueError, match="1e.308 s: 1e.308 segments, 1.667e.306 minutes of video, more than 1e308 memory"):
        check_storyboard_length(parse_storyboard("1e308 | a cat"), 16.0, 4, 4, tokens_per_s=182.0)
    assert check_storyboard_length(parse_storyboard("3600 | a cat"), 16.0, 4) == 3600.0


def test_numbers_seed_and_latents():
    from framememory.models.input_checks import (SEED_SPAN, check_cfg, check_fps, check_latent_finite, check_seed)

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^fps is .*not a finite number; use the video's frame rate"):
            check_fps(bad)
        with pytest.raises(ValueError, match="^cfg is .*not a finite number; use a guidance scale"):
            check_cfg(bad)
    assert check_fps(16) == 16.0 and check_cfg(0) == 0.0
    with pytest.raises(ValueError, match=f"seed {SEED_SPAN - 1} is out of range for 2 segments.*0 to {SEED_SPAN - 2}"):
        check_seed(SEED_SPAN - 1, 2)
    assert check_seed(SEED_SPAN - 2, 2) == SEED_SPAN - 2 and check_seed(SEED_SPAN - 1, 1) == SEED_SPAN - 1
    latent = torch.zeros(1, 16, 4, 8, 8)
    assert check_latent_finite(latent, 3) is latent
    latent[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="seed 3 gave 1 NaN / inf latent values"):
        check_latent_finite(latent, 3)


def test_frames_drop_alpha_and_refuse_nan():
    from framememory.models.input_checks import check_frames

    rgba = torch.rand(5, 8, 8, 4)
    assert torch.equal(check_frames("start_images", rgba), rgba[..., :3])
    grey = torch.rand(2, 8, 8, 1)
    assert torch.equal(check_frames("images", grey), grey.expand(2, 8, 8, 3))
    rgba[2, 3, 4, 1] = float("nan")
    with pytest.raises(ValueError, match="start_images contain 1 NaN / inf values"):
        check_frames("start_images", rgba)
    with pytest.raises(ValueError, match=r"images must be IMAGE frames \[F, H, W, 3\]"):
        check_frames("images", torch.rand(8, 8, 3))


def test_frame_size_minimum_and_multiples(tiny_wan):
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.input_checks import check_frame_size, min_frame_size

    model, _, encoder, _, _ = tiny_wan
    assert min_frame_size(model, encoder) == (64, 64)  # 8 px VAE x 2 patch x 4 (rate 4x4x2)
    assert min_frame_size(model, encoder, "off") == (16, 16)  # no memory tokens: one DiT token
    assert min_frame_size(model, MemoryEncoder.untrained("2x2x2")) == (32, 32)
    for size in (16, 32, 48):
        with pytest.raises(ValueError, match=f"{size}x{size} is below the minimum frame size 64x64.*use at least 64x64"):
            check_frame_size(model, size, size, encoder)
    with pytest.raises(ValueError, match="multiples of 16x16.*e.g. 256x128"):
        check_frame_size(model, 264, 136, encoder)
    assert check_frame_size(model, 64, 64, encoder).FAMILY == "wan21"


def test_apply_memory_checks_the_size_as_the_storyboard_does(tiny_wan):
    from framememory.memory.history import HistoryBuffer
    from framememory.models.memory_value import Memory
    from framememory.nodes.memory_nodes import ApplyMemory

    model, _, encoder, clip, _ = tiny_wan
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a cat"))
    with pytest.raises(ValueError, match="48x48 is below the minimum frame size 64x64"):
        ApplyMemory.execute(model, Memory(HistoryBuffer(), encoder, 16.0, 48, 48), cond, cond)
    with pytest.raises(ValueError, match="multiples of 16x16 for wan21, got 136x64"):
        ApplyMemory.execute(model, Memory(HistoryBuffer(), encoder, 16.0, 136, 64), cond, cond)
    patched, positive, _ = ApplyMemory.execute(model, Memory(HistoryBuffer(), encoder, 16.0, 128, 64), cond, cond).result
    assert patched is not model and len(positive) == len(cond)


def test_memory_estimate_refuses_what_cannot_fit(tiny_wan, monkeypatch):
    import framememory.models.input_checks as checks

    model, vae, _, _, _ = tiny_wan
    small = checks.estimate_memory(model, vae, 256, 128, 45, 13, 4)
    big = checks.estimate_memory(model, vae, 4096, 4096, 45, 13, 4)
    assert big.total(cpu=True) > 64 * small.total(cpu=True)
    assert big.host["output_frames"] == 45 * 4096 * 4096 * 3 * checks.OUTPUT_BYTES_PER_VALUE
    monkeypatch.setattr(checks, "available_memory", lambda: (32 * GIB, None))  # a machine with 32 GiB free RAM
    checks.check_memory(model, vae, 256, 128, 45, 13, 4)
    checks.check_memory(model, vae, 832, 480, 16 * 60, 13, 4, memory_tokens=182 * 60)  # a minute of 480p
    with pytest.raises(ValueError, match="4096x4096 for 45 output frames needs about .* GiB of RAM but 32.0 GiB") as err:
        checks.check_memory(model, vae, 4096, 4096, 45, 13, 4)
    largest = str(err.value).split("the largest size that fits is ")[1].split(" ")[0]
    w, h = (int(v) for v in largest.split("x"))
    assert w == h and 64 <= w < 4096
    fits = checks.estimate_memory(model, vae, w, h, 45, 13, 4).total(cpu=True)
    over = checks.estimate_memory(model, vae, w + 16, h + 16, 45, 13, 4).total(cpu=True)
    assert fits <= 32 * GIB < over, (largest, fits / GIB, over / GIB)
    monkeypatch.setattr(checks, "available_memory", lambda: (32 * GIB, 12 * GIB))  # 12 GiB GPU: tiled VAE decode
    gpu = checks.check_memory(model, vae, 832, 480, 16 * 60, 13, 4, memory_tokens=182 * 60)
    assert gpu.device["vae_decode"] < checks.estimate_memory(model, vae, 832, 480, 960, 13, 4).device["vae_decode"]


def test_encoder_config_errors_name_the_file(tmp_path):
    from safetensors.torch import save_file

    from framememory.memory.config import EncoderConfig
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.input_checks import load_naming_file

    with pytest.raises(ValueError, match=r"x\.safetensors: the config metadata is not valid JSON \(.*line 1 column"):
        EncoderConfig.from_json('{"dim": 128,', source="x.safetensors")
    with pytest.raises(ValueError, match="invalid encoder config"):
        EncoderConfig.from_json('{"dim": "wide"}')
    path = tmp_path / BROKEN_ENCODER
    save_file({"w": torch.zeros(1)}, str(path), {"framememory_config": '{"family": "wan21", "dim": 128,'})
    with pytest.raises(ValueError, match=f"memory encoder file {path}: .*not valid JSON.*re-save"):
        load_naming_file(str(path), MemoryEncoder.from_file)


def test_non_finite_latents_fail_the_segment(tiny_wan):
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models import families
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    model, vae, encoder, clip, _ = tiny_wan
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    weight = families.diffusion_model(model).head.head.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("inf"))  # a broken (overflowed) checkpoint
        with pytest.raises(ValueError, match="seed 7 gave .* NaN / inf latent values"):
            run_storyboard(model, vae, clip, encoder, neg, parse_storyboard("0.5 | a cat"),
                           SamplerSettings(steps=1, sampler_name="euler", seed=7), 128, 64, 16.0, 4)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


# ---- one real server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(comfy, comfy_server, media_dir):
    """The session's one server (tests/conftest.py ``comfy_server``: the tiny Wan 2.1 trio of demo/make_tiny_models.py)
    with a truncated-JSON encoder file in its memory_encoders folder and bikes.mp4's first frame in its inputs."""
    from safetensors.torch import save_file

    srv = comfy_server
    srv.wait_idle()
    save_file({"w": torch.zeros(1)}, str(srv.models_dir / "memory_encoders" / BROKEN_ENCODER),
              {"framememory_config": '{"family": "wan21", "dim": 128,'})  # truncated JSON
    with av.open(str(media_dir / "bikes.mp4")) as container:
        next(container.decode(video=0)).to_image().save(srv.input_dir / FRAME)
    return srv


def _prompt(start: bool = False, **storyboard) -> dict:
    """The tiny workflow cut to one 0.5 s shot at 128x64, 1 step; ``start``: with a 13-frame starting clip (node "3":
    a real frame, node "1", repeated)."""
    api = substitute_inputs(json.loads(TINY_API.read_text()), TINY_NAMES)
    del api["2"]
    api["1"] = {"class_type": "LoadImage", "inputs": {"image": FRAME}}
    api["3"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 13}}
    api["9"]["inputs"].update({"storyboard": "0.5 | a cat", "steps": 1, "width": 128, "height": 64, **storyboard})
    if not start:
        del api["9"]["inputs"]["start_images"], api["1"], api["3"]
    return api


def _with_start(node: dict, **storyboard) -> dict:
    """``_prompt(start=True)`` whose starting clip goes through ``node`` (inputs may point at node "3", the clip)."""
    api = _prompt(start=True, **storyboard)
    api["20"] = node
    api["9"]["inputs"]["start_images"] = ["20", 0]
    return api


def _post(server: ComfyServer, api: dict) -> str:
    """POST /prompt with NaN / inf allowed in the JSON (as a browser or script may send them); returns the id."""
    body = json.dumps({"prompt": api, "client_id": server.client_id})  # allow_nan: NaN, Infinity
    r = requests.post(server.url + "/prompt", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["prompt_id"]


NAN = float("nan")
BAD = {  # case -> (prompt factory, fragments the error must contain: the input and the fix)
    "storyboard 1e9 s": (lambda: _prompt(storyboard="1e9 | a cat"),
                         ["1e+09 s", "segments", "minutes of video", "memory tokens at the end", "limit is 3600 s"]),
    "storyboard 1e6 s": (lambda: _prompt(storyboard="1e6 | a cat"), ["1e+06 s", "limit is 3600 s", "Shorten"]),
    "storyboard inf s": (lambda: _prompt(storyboard="inf | a cat"), ["line 1: duration", "finite", "'inf'"]),
    "storyboard 1e308 s": (lambda: _prompt(storyboard="1e308 | a cat"), ["1e+308 s", "limit is 3600 s"]),
    "4096x4096": (lambda: _prompt(start=True, width=4096, height=4096),  # refused before the clip is fitted
                  ["4096x4096", "GiB", "available", "the largest size that fits is"]),
    "NaN start frames": (lambda: _with_start({"class_type": "ImageBlend", "inputs": {
        "image1": ["3", 0], "image2": ["3", 0], "blend_factor": NAN, "blend_mode": "normal"}}),
        ["start_images contain", "NaN / inf values", "check it"]),
    "cfg NaN": (lambda: _prompt(cfg=NAN), ["cfg is nan", "use a guidance scale"]),
    "fps NaN": (lambda: _prompt(fps=NAN), ["fps is nan", "frame rate"]),
    "seed 2^64-1": (lambda: _prompt(seed=2 ** 64 - 1, storyboard="2.0 | a cat"),
                    [f"seed {2 ** 64 - 1} is out of range for 2 segments", f"0 to {2 ** 64 - 2}"]),
    "broken encoder JSON": (lambda: substitute_inputs(_prompt(), {("FrameMemoryLoadEncoder", "encoder_name"): BROKEN_ENCODER}),
                            [BROKEN_ENCODER, "not valid JSON", "re-save"]),
    "16x16": (lambda: _prompt(width=16, height=16), ["16x16 is below the minimum frame size 64x64", "use at least"]),
    "48x48": (lambda: _prompt(width=48, height=48), ["48x48 is below the minimum frame size 64x64"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_at_once_naming_the_input(server, case):
    make, fragments = BAD[case]
    arrived = {}  # event type / executing node -> arrival time
    rss0 = server.rss_mb()
    events = server.follow(_post(server, make()), timeout=120, on_event=lambda e: arrived.setdefault(
        (e["data"] or {}).get("node") if e["type"] == "executing" else e["type"], time.monotonic()))
    grown = server.rss_mb() - rss0
    last = events[-1]
    assert last["type"] == "execution_error", f"{case}: {[e['type'] for e in events]}"
    message = last["data"]["exception_message"]
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{case}: {missing} not in {message!r}"
    failing = last["data"]["node_id"]  # the node that refused: from its start to the error, without model loading
    seconds = arrived["execution_error"] - arrived.get(failing, arrived["execution_error"])
    assert seconds < 3, f"{case}: node {failing} refused after {seconds:.1f} s"
    if case.startswith("storyboard"):
        assert grown < 50, f"{case}: server RSS grew {grown:.0f} MiB before the refusal"
    assert server.alive()


# ---- memory files (issue 25): each refused by the node that reads or checks it, in seconds, naming the file --------
LAB = REPO_ROOT / "lab_model"
LAB_ENCODER = "framememory_lab_wan21_encoder.safetensors"


def _tiny_memory(server, position=None, fps: float = 16.0):
    """A Memory of the tiny encoder with no segments (no LR stream: no VAE bound), at 128x64."""
    from framememory.memory.history import HistoryBuffer
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.memory_value import Memory

    encoder = MemoryEncoder.from_file(str(server.models_dir / "memory_encoders" / TINY_NAMES[
        ("FrameMemoryLoadEncoder", "encoder_name")]))
    return Memory(HistoryBuffer(), encoder, fps, 128, 64, "frame_preservation", position)


def _lab_memory(media_dir):
    """A real memory made with the lab set (its DiT, VAE and encoder) from 13 frames of bikes.mp4 at 128x64."""
    import comfy.sd
    import comfy.utils
    from framememory.models.encoding import MemoryEncoder
    from framememory.models.history_writer import history_from_frames

    model = comfy.sd.load_diffusion_model(str(LAB / "framememory_lab_wan21.safetensors"))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(LAB / "framememory_lab_wan21_vae.safetensors")))
    with av.open(str(media_dir / "bikes.mp4")) as c:
        frames = torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for _, f in zip(range(13), c.decode(video=0))])
    memory, _ = history_from_frames(model, vae, MemoryEncoder.from_file(str(LAB / LAB_ENCODER)), frames.float() / 255,
                                    4, 16.0, 128, 64)
    return memory


@pytest.fixture(scope="module")
def memory_files(server, media_dir, tmp_path_factory):
    """Memory files in the server's output folder ``fm/``: damaged, foreign and mismatched ones, a finished run."""
    import dataclasses

    from safetensors.torch import save_file

    from framememory.memory.history import PartKey
    from framememory.memory.memory_file import StoryboardPosition, storyboard_hash
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.resume import save_memory_file

    fm = server.output_dir / "fm"
    fm.mkdir(parents=True, exist_ok=True)
    (fm / "bad_json.fmem").mkdir()
    (fm / "bad_json.fmem" / "index.json").write_text("{oops")
    (fm / "no_segments.fmem").mkdir()
    (fm / "no_segments.fmem" / "index.json").write_text(json.dumps({"format": "memory/2", "generation": 1}))
    save_file({"w": torch.zeros(1)}, str(fm / "old_json.safetensors"), {"framememory_memory": "{oops"})
    save_file({"w": torch.zeros(1)}, str(fm / "old_no_segments.safetensors"),
              {"framememory_memory": json.dumps({"format": "memory/1"})})
    save_memory_file(str(fm / "lab"), _lab_memory(media_dir))
    finished = StoryboardPosition(storyboard_hash(parse_storyboard("0.5 | a cat")), 1, 1, -1, 42, 0.5, 0, {})
    save_memory_file(str(fm / "finished"), _tiny_memory(server, finished))
    save_memory_file(str(fm / "at24fps"), _tiny_memory(server, fps=24.0))
    wide = _tiny_memory(server)
    wide.history.append(torch.zeros(16, 4, 8, 16), torch.zeros(16, 64, 128, 3))
    seg = wide.history.segments[0]
    wide.history.segments[0] = dataclasses.replace(seg, frames=None, encoded={  # tokens of a 3072-wide DiT
        PartKey(): (torch.zeros(8, 3072), torch.zeros(8, 3))})
    save_memory_file(str(fm / "wide_tokens"), wide)
    (server.output_dir / "afile").write_text("a file, not a folder")
    (fm / "taken.fmem").write_text("a file where the memory folder goes")
    (server.output_dir / "escape").symlink_to(tmp_path_factory.mktemp("outside_output"))
    return fm


def _load_memory_prompt(path: str, encoder: str | None = None, **storyboard) -> dict:
    """``_prompt`` with a Load Memory node (tiny VAE; ``encoder``: another encoder file) into the Storyboard."""
    api = _prompt(**storyboard)
    api["12"] = {"class_type": "FrameMemoryLoadMemory", "inputs": {"path": path, "memory_encoder": ["8", 0],
                                                                   "vae": ["5", 0]}}
    if encoder:
        api["13"] = {"class_type": "FrameMemoryLoadEncoder", "inputs": {"encoder_name": encoder}}
        api["12"]["inputs"]["memory_encoder"] = ["13", 0]
    api["9"]["inputs"]["memory"] = ["12", 0]
    return api


BAD_MEMORY = {  # case -> (prompt factory, fragments the error must contain)
    "index not JSON": (lambda: _load_memory_prompt("fm/bad_json"),
                       ["fm/bad_json.fmem/index.json is not valid JSON", "save the memory again"]),
    "index without segments": (lambda: _load_memory_prompt("fm/no_segments"),
                               ["fm/no_segments.fmem/index.json lacks", "segments", "damaged"]),
    "old file, metadata not JSON": (lambda: _load_memory_prompt("fm/old_json"),
                                    ["fm/old_json.safetensors", "metadata is not valid JSON"]),
    "old file without segments": (lambda: _load_memory_prompt("fm/old_no_segments"),
                                  ["fm/old_no_segments.safetensors", "no 'segments' list"]),
    "lab memory, tiny VAE": (lambda: _load_memory_prompt("fm/lab", encoder=LAB_ENCODER),
                             ["fm/lab.fmem was made with another VAE", "connect the VAE the memory was made with"]),
    "memory of a 3072-wide DiT": (lambda: _load_memory_prompt("fm/wide_tokens"),
                                  ["tokens are 3072 wide but this wan21 model's width is 128", "made for another DiT"]),
    "memory at 24 fps": (lambda: _load_memory_prompt("fm/at24fps"), ["memory was made at 24 fps but this run is at 16",
                                                                     "set fps to 24"]),
    "resume, finished run": (lambda: _prompt(save_path="fm/finished", resume=True),
                             ["fm/finished.fmem holds a finished run of this storyboard", "turn resume off"]),
    "resume without save_path": (lambda: _prompt(resume=True), ["resume is on but save_path is empty"]),
    "save_path under a file": (lambda: _prompt(save_path="afile/story"),
                               ["afile is a file where a folder is expected", "choose a save_path"]),
    "save_path is a file": (lambda: _prompt(save_path="fm/taken"), ["taken.fmem is a file, not a memory folder"]),
    "save_path through a link": (lambda: _prompt(save_path="escape/story"),
                                 ["through a symbolic link", "outside ComfyUI's output folder"]),
}


@pytest.mark.parametrize("case", list(BAD_MEMORY))
def test_bad_memory_file_fails_at_once_naming_it(server, memory_files, case):
    make, fragments = BAD_MEMORY[case]
    arrived = {}
    events = server.follow(_post(server, make()), timeout=120, on_event=lambda e: arrived.setdefault(
        (e["data"] or {}).get("node") if e["type"] == "executing" else e["type"], time.monotonic()))
    last = events[-1]
    assert last["type"] == "execution_error", f"{case}: {[e['type'] for e in events]}"
    message = last["data"]["exception_message"]
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{case}: {missing} not in {message!r}"
    assert last["data"]["node_id"] in ("9", "12"), last["data"]  # the Storyboard or Load Memory refused it
    seconds = arrived["execution_error"] - arrived.get(last["data"]["node_id"], arrived["execution_error"])
    assert seconds < 3, f"{case}: node {last['data']['node_id']} refused after {seconds:.1f} s"
    assert server.alive()


def test_rgba_start_frames_and_good_prompt_run_after_the_bad_ones(server):
    """Run last (definition order): after every bad prompt the server still runs a good one, with RGBA start frames
    (alpha from the clip's red channel) whose alpha is dropped."""
    api = _prompt(start=True, width=64, height=64)  # the smallest size: the run is the file's slowest part
    api["3"]["inputs"]["image"] = ["22", 0]  # repeat the RGBA frame
    api["21"] = {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "red"}}
    api["22"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["1", 0], "alpha": ["21", 0]}}
    prompt_id = _post(server, api)
    server.raise_for_events(server.follow(prompt_id, timeout=300))
    history = server.history(prompt_id)
    report = next(ui["framememory_report"][0] for ui in history["outputs"].values() if ui.get("framememory_report"))
    assert report["width"] == 64 and report["height"] == 64 and report["start_frames"] == 13
    assert report["output_frames"] == 13 + report["total_frames"] and math.isfinite(report["peak_rss_mb"])
    assert server.output_files(history, "11", (".mp4",)), history["outputs"]
