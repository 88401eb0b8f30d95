"""The prepared GPU check (benchmarks/gpu_check.sh + gpu_check.py, issue 25 point 3): its CPU dry run (tiny sizes,
every memory mode at two history lengths, through ComfyUI's loaders and run_storyboard) runs through the shell script
and writes its JSON and table; the real-size state dicts it builds are the ones ComfyUI's own detection takes for
Wan 2.1 1.3B and umt5-xxl fp8-scaled (shapes only, on the meta device: no 9 GB of weights here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

MODES = ("frame_preservation", "pack_forcing", "video_ssm", "sliding_window", "off")


@pytest.fixture(scope="module")
def dry_run(repo_root, comfyui_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "COMFYUI_DIR": str(comfyui_dir)}
    proc = subprocess.run(["bash", str(repo_root / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_dry_run_measures_every_mode_beside_the_estimate(dry_run):
    result, stdout = dry_run
    assert result["device"]["dry_run"] and result["size"] == "tiny"
    rows = {(r["mode"], r["history_s"]): r for r in result["rows"]}
    assert set(rows) == {(m, s) for m in MODES for s in (2, 4)}
    for key, r in rows.items():
        assert "error" not in r, (key, r)
        assert r["s_step"] > 0 and r["s_segment"] > 0 and r["sample_s"] > 0 and r["decode_s"] > 0, (key, r)
        assert r["est_history_s"] == {2: 20, 4: 60}[key[1]]
    m = {key: r["M"] for key, r in rows.items()}
    assert m[("frame_preservation", 4)] == 2 * m[("frame_preservation", 2)] > 0  # every compressed token, growing
    assert m[("pack_forcing", 4)] - m[("pack_forcing", 2)] < m[("frame_preservation", 4)]  # sink + top-K + recent
    assert m[("video_ssm", 2)] == m[("video_ssm", 4)] > 0 and m[("sliding_window", 2)] == m[("sliding_window", 4)] > 0
    assert m[("off", 2)] == m[("off", 4)] == 0
    assert all("encode_s" in rows[(mode, s)] for mode in ("frame_preservation", "pack_forcing") for s in (2, 4))
    assert rows[("video_ssm", 2)]["absorb_history_s"] > 0 and rows[("video_ssm", 4)]["absorb_history_s"] > 0
    for mode in ("frame_preservation", "pack_forcing", "video_ssm", "off"):  # beside vram_estimate.json's rows
        assert rows[(mode, 2)]["est_sample_gib"] > 0 and "est_peak_gib" in rows[(mode, 2)]
    assert "est_sample_gib" not in rows[("sliding_window", 2)]  # no estimate row for it
    assert result["estimate"]["source"] == os.path.join("benchmarks", "results", "vram_estimate.json")
    fla = result["fla"]
    assert not fla["fla_installed"] and fla["note"] == "no CUDA (dry run)"
    assert fla["rows"][0]["torch_vs_loop_max_abs"] < 1e-5  # the torch recurrence matches the per-token loop
    assert "mode               | hist_s | M" in stdout and "measured (PyTorch reserved + CUDA context)" in stdout


def test_real_size_state_dicts_are_what_comfyui_detects(repo_root, comfy):
    """Wan 2.1 1.3B (dim 1536, 30 blocks, 2.64 GiB bf16; ComfyUI's class keeps the patch embedding in float32) and
    umt5-xxl fp8-scaled (6.27 GiB, the estimate's text encoder weights) as ComfyUI's detection reads their keys and
    shapes; the trained sentencepiece vocabulary tokenizes the prompts with umt5's eos and no unknown pieces."""
    import torch

    import comfy.model_detection
    import comfy.sd
    import comfy.utils
    from comfy.text_encoders.sd3_clip import t5_xxl_detect
    from comfy.text_encoders.spiece_tokenizer import SPieceTokenizer

    sys.path.insert(0, str(repo_root / "benchmarks"))
    try:
        import gpu_check
        import gpu_check_models
    finally:
        sys.path.remove(str(repo_root / "benchmarks"))
    dit = gpu_check_models.dit_state_dict(gpu_check.SIZES["real"], "cpu", build_device="meta")
    config = comfy.model_detection.detect_unet_config(dit, "")
    assert (config["image_model"], config["dim"], config["num_layers"], config["num_heads"], config["ffn_dim"]) == \
           ("wan2.1", 1536, 30, 12, 8960)
    assert round(sum(v.numel() * v.element_size() for v in dit.values()) / 2 ** 30, 2) == 2.64
    assert {k for k, v in dit.items() if v.dtype != torch.bfloat16} == {"patch_embedding.weight",
                                                                          "patch_embedding.bias"}
    te = gpu_check_models.umt5_state_dict("cpu", build_device="meta")
    assert comfy.sd.detect_te_model(te) == comfy.sd.TEModel.T5_XXL
    if hasattr(comfy.utils, "convert_old_quants"):  # ComfyUI >= 0.4: scaled-fp8 files become per-layer quant metadata
        converted, _ = comfy.utils.convert_old_quants(dict(te), "", {})
        quantized = {k[:-len(".comfy_quant")] for k in converted if k.endswith(".comfy_quant")}
        assert len(quantized) == 168 and all(te[f"{k}.weight"].dtype == torch.float8_e4m3fn for k in quantized)
    else:
        assert t5_xxl_detect(te) == {"dtype_t5": torch.bfloat16, "t5xxl_scaled_fp8": torch.float8_e4m3fn}
    assert round(sum(v.numel() * v.element_size() for v in te.values()) / 2 ** 30, 2) == 6.27
    tokenizer = SPieceTokenizer(gpu_check_models.spiece_model(gpu_check_models.PROMPTS))
    ids = tokenizer(gpu_check_models.PROMPTS[0])["input_ids"]
    assert ids[-1] == 1 and 2 not in ids  # ends with umt5's eos, no unknown pieces
