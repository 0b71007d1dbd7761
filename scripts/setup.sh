#!/usr/bin/env bash
# Set up shardmix on a fresh machine: a venv in .venv with the CPU build of torch, the package
# and its tools, and the C++ kernels built once. Safe to rerun: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SHARDMIX_VENV:-.venv}
export PIP_DISABLE_PIP_VERSION_CHECK=1 DVC_NO_ANALYTICS=1

quiet_pip() {  # pip prints a warning per local index folder it skips; keep real messages
  "$VENV/bin/pip" "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch 2.13.0 (CPU build)"
  quiet_pip install -q "torch==2.13.0"
fi
stamp="$VENV/.shardmix-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing shardmix and its dependencies"
  quiet_pip install -q --no-build-isolation -e ".[dev]"
  touch "$stamp"
fi
if [ -d .git ] && [ ! -d .dvc ]; then "$VENV/bin/dvc" init -q; fi
echo "setup: building the C++ kernels (cached after the first build)"
"$VENV/bin/python" -m pipeline.kernels.build || echo "setup: kernels unavailable; the pure-torch reference will be used" >&2
