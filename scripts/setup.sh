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
TORCH=${SHARDMIX_TORCH:-torch==2.13.0}
CPU_INDEX=${SHARDMIX_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
reachable() {  # answers within a few seconds: an unreachable index is a fast "no", not a long pip retry loop
  "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1/torch/" >/dev/null 2>&1
}
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: a GPU is present: installing $TORCH from the configured index (its CUDA build)"
    quiet_pip install -q "$TORCH"
  elif reachable "$CPU_INDEX"; then
    # A plain requirement on a stock machine pulls the multi-GB CUDA build: take the CPU build from
    # PyTorch's CPU wheel index, then its dependencies from the configured index.
    echo "setup: installing $TORCH (CPU build) from PyTorch's CPU wheel index $CPU_INDEX"
    quiet_pip install -q --no-deps --index-url "$CPU_INDEX" "$TORCH"
    quiet_pip install -q "$TORCH"
  else
    echo "setup: PyTorch's CPU wheel index $CPU_INDEX is unreachable: installing $TORCH from the configured index"
    quiet_pip install -q "$TORCH"
  fi
  "$VENV/bin/python" -c "import torch; print('setup: torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
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
