#!/usr/bin/env bash
# The main job: set up (idempotent, fast when done) and render the example storyboard through a real
# headless ComfyUI with FrameMemory memory tokens. Outputs in ./out (or --out DIR).
# Arguments are passed to scripts/run_example.py (--config weights.json, --out DIR, --video FILE, ...).
# Without real weights (FRAMEMEMORY_WAN_MODEL / _T5 / _VAE / _ENCODER or --config) it runs the embedded
# default: tiny random models, whose video is NOT meaningful imagery.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .cache/setup.env
export COMFYUI_DIR
exec "$FRAMEMEMORY_PYTHON" scripts/run_example.py "$@"
