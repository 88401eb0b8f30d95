#!/usr/bin/env bash
# Set up (with test requirements) and run the test suite except tests marked slow, cuda or gguf.
# Extra arguments go to pytest, e.g.  bash scripts/run_tests.sh -k e2e -x
# All CPU tests, slow ones included:  .venv/bin/python -m pytest -m "not cuda and not gguf" tests
# CUDA tests (need a GPU):            FRAMEMEMORY_TEST_GPU=1 .venv/bin/python -m pytest -m cuda tests
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --test
# shellcheck disable=SC1091
source .cache/setup.env
export COMFYUI_DIR
# PYTHONSAFEPATH: keep the repo root off sys.path (our nodes/ and models/ would shadow ComfyUI's).
PYTHONSAFEPATH=1 exec "$FRAMEMEMORY_PYTHON" -m pytest -q -p no:cacheprovider -m "not slow and not cuda and not gguf" tests "$@"
