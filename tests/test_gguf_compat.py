"""Memory with a GGUF-quantized DiT loaded by city96/ComfyUI-GGUF (the custom node most people load GGUF DiTs with).

The tiny Wan 2.1 DiT of ``demo/make_tiny_models.write_family`` is written to a ``.gguf`` file with the ``gguf``
package's ``GGUFWriter`` the way ComfyUI-GGUF's ``tools/convert.py`` lays out a Wan file (arch ``wan``; 1-D tensors,
tensors of <= 1024 elements and ``.modulation`` in F32; the 5-D ``patch_embedding.weight`` in F32, as its
``fix_5d_tensors.py`` adds it back; every other 2-D weight matrix Q8_0 via ``gguf.quants``, F16 where the row
length is not a multiple of the Q8_0 block (none in the tiny DiT)). It is loaded by ComfyUI-GGUF's own
``UnetLoaderGGUF`` node (its ``gguf_sd_loader``, ``GGMLOps`` layers that dequantize on the fly, and
``GGUFModelPatcher``), then:

* no memory (and zero memory tokens) through our patched model == the unpatched GGUF model, bit for bit;
* memory tokens change the output;
* the GGUF model's output with memory is close to the fp32 model's with the same memory (Q8_0 tolerance), and so is
  the change the memory makes;
* the storyboard loop (``run_storyboard``, as in ``test_storyboard_loop.py``) runs end to end on the GGUF model.

ComfyUI-GGUF is not on PyPI, so this module is marked ``gguf`` and left out of ``scripts/run_tests.sh``. It needs

* ``COMFYUI_GGUF_DIR``: a checkout of https://github.com/city96/ComfyUI-GGUF (imported as a package by path, the
  way ComfyUI loads custom nodes), and
* the ``gguf`` package (PyPI) importable, e.g. ``.venv/bin/python -m pip install --no-deps --target /tmp/gguf_site
  gguf`` and ``PYTHONPATH=/tmp/gguf_site`` (``--no-deps``: its numpy, pyyaml, requests and tqdm are in the venv
  already, and a second numpy in the target folder would shadow the venv's).

Run::

    COMFYUI_GGUF_DIR=/path/to/ComfyUI-GGUF PYTHONPATH=/tmp/gguf_site PYTHONSAFEPATH=1 \\
        .venv/bin/python -m pytest -q -p no:cacheprovider -m gguf tests/test_gguf_compat.py

Without either, every test fails at setup (pytest reports ERROR; never a skip) with a message saying how to run them.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_checks import random_memory, sample_tiny_wan

pytestmark = pytest.mark.gguf

HOW_TO_RUN = (
    "These tests need a checkout of https://github.com/city96/ComfyUI-GGUF in COMFYUI_GGUF_DIR and the `gguf` package "
    "on sys.path, e.g.\n"
    "  .venv/bin/python -m pip install --no-deps --target /tmp/gguf_site gguf\n"
    "  COMFYUI_GGUF_DIR=/path/to/ComfyUI-GGUF PYTHONPATH=/tmp/gguf_site PYTHONSAFEPATH=1 "
    ".venv/bin/python -m pytest -q -p no:cacheprovider -m gguf tests/test_gguf_compat.py"
)
PACKAGE = "comfyui_gguf_under_test"
GGUF_NAME = "framememory_tiny_wan21-Q8_0.gguf"
F32_KEEP = 1024  # ComfyUI-GGUF's tools/convert.py QUANTIZATION_THRESHOLD: tensors this small stay F32


def _import_comfyui_gguf(path: Path):
    """ComfyUI-GGUF as a package (its modules use relative imports), by path, the way ComfyUI loads a custom node
    folder: it is not on PyPI and has no installable package to import by name."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, path / "__init__.py", submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        raise
    for sub in ("nodes", "loader", "ops", "dequant"):
        importlib.import_module(f"{PACKAGE}.{sub}")
    return module


@pytest.fixture(scope="module")
def comfyui_gguf(comfy):
    """``(ComfyUI-GGUF package, gguf module)``; fails (never skips) with HOW_TO_RUN when either is missing."""
    where = os.environ.get("COMFYUI_GGUF_DIR")
    if not where:
        pytest.fail(f"COMFYUI_GGUF_DIR is not set.\n{HOW_TO_RUN}", pytrace=False)
    path = Path(where).resolve()
    missing = [f for f in ("__init__.py", "nodes.py", "loader.py", "ops.py", "dequant.py") if not (path / f).is_file()]
    if missing:
        pytest.fail(f"COMFYUI_GGUF_DIR={where} is not a ComfyUI-GGUF checkout (missing {missing}).\n{HOW_TO_RUN}",
                    pytrace=False)
    try:
        import gguf
    except ImportError as e:
        pytest.fail(f"the `gguf` package is not importable ({e}).\n{HOW_TO_RUN}", pytrace=False)
    return _import_comfyui_gguf(path), gguf


def _qtype(gguf, key: str, data: np.ndarray):
    """ComfyUI-GGUF's convert.py rules for a float32 tensor, Q8_0 as the target type (module docstring)."""
    if data.ndim == 1 or data.size <= F32_KEEP or ".modulation" in key or data.ndim > 4:
        return gguf.GGMLQuantizationType.F32
    if data.ndim == 2:
        block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
        return gguf.GGMLQuantizationType.Q8_0 if data.shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16
    return gguf.GGMLQuantizationType.F16


def write_gguf(gguf, state_dict: dict, path: Path) -> dict[str, str]:
    """Write a Wan DiT state dict as a ComfyUI-GGUF-style Q8_0 .gguf file; returns {key: qtype name}."""
    writer = gguf.GGUFWriter(path=None, arch="wan")  # general.architecture, checked by gguf_sd_loader
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    qtypes = {}
    for key, tensor in state_dict.items():
        data = tensor.float().numpy()
        qtype = _qtype(gguf, key, data)
        writer.add_tensor(key, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        qtypes[key] = qtype.name
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return qtypes


@pytest.fixture(scope="module")
def files(comfy, comfyui_gguf, tmp_path_factory):
    """The tiny Wan 2.1 DiT (write_family, seed 0: the DiT of the ``tiny_wan`` fixture) as safetensors and as
    ComfyUI-GGUF-style Q8_0 .gguf; ``(dit.safetensors, models folder of the .gguf, {key: qtype})``."""
    from framememory.demo.make_tiny_models import write_family
    from safetensors.torch import load_file

    _, gguf = comfyui_gguf
    d = tmp_path_factory.mktemp("gguf")
    dit = Path(write_family(str(d / "fp32"), vae=False)["dit"])
    folder = d / "diffusion_models"
    qtypes = write_gguf(gguf, load_file(str(dit)), folder / GGUF_NAME)
    return dit, folder, qtypes


@pytest.fixture(scope="module")
def gguf_model(comfy, comfyui_gguf, files):
    """The .gguf loaded by ComfyUI-GGUF's own UnetLoaderGGUF node (folder registered with folder_paths meanwhile)."""
    import folder_paths

    pack, _ = comfyui_gguf
    _, folder, _ = files
    folder_paths.add_model_folder_path("diffusion_models", str(folder))
    try:
        (model,) = pack.nodes.UnetLoaderGGUF().load_unet(GGUF_NAME)
    finally:
        folder_paths.folder_names_and_paths["diffusion_models"][0].remove(str(folder))
    return model


@pytest.fixture(scope="module")
def fp32_model(comfy, files):
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(files[0]))


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max abs diff, max abs diff / max abs of b)."""
    d = float((a - b).abs().max())
    return d, d / float(b.abs().max())


def test_gguf_file_loads_quantized_through_unet_loader_gguf(comfyui_gguf, files, gguf_model, fp32_model):
    """The file is Q8_0 where ComfyUI-GGUF's converter would quantize; the node gives a GGUFModelPatcher whose
    Linear layers are GGMLOps layers holding still-quantized Q8_0 GGMLTensors; dequantized, they are the fp32
    weights to within Q8_0 rounding."""
    pack, gguf = comfyui_gguf
    _, folder, qtypes = files
    reader = gguf.GGUFReader(str(folder / GGUF_NAME))
    assert str(reader.get_field("general.architecture").parts[-1], "utf-8") == "wan"
    on_disk = {t.name: t.tensor_type.name for t in reader.tensors}
    assert on_disk == qtypes
    assert qtypes["blocks.0.self_attn.q.weight"] == qtypes["text_embedding.0.weight"] == "Q8_0"
    assert qtypes["patch_embedding.weight"] == qtypes["blocks.0.modulation"] == qtypes["blocks.0.norm3.weight"] == "F32"
    assert sum(q == "Q8_0" for q in qtypes.values()) == 26  # text/time embeddings + projection 5, 2 blocks x 10, head 1
    assert isinstance(gguf_model, pack.nodes.GGUFModelPatcher)
    dm, ref = gguf_model.model.diffusion_model, fp32_model.model.diffusion_model
    q = dm.blocks[0].self_attn.q
    assert isinstance(q, pack.ops.GGMLOps.Linear) and isinstance(q.weight, pack.ops.GGMLTensor)
    assert q.weight.tensor_type == gguf.GGMLQuantizationType.Q8_0 and q.weight.dtype == torch.uint8
    n_quantized = 0
    for name, p in dm.named_parameters():
        if pack.dequant.is_quantized(p):
            n_quantized += 1
            w, w_ref = pack.dequant.dequantize_tensor(p, torch.float32), ref.get_parameter(name)
            assert w.shape == w_ref.shape
            # Q8_0: int8 per block of 32, fp16 scale absmax / 127: error <= scale / 2 (+ 127 x fp16 rounding of scale)
            assert (w - w_ref).abs().max() <= w_ref.abs().max() / 127 * 0.6, name
    assert n_quantized == 26


def test_no_memory_is_identity_and_memory_changes_the_output(gguf_model):
    """(a) Patched GGUF model without memory, and with zero memory tokens, == the unpatched GGUF model, bit for bit;
    (b) memory tokens change its output."""
    plain = sample_tiny_wan(gguf_model, None, patch=False)
    patched = sample_tiny_wan(gguf_model, None)
    tokens, positions = random_memory()
    empty = sample_tiny_wan(gguf_model, (tokens[:0], positions[:0]))
    with_mem = sample_tiny_wan(gguf_model, (tokens, positions))
    assert torch.equal(plain, patched) and torch.equal(plain, empty)
    assert torch.isfinite(with_mem).all() and (with_mem - plain).abs().max() > 1e-3


def test_gguf_with_memory_matches_fp32_with_memory(comfyui_gguf, gguf_model, fp32_model, monkeypatch):
    """(c) The Q8_0 model's output with memory is close to the fp32 model's with the same memory, and so is the
    change the memory makes (memory does not amplify the quantization error); the quantized weights really were
    dequantized on the fly while sampling."""
    pack, gguf = comfyui_gguf
    dequantized = []
    dequantize = pack.ops.dequantize_tensor

    def spy(tensor, *args, **kwargs):
        if pack.dequant.is_quantized(tensor):
            dequantized.append(tensor.tensor_type)
        return dequantize(tensor, *args, **kwargs)

    monkeypatch.setattr(pack.ops, "dequantize_tensor", spy)
    mem = random_memory()
    g_mem, g_plain = sample_tiny_wan(gguf_model, mem), sample_tiny_wan(gguf_model, None)
    assert dequantized and set(dequantized) == {gguf.GGMLQuantizationType.Q8_0}
    f_mem, f_plain = sample_tiny_wan(fp32_model, mem), sample_tiny_wan(fp32_model, None)
    out_abs, out_rel = _diff(g_mem, f_mem)
    effect_abs, effect_rel = _diff(g_mem - g_plain, f_mem - f_plain)
    print(f"\nGGUF Q8_0 vs fp32, with memory: max abs {out_abs:.3e}, rel {out_rel:.3e}; memory effect: max abs "
          f"{effect_abs:.3e}, rel {effect_rel:.3e} (effect max {float((f_mem - f_plain).abs().max()):.3e}); "
          f"{len(dequantized)} Q8_0 dequantizations")
    assert (f_mem - f_plain).abs().max() > 1e-3  # the memory does something on both
    # measured (2 euler steps, CFG 3): output rel 3.8e-3, memory effect rel 1.3e-2; Q8_0 weights are within ~0.4 %
    assert out_rel < 1e-2, f"GGUF vs fp32 with memory: max abs {out_abs:.3e}, rel {out_rel:.3e}"
    assert effect_rel < 5e-2, f"memory effect GGUF vs fp32: max abs {effect_abs:.3e}, rel {effect_rel:.3e}"


def test_storyboard_runs_on_the_gguf_model(tiny_wan, gguf_model, fp32_model):
    """(d) The storyboard loop (Encode History from a real clip, then two shots) on the GGUF DiT, with the tiny_wan
    VAE, encoder and stand-in text encoder: finite frames of the right shape, memory growing per segment; its
    memory tokens (the DiT's F32 patch embedding + encoder) equal those of the fp32 DiT."""
    from framememory.memory.grid import memory_grid
    from framememory.memory.storyboard import parse_storyboard
    from framememory.models.history_writer import history_from_frames
    from framememory.models.segment_sampler import SamplerSettings
    from framememory.models.storyboard import run_storyboard

    _, vae, encoder, clip, video = tiny_wan
    start, dropped = history_from_frames(gguf_model, vae, encoder, video, 4, 16.0, 256, 128)
    assert dropped == 4 and start.history.num_frames == 26
    per_segment = int(np.prod(memory_grid((4, 16, 32), encoder.cfg)))
    tokens, positions = start.tokens(gguf_model)
    ref_tokens, ref_positions = start.tokens(fp32_model)
    assert tokens.shape == (2 * per_segment, 128) and torch.equal(positions, ref_positions)
    torch.testing.assert_close(tokens, ref_tokens)
    neg = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
    shots = parse_storyboard("0.8 | a cyclist\n0.8 | a car")
    frames, final, report = run_storyboard(gguf_model, vae, clip, encoder, neg, shots,
                                           SamplerSettings(2, 3.0, "euler", "simple", 1), 256, 128, 16.0, 4, start)
    assert frames.shape == (26, 128, 256, 3) and torch.isfinite(frames).all()
    assert 0 <= frames.min() and frames.max() <= 1 and frames.std() > 0
    assert report["model_family"] == "wan21"
    assert [s["memory_tokens"] for s in report["segments"]] == [2 * per_segment, 3 * per_segment]
    assert final.history.num_tokens == 4 * per_segment and final.history.num_frames == 52
