"""Shared pytest set-up for ComfyUI-FrameMemory.

* ``framememory`` is this checkout installed as a package (``pip install -e .``, done by ``scripts/setup.sh``), so
  ``from framememory.memory.encoder import HistoryEncoder`` works; anything else (not installed, or another copy)
  stops the run with that fix. The repository root itself stays off ``sys.path``: our ``nodes/`` and ``models/``
  would shadow ComfyUI's ``nodes.py`` and ``models``.
* COMFYUI_DIR (default ``.cache/ComfyUI``, made by ``scripts/setup.sh``) goes on ``sys.path`` and
  ``comfy.cli_args.args.cpu`` is set to True before anything imports ``comfy.model_management``
  (set FRAMEMEMORY_TEST_GPU=1 to leave ComfyUI's device choice alone).
* Fixtures: ``comfy`` (session; the ``comfy`` package with model_management imported on CPU),
  ``repo_root``, ``comfyui_dir``, ``media_dir``; ``comfy_server`` (session: the one ComfyUI server of every
  end-to-end and browser test) and ``ui`` (a page of the real frontend per test file).
* Marker ``slow``: tests over ~3 minutes; marker ``cuda``: tests that need a CUDA GPU (and FRAMEMEMORY_TEST_GPU=1);
  ``scripts/run_tests.sh`` runs ``-m "not slow and not cuda"``. Every test has pytest-timeout's 900 s (pyproject.toml,
  set-up of its fixtures included); a longer one says ``@pytest.mark.timeout(seconds)``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO_ROOT / ".cache" / "ComfyUI").resolve()
MEDIA_DIR = REPO_ROOT / ".cache" / "media"


def _drop_repo_root_from_path() -> None:
    """`python -m pytest` run from the repo root puts it (or '') first on sys.path: remove it."""
    cwd = Path.cwd().resolve()
    keep = []
    for entry in sys.path:
        resolved = Path(entry or ".").resolve() if entry != "" else cwd
        if resolved == REPO_ROOT:
            continue
        keep.append(entry)
    sys.path[:] = keep


def _installed_pack_problem() -> str | None:
    """Why ``import framememory`` would not import this checkout (None when it would)."""
    spec = importlib.util.find_spec("framememory")
    if spec is None or spec.origin is None:
        return "the package `framememory` is not installed in this interpreter"
    if Path(spec.origin).resolve() != REPO_ROOT / "__init__.py":
        return f"`framememory` is installed from {Path(spec.origin).parent}, not from this checkout {REPO_ROOT}"
    return None


def _add_comfyui() -> None:
    if not (COMFYUI_DIR / "comfy").is_dir():
        return  # tests that need ComfyUI fail with a pointer to scripts/setup.sh (see the comfy fixture)
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.insert(0, str(COMFYUI_DIR))
    if os.environ.get("FRAMEMEMORY_TEST_GPU") != "1":
        import comfy.cli_args  # light: argparse only; parses [] (comfy.options.args_parsing is False)

        comfy.cli_args.args.cpu = True


_drop_repo_root_from_path()
_add_comfyui()


def pytest_configure(config: pytest.Config) -> None:
    problem = _installed_pack_problem()
    if problem:
        raise pytest.UsageError(f"{problem}: run `bash scripts/setup.sh` (or `{sys.executable} -m pip install "
                                f"--no-deps -e {REPO_ROOT}`)")
    config.addinivalue_line("markers", "slow: takes more than ~3 minutes; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU and FRAMEMEMORY_TEST_GPU=1; deselect with -m 'not cuda'")
    config.addinivalue_line("markers", "gguf: needs a city96/ComfyUI-GGUF checkout (COMFYUI_GGUF_DIR) and the gguf "
                            "package; deselect with -m 'not gguf'")


@pytest.fixture(scope="module", autouse=True)
def torch_threads_per_module():
    """A module that sets torch's CPU thread count (tests/test_resume.py: 1) sets it for itself, not for every later
    module of the run: the count is restored after each module."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    if not (COMFYUI_DIR / "main.py").exists():
        pytest.fail(f"no ComfyUI at {COMFYUI_DIR}: run `bash scripts/setup.sh` (or set COMFYUI_DIR)")
    return COMFYUI_DIR


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not (MEDIA_DIR / "bikes.mp4").exists():
        pytest.fail(f"test media missing in {MEDIA_DIR}: run `bash scripts/setup.sh`")
    return MEDIA_DIR


@pytest.fixture(scope="session")
def comfy(comfyui_dir):
    """The ``comfy`` package, on CPU (``args.cpu = True`` before ``comfy.model_management`` is imported)."""
    import comfy.cli_args

    if os.environ.get("FRAMEMEMORY_TEST_GPU") != "1":
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (device chosen here, once per process)
    import comfy.ops  # noqa: F401

    return comfy


@pytest.fixture(scope="module")
def tiny_wan(comfy, tmp_path_factory, media_dir):
    """(model, vae, encoder, stand-in text encoder, 30 real frames [30, 272, 640, 3] of bikes.mp4): the tiny Wan 2.1
    models of the embedded default, loaded through ComfyUI's own loaders."""
    import av
    import torch

    import comfy.sd
    import comfy.utils
    from framememory.demo.make_tiny_models import write_family
    from framememory.demo.text_encoder import StandInTextEncoder
    from framememory.models.encoding import MemoryEncoder

    paths = write_family(str(tmp_path_factory.mktemp("models")))
    model = comfy.sd.load_diffusion_model(paths["dit"])
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(paths["vae"]))
    with av.open(str(media_dir / "bikes.mp4")) as c:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for _, f in zip(range(30), c.decode(video=0))]
    clip = torch.stack(frames).float() / 255.0  # [30, 272, 640, 3] real street video
    return model, vae, MemoryEncoder.from_file(paths["encoder"]), StandInTextEncoder(), clip


@pytest.fixture(scope="session")
def smoke_lab(tmp_path_factory, repo_root, media_dir):
    """The lab recipe's smoke preset (``training/lab.py --preset smoke``: every file of the lab set, tiny and barely
    trained) run once per session in a temporary folder; shared by the recipe and memory-mode benchmark tests."""
    import subprocess

    if not (media_dir / "bigbuckbunny.mp4").exists() or not (media_dir / "bikes.mp4").exists():
        pytest.fail("bigbuckbunny.mp4 / bikes.mp4 missing: run `bash scripts/setup.sh`")
    out = tmp_path_factory.mktemp("lab")
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    proc = subprocess.run([sys.executable, str(repo_root / "training" / "lab.py"), "--preset", "smoke", "--out",
                           str(out), "--work", str(out / "work")], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def comfy_server(comfyui_dir, media_dir, tmp_path_factory):
    """The one ComfyUI server of a pytest run, shared by every end-to-end and browser test (tests/test_e2e_*.py,
    tests/test_browser*.py, the server tests of test_bad_inputs, test_history_settings and test_video_history; only
    test_resume's kill test, marked slow, starts its own): ``--cpu``, FRAMEMEMORY_DEMO=1, the tiny Wan 2.1 demo models, bikes.mp4 in its input
    folder, and every model file the workflows name listed, as for a user who has them (frontend 1.48 pops an error
    box over the graph for a missing one): the lab_model/ files linked into every model folder (what
    tests/test_e2e_modes.py runs), empty placeholders for the others. A test file that needs more puts it into the
    running server's folders itself (ComfyUI re-lists a model folder when it changes): tests/test_e2e_families.py
    writes its family's tiny models over their placeholders. Tests that need a state (an empty interrupted-runs
    folder, inputs not in ComfyUI's cache) make it themselves; interrupting tests leave the server idle."""
    from framememory.headless.comfy_server import ComfyServer, add_demo_inputs
    from framememory.headless.workflows import add_named_model_files, ui_workflows

    srv = ComfyServer(tmp_path_factory.mktemp("comfy_server"), comfyui_dir=comfyui_dir)
    add_demo_inputs(srv, media_dir)
    add_named_model_files(srv.models_dir, ui_workflows())
    with srv:
        yield srv


@pytest.fixture(scope="module")
def ui(comfy_server):
    """The real frontend of :func:`comfy_server` in headless Chromium, one page per test file."""
    from framememory.headless.browser import ComfyFrontend

    comfy_server.wait_idle()  # nothing left running by an earlier test
    with ComfyFrontend(comfy_server.url) as frontend:
        yield frontend
