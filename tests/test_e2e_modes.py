"""Every memory mode end to end through a real headless ComfyUI server (tests/harness.py), on the committed lab model
(lab_model/: the DiT, VAE and, per mode, its encoder / state file and Stage II LoRA, loaded by the stock loaders):
the shipped workflows workflows/storyboard_wan21_lab_{packforcing,videossm}_api.json, shortened to one 1 s shot and
2 steps, plus sliding_window on the Frame Preservation workflow."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness import ComfyServer

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO_ROOT / "workflows"
LAB_DIR = REPO_ROOT / "lab_model"
FOLDERS = {"framememory_lab_wan21.safetensors": "diffusion_models", "framememory_lab_wan21_vae.safetensors": "vae"}
CASES = {  # mode -> workflow (frame_preservation and off through a server: the main job and tests/test_e2e_server.py)
    "pack_forcing": "storyboard_wan21_lab_packforcing_api.json",
    "video_ssm": "storyboard_wan21_lab_videossm_api.json",
    "sliding_window": "storyboard_wan21_lab_api.json",
}
VIDEO = "bikes.mp4"


def _folder(name: str) -> str:
    if name in FOLDERS:
        return FOLDERS[name]
    return "loras" if name.endswith("_lora.safetensors") else "memory_encoders"


@pytest.fixture(scope="module")
def lab_server(comfyui_dir, media_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_lab")
    srv = ComfyServer(base, comfyui_dir=comfyui_dir)
    srv.prepare_base()
    for path in sorted(LAB_DIR.glob("*.safetensors")):
        folder = srv.models_dir / _folder(path.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / path.name).symlink_to(path.resolve())
    shutil.copy2(media_dir / VIDEO, srv.input_dir / VIDEO)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _prompt(mode: str) -> dict:
    api = json.loads((WORKFLOWS / CASES[mode]).read_text())
    for node in api.values():
        if node["class_type"] == "FrameMemoryStoryboard":
            node["inputs"].update(storyboard="1.0 | a cyclist rides down a sunny city street", steps=2,
                                  memory_mode=mode)
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = f"modes/{mode}"
    return api


@pytest.mark.parametrize("mode", list(CASES))
def test_mode_runs_through_the_server(lab_server, mode):
    prompt = _prompt(mode)
    prompt_id = lab_server.post_prompt(prompt)
    events = lab_server.follow(prompt_id, timeout=600)
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
