#!/usr/bin/env bash
# The first thing to run on any lent CUDA machine (issue 25): Wan 2.1 1.3B at real size (random weights) through
# ComfyUI's loaders, every memory mode at 20 / 60 / 120 s of history under a 12 GiB cap, fla vs the torch recurrence;
# one JSON (benchmarks/results/gpu_check.json, also copied to $OUT when set) and one table. <= 8 minutes, no downloads.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: CPU, tiny sizes (what the tests run)
#
# Needs: a python with CUDA PyTorch (PYTHON, default: .venv/bin/python when present, else python3), ComfyUI's source
# (COMFYUI_DIR, default .cache/ComfyUI), and the packages ComfyUI and the pack import that the machine lacks, as
# wheels in .whl/ (installed here into a temporary folder; see benchmarks/README.md for the list and the carry).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export COMFYUI_DIR=${COMFYUI_DIR:-$ROOT/.cache/ComfyUI}
if [ ! -f "$COMFYUI_DIR/comfy/sd.py" ]; then
  echo "gpu_check: no ComfyUI at $COMFYUI_DIR: set COMFYUI_DIR, or carry .cache/ComfyUI (bash scripts/setup.sh makes it)" >&2
  exit 2
fi
SITE=$(mktemp -d /tmp/framememory_gpu_check.XXXXXX)
trap 'rm -rf "$SITE"' EXIT
if compgen -G ".whl/*.whl" >/dev/null && ! "$PYTHON" -c "import torchsde, kornia, tyro" 2>/dev/null; then
  # the packages the machine lacks, carried as wheels (not where they are installed already, e.g. the dev venv)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE/site" .whl/*.whl
  export PYTHONPATH=$SITE/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PYTHON" -c "import framememory" 2>/dev/null; then  # the pack as the package 'framememory' (pip install -e .)
  mkdir -p "$SITE/pkg" && ln -s "$ROOT" "$SITE/pkg/framememory"
  export PYTHONPATH=$SITE/pkg${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
limit=480  # the issue's 8 minutes; the JSON is rewritten after every row, so a stop keeps what was measured
case " $* " in *" --dry-run "*) limit=0 ;; esac  # a dry run on a busy CPU may take longer: no limit
status=0
timeout "$limit" "$PYTHON" benchmarks/gpu_check.py "$@" || status=$?
if [ -n "${OUT:-}" ] && [ -f benchmarks/results/gpu_check.json ]; then
  cp benchmarks/results/gpu_check.json "$OUT"/
fi
exit $status
