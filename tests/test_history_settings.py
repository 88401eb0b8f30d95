"""One place for each setting (issue 26, point 2): Load Video as History takes width, height, fps,
segment_latent_frames and memory_mode from the Storyboard its memory feeds (nodes/history_settings.py), and
include_history puts a video history's frames in the Storyboard's output (models/video_history.py).

* the prompt handler on the real lab API prompt: a changed Storyboard value reaches the history node (one log line
  per value, naming both nodes); Storyboards that disagree or a value through a link are left alone;
* the history node refuses such a prompt at the very start of execute (V3 hidden prompt / unique_id), before any
  frame is read, naming both nodes, the setting, both values and the fix;
* a latents-only memory into an encoding memory_mode is refused naming memory_mode, not "another encoder";
* include_history with a video history: the clip's frames, as many as the history holds and equal to a fresh read,
  come before the generated ones; without a source, or with the file gone, none, and the report says why;
* through a real server: the handler is registered and a mismatched prompt runs with the Storyboard's values;
  Storyboards that disagree are refused by the history node before it reads a frame.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
LAB_API = REPO_ROOT / "workflows" / "api" / "storyboard_wan21_lab_api.json"
W, H, FPS = 128, 64, 16.0  # the in-process runs (tiny models): small, the VAE's convolutions are most of their time


def lab_prompt() -> tuple[dict, str, str]:
    """The lab workflow's API prompt (a Load Video as History feeding the Storyboard's memory), its history node id and
    its Storyboard id."""
    api = json.loads(LAB_API.read_text())
    hid = next(k for k, n in api.items() if n["class_type"] == "FrameMemoryLoadVideoHistory")
    sid = next(k for k, n in api.items() if n["class_type"] == "FrameMemoryStoryboard")
    assert api[sid]["inputs"]["memory"] == [hid, 0], "the lab workflow no longer feeds the Storyboard from the video"
    return api, hid, sid


def with_second_storyboard(api: dict, sid: str, **changes) -> str:
    """Add a copy of Storyboard ``sid`` (same memory input) with ``changes``; returns its id."""
    new = str(max(int(k) for k in api) + 1)
    api[new] = copy.deepcopy(api[sid])
    api[new]["inputs"].update(changes)
    api[new]["_meta"] = {"title": "Second storyboard"}
    return new


# ---- the prompt handler -------------------------------------------------------------------------------------------
def test_handler_copies_the_storyboards_values_and_logs_each(caplog):
    from framememory.nodes.history_settings import on_prompt

    api, hid, sid = lab_prompt()
    api[sid]["inputs"].update(width=320, fps=24.0, memory_mode="pack_forcing")
    api[hid]["inputs"]["segment_latent_frames"] = 2
    with caplog.at_level(logging.INFO, logger="FrameMemory"):
        body = on_prompt({"prompt": api, "client_id": "x"})
    hist = body["prompt"][hid]["inputs"]
    assert (hist["width"], hist["height"], hist["fps"], hist["segment_latent_frames"], hist["memory_mode"]) == \
        (320, 128, 24.0, 4, "pack_forcing")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines  # width, fps, segment_latent_frames, memory_mode; height was equal
    title = api[hid]["_meta"]["title"]
    assert f"'{title}' (#{hid}) width: 256 -> 320, as on the Storyboard" in lines[0] and f"(#{sid})" in lines[0]
    assert on_prompt({"prompt": api}) and not [r for r in caplog.records if "->" in r.getMessage()][4:]


def test_handler_leaves_disagreeing_storyboards_and_links_alone():
    from framememory.nodes.history_settings import follow_storyboards

    api, hid, sid = lab_prompt()
    with_second_storyboard(api, sid, width=320)
    api[sid]["inputs"]["height"] = ["4", 0]  # a link, not a constant
    api[hid]["inputs"]["fps"] = 8.0
    before = copy.deepcopy(api[hid]["inputs"])
    changes = follow_storyboards(api)
    assert api[hid]["inputs"] == {**before, "fps": 16}  # only fps: both Storyboards agree on it
    assert len(changes) == 1 and "fps: 8.0 -> 16" in changes[0]
    alone = {hid: copy.deepcopy(api[hid])}  # feeding no Storyboard: untouched
    assert follow_storyboards(alone) == [] and alone[hid]["inputs"] == api[hid]["inputs"]


# ---- the start-of-execute refusal ---------------------------------------------------------------------------------
def run_history_node(api: dict, hid: str, **overrides):
    """Execute Load Video as History as ComfyUI's executor does (a class clone holding the hidden prompt and
    unique_id) on node ``hid``'s constants, with stand-ins for the models: the refusal must come before they are
    touched."""
    import inspect

    from framememory.nodes.video_history_node import LoadVideoAsHistory

    hidden = {"PROMPT": api, "UNIQUE_ID": hid}
    takes = inspect.signature(LoadVideoAsHistory.PREPARE_CLASS_CLONE).parameters  # 0.33.0: V3Data; 0.3.75: the dict
    node = LoadVideoAsHistory.PREPARE_CLASS_CLONE({"hidden_inputs": hidden} if "v3_data" in takes else hidden)
    params = inspect.signature(LoadVideoAsHistory.execute).parameters
    inputs = {k: v for k, v in api[hid]["inputs"].items() if k in params and not isinstance(v, list)}
    inputs.update(overrides)
    untouched = object()
    return node.execute(model=untouched, vae=untouched, memory_encoder=untouched, **inputs)


def test_history_node_refuses_storyboards_that_disagree_before_reading(comfy, monkeypatch):
    from framememory.nodes import video_history_node

    monkeypatch.setattr(video_history_node, "history_from_video",
                        lambda *a, **k: pytest.fail("the video was read before the settings were checked"))
    api, hid, sid = lab_prompt()
    second = with_second_storyboard(api, sid, width=320)
    with pytest.raises(ValueError) as e:
        run_history_node(api, hid)
    msg = str(e.value)
    title = api[hid]["_meta"]["title"]
    assert msg.startswith(f"width: '{title}' (#{hid}) has 256 but the Storyboard 'Second storyboard' (#{second}) its "
                          "memory feeds has 320"), msg
    assert "set width to 320 on the Storyboard" in msg

    api, hid, sid = lab_prompt()
    api[sid]["inputs"]["memory_mode"] = "pack_forcing"  # as a script that bypasses the handler would queue it
    with pytest.raises(ValueError, match=r"memory_mode: .* has 'frame_preservation' but the Storyboard .*"
                                         r"\(#%s\) its memory feeds has 'pack_forcing'" % sid):
        run_history_node(api, hid)

    api, hid, sid = lab_prompt()
    api[sid]["inputs"]["fps"] = ["4", 0]
    with pytest.raises(ValueError, match=r"fps: the Storyboard .* takes fps through a link from node #4, but .* has "
                                         r"16; .*link the same node to both fps inputs"):
        run_history_node(api, hid)


def test_latents_only_memory_into_an_encoding_mode_names_memory_mode(tiny_wan, media_dir):
    from framememory.models.input_checks import check_memory_mode
    from framememory.models.video_history import history_from_video
    from framememory.models.video_reader import FrameSelection

    model, vae, encoder, _, _ = tiny_wan
    mem, _ = history_from_video(model, vae, encoder, media_dir / "bikes.mp4", FrameSelection(FPS, frame_load_cap=13),
                                W, H, 4, mode="off")
    with pytest.raises(ValueError) as e:
        check_memory_mode(mem, "frame_preservation")
    msg = str(e.value)
    assert msg.startswith("memory_mode differs: the memory at this Storyboard's memory input was made with memory_mode "
                          "'off'") and "set memory_mode to 'off' on this Storyboard" in msg
    assert "another encoder" not in msg
    check_memory_mode(mem, "off")
    check_memory_mode(mem, "sliding_window")
    with pytest.raises(ValueError, match="^memory_mode differs: the memory at this Storyboard's memory input"):
        run_storyboard_node(tiny_wan, mem)  # the Storyboard itself: frame_preservation (its default)


# ---- include_history with a video history -------------------------------------------------------------------------
def run_storyboard_node(tiny_wan, memory, include_history=True):
    from framememory.nodes import storyboard_node

    model, vae, encoder, clip, _ = tiny_wan
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    out = storyboard_node.Storyboard.execute(model, vae, clip, encoder, neg, "0.8 | a cyclist", W, H, FPS, 4, 3, 2,
                                             3.0, "euler", "simple", include_history, memory=memory)
    return out.result[0], json.loads(out.result[2])


def test_include_history_puts_the_clips_frames_first(tiny_wan, media_dir, tmp_path):
    import shutil

    from framememory.models.video_history import history_from_video
    from framememory.models.video_reader import FrameSelection, iter_frames, plan_video

    model, vae, encoder, _, _ = tiny_wan
    clip = tmp_path / "clip.mp4"
    shutil.copy2(media_dir / "bikes.mp4", clip)
    sel = FrameSelection(FPS, skip_first_seconds=1.0, frame_load_cap=31)  # 31: the 2 oldest dropped, 13 + 16 kept
    mem, report = history_from_video(model, vae, encoder, clip, sel, W, H, 4)
    assert report["frames_dropped_oldest"] == 2 and mem.history.num_frames == 29
    fresh = torch.stack(list(iter_frames(plan_video(clip, sel), sel, W, H))[2:]).float() / 255.0

    images, rep = run_storyboard_node(tiny_wan, mem)
    generated = rep["output_frames"] - 29
    assert rep["history_frames_in_output"] == 29 and "history_frames_reason" not in rep, rep
    assert images.shape == (29 + generated, H, W, 3) and generated == 16, images.shape
    assert torch.equal(images[:29], fresh)
    without, rep_off = run_storyboard_node(tiny_wan, mem, include_history=False)
    assert without.shape[0] == generated and rep_off["history_frames_in_output"] == 0
    assert torch.equal(without, images[29:])  # same seed: the generated frames follow the history unchanged

    clip.unlink()  # the file is gone: nothing before the generated frames, and the report says why
    images, rep = run_storyboard_node(tiny_wan, mem)
    assert images.shape[0] == generated and rep["history_frames_in_output"] == 0
    assert "clip.mp4 the history was read from is gone" in rep["history_frames_reason"], rep


def test_include_history_says_why_a_memory_without_source_gives_none(tiny_wan, media_dir, monkeypatch):
    import dataclasses
    from types import SimpleNamespace

    from framememory.models import video_history
    from framememory.models.video_history import history_from_video, video_history_frames
    from framememory.models.video_reader import FrameSelection

    model, vae, encoder, _, _ = tiny_wan
    mem, _ = history_from_video(model, vae, encoder, media_dir / "bikes.mp4", FrameSelection(FPS, frame_load_cap=13),
                                W, H, 4)
    frames, reason = video_history_frames(mem, W, H)
    assert frames.shape == (13, H, W, 3) and reason == ""
    assert video_history_frames(mem, 2 * W, H) == (None, f"the history was read at {W}x{H}, this run is {2 * W}x{H}")
    with monkeypatch.context() as m:  # 13 frames at 128x64 float32: 1.2 MiB, twice that must be free
        m.setattr(video_history.psutil, "virtual_memory", lambda: SimpleNamespace(available=1 * 2**20))
        frames, reason = video_history_frames(mem, W, H)
        assert frames is None, "frames given although they do not fit in free RAM"
        assert reason.startswith("the history's 13 frames at 128x64 need 2 MiB of RAM in the output and 1 MiB is "
                                 "free"), reason
        assert "switch include_history off" in reason
    as_from_file = dataclasses.replace(mem)  # what Load Memory gives: the history without its video source
    images, rep = run_storyboard_node(tiny_wan, as_from_file)
    assert images.shape[0] == rep["output_frames"] == 16 and rep["history_frames_in_output"] == 0
    assert "keeps no video source" in rep["history_frames_reason"], rep


# ---- through a real server ----------------------------------------------------------------------------------------
def test_server_runs_a_mismatched_prompt_with_the_storyboards_values(comfy_server):
    """On the session's one server (tests/conftest.py ``comfy_server``, the lab files linked), at 128x64: the handler
    copies the Storyboard's width and segment length onto the history node before it runs; two Storyboards that
    disagree leave it alone and the node refuses before reading a frame."""
    api, hid, sid = lab_prompt()
    api[hid]["inputs"].update(width=512, segment_latent_frames=2, frame_load_cap=13)  # the Storyboard: 128, 4
    api[sid]["inputs"].update(storyboard="0.8 | a cyclist", steps=1, width=128, height=64)
    api[hid]["inputs"]["height"] = 64
    disagree = copy.deepcopy(api)
    with_second_storyboard(disagree, sid, width=320)
    comfy_server.wait_idle()
    log_start = len(comfy_server.log_text())
    prompt_id, _ = comfy_server.run(api, timeout=600)
    history = comfy_server.history(prompt_id)
    events = comfy_server.follow(comfy_server.post_prompt(disagree), timeout=300)  # refused as the history node starts
    log = comfy_server.log_text()[log_start:]
    error = events[-1]["data"]
    assert events[-1]["type"] == "execution_error" and error["node_id"] == hid, events[-1]
    # the Storyboards disagree on width (128, 320): the handler leaves the history's 512, which the node refuses
    title = api[hid]["_meta"]["title"]
    assert error["exception_message"].startswith(f"width: '{title}' (#{hid}) has 512 but the Storyboard 'Storyboard "
                                                 f"(Memory)' (#{sid}) its memory feeds has 128"), error
    assert not any(e["type"] == "progress" and e["data"].get("node") == hid for e in events), "frames were read"
    assert history["status"]["status_str"] == "success", history["status"]
    assert f"'{title}' (#{hid}) width: 512 -> 128, as on the Storyboard" in log, log[-3000:]
    assert f"'{title}' (#{hid}) segment_latent_frames: 2 -> 4" in log
    report = next(ui["framememory_report"][0] for ui in history["outputs"].values() if ui.get("framememory_report"))
    assert report["history_frames_in_output"] == 13 and report["output_frames"] == 13 + 16, report
