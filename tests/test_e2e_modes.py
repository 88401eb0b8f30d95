"""Every memory mode end to end through a real headless ComfyUI server (headless/comfy_server.py), on the committed lab model
(lab_model/: the DiT, VAE and, per mode, its encoder / state file and Stage II LoRA, loaded by the stock loaders):
the shipped workflows workflows/storyboard_wan21_lab_{packforcing,videossm}_api.json, shortened to one 1 s shot,
2 steps, 128x64 and a 13-frame starting clip (the lab VAE's 3D convolutions are most of the run's CPU time), plus sliding_window on the Frame Preservation workflow; on the session's one server (tests/conftest.py
``comfy_server``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows" / "api"
CASES = {  # mode -> workflow (frame_preservation and off through a server: the main job and tests/test_e2e_server.py)
    "pack_forcing": "storyboard_wan21_lab_packforcing_api.json",
    "video_ssm": "storyboard_wan21_lab_videossm_api.json",
    "sliding_window": "storyboard_wan21_lab_api.json",
}
VIDEO = "bikes.mp4"
RUN_TIMEOUT = 600  # seconds for one mode's 1 s storyboard on 2 (shared) CPU cores


def _run_example():
    """scripts/example_models.py (the main job's models) as a module: its lab-file table and installer put the files
    where the main job does."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("example_models", REPO_ROOT / "scripts" / "example_models.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lab_server(comfy_server):
    """The session's one server (tests/conftest.py ``comfy_server``) with each mode's lab set (DiT, VAE, its encoder
    / state file and LoRA) linked where the main job puts them."""
    example = _run_example()
    for mode in CASES:
        files = example.lab_files(mode)
        assert files, f"lab model files for {mode} are missing in {example.LAB_DIR}: run training/lab.py"
        example.install_lab_model(files, comfy_server.models_dir)
    assert (comfy_server.input_dir / VIDEO).is_file()
    comfy_server.wait_idle()  # nothing left running by an earlier test
    return comfy_server


def _prompt(mode: str) -> dict:
    api = json.loads((WORKFLOWS / CASES[mode]).read_text())
    for node in api.values():
        if node["class_type"] == "FrameMemoryStoryboard":
            node["inputs"].update(storyboard="1.0 | a cyclist rides down a sunny city street", steps=2,
                                  memory_mode=mode, width=128, height=64)
        if node["class_type"] == "ImageFromBatch":  # the starting clip read as history
            node["inputs"]["length"] = 13
        if node["class_type"] == "FrameMemoryLoadVideoHistory":  # the video read as history
            node["inputs"].update(width=128, height=64, frame_load_cap=13)
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = f"modes/{mode}"
    return api


@pytest.mark.parametrize("mode", list(CASES))
def test_mode_runs_through_the_server(lab_server, mode):
    prompt = _prompt(mode)
    prompt_id = lab_server.post_prompt(prompt)
    events = lab_server.follow(prompt_id, timeout=RUN_TIMEOUT)
    lab_server.raise_for_events(events)
    history = lab_server.history(prompt_id)
    reports = [ui["framememory_report"][0] for ui in (history.get("outputs") or {}).values()
               if ui.get("framememory_report")]
    assert reports, f"no Storyboard report for {mode}: {lab_server.log_tail_text()}"
    report = reports[0]
    assert report["memory_mode"] == mode and len(report["segments"]) == 1
    tokens = report["segments"][0]["memory_tokens"]
    assert (tokens == 0) == (mode == "off"), (mode, tokens)
    save = next(nid for nid, n in prompt.items() if n["class_type"] == "SaveVideo")
    videos = lab_server.output_files(history, save, (".mp4",))
    assert videos and videos[0].stat().st_size > 0
    assert lab_server.alive()
