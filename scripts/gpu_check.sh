#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py says what it runs, its time budget and its outputs):
#   bash scripts/gpu_check.sh              on a machine with a GPU: build, test and benchmark the CUDA kernels
#   bash scripts/gpu_check.sh --cpu --tiny anywhere, in seconds (the test suite runs this)
# Uses $PYTHON, else .venv/bin/python when there is one, else python3 (the GPU host's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" scripts/gpu_check.py "$@"
