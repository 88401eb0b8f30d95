#!/usr/bin/env bash
# Set up (with test requirements) and run the test suite except tests marked slow, cuda or gguf.
# Extra arguments go to pytest, e.g.  bash scripts/run_tests.sh -k e2e -x
# Test files given (tests/...) replace the whole tests/ folder:  bash scripts/run_tests.sh tests/test_comfy_contract.py
# Another ComfyUI (own venv, see scripts/setup.sh):  COMFYUI_DIR=/path/to/ComfyUI bash scripts/run_tests.sh
#   or from a source archive:  COMFYUI_ARCHIVE=../shared/comfyui/ComfyUI-0.33.0.tar.xz bash scripts/run_tests.sh
# All CPU tests, slow ones included:  .venv/bin/python -m pytest -m "not cuda and not gguf" tests
# CUDA tests (need a GPU):            FRAMEMEMORY_TEST_GPU=1 .venv/bin/python -m pytest -m cuda tests
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --test
# shellcheck disable=SC1091
source .cache/setup.env
export COMFYUI_DIR FRAMEMEMORY_VENV  # the servers the tests start use this ComfyUI and this venv
echo "[tests] ComfyUI $COMFYUI_VERSION at $COMFYUI_DIR, python $FRAMEMEMORY_PYTHON"
WHERE=(tests)
for arg in "$@"; do
  case "$arg" in tests/*) WHERE=() ;; esac
done
# PYTHONSAFEPATH: keep the repo root off sys.path (our nodes/ and models/ would shadow ComfyUI's).
PYTHONSAFEPATH=1 exec "$FRAMEMEMORY_PYTHON" -m pytest -q -p no:cacheprovider --durations=15 -m "not slow and not cuda and not gguf" "${WHERE[@]}" "$@"
