#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py says what it runs, its time budget and its outputs):
#   python scripts/gpu_pack.py             here first (registries reachable): .carry/gpu (corpus, SmolLM2
#                                          config + tokenizer) and .whl (wheels the GPU image lacks)
#   bash scripts/gpu_check.sh              on the GPU host, one device call carrying .carry and .whl
#   bash scripts/gpu_check.sh --cpu --tiny anywhere, in minutes (the test suite runs this)
# Uses $PYTHON, else .venv/bin/python when there is one, else python3 (the GPU host's). Wheels in
# .whl are installed into /tmp/site first (no index, no dependencies), as the device tool's README says.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [[ " $* " != *" --cpu "* ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
exec "$PY" scripts/gpu_check.py "$@"
