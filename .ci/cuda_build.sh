#!/usr/bin/env bash
# CI step: build the WHOLE shardmix CUDA extension (csrc/*.cu kernels + ops_cuda.cpp binding +
# the CPU ops) against a CUDA build of torch, in a separate venv under .cache/ (the project venv
# keeps the CPU torch). Nothing is executed on a GPU: this proves the CUDA path compiles and links.
#
# Exit 0 with a "SKIPPED: <reason>" line when nvcc, disk space or the CUDA torch wheel cannot be
# had; exit non-zero on a real compile/link failure. Env: PYTHON (default python3), CUDA_HOME,
# SHARDMIX_CUDA_TORCH (default torch==2.14.1), TORCH_CUDA_ARCH_LIST (default "8.0;9.0"),
# SHARDMIX_CUDA_VENV (default <repo>/.cache/cuda-venv; point it at a persistent folder so that
# fresh clones reuse the ~6 min, 5.4 GB install).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SHARDMIX_CUDA_VENV:-$repo/.cache/cuda-venv}
torch_spec=${SHARDMIX_CUDA_TORCH:-torch==2.14.1}
python=${PYTHON:-python3}
skip() { echo "SKIPPED: CUDA extension build: $*"; exit 0; }

# 1. a CUDA toolkit: the folder holding bin/nvcc and include/cuda_runtime.h
find_cuda_home() {
  local cands=()
  [ -n "${CUDA_HOME:-}" ] && cands+=("$CUDA_HOME")
  if command -v nvcc >/dev/null 2>&1; then cands+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"); fi
  cands+=(/usr/local/cuda /usr/local/cuda-*)
  for c in "${cands[@]}"; do
    if [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ]; then echo "$c"; return 0; fi
  done
  return 1
}
cuda_home=$(find_cuda_home) || skip "no CUDA toolkit (nvcc + cuda_runtime.h) found"
echo "cuda_build: toolkit $cuda_home ($("$cuda_home/bin/nvcc" --version | tail -1))"

# 2. a venv with the CUDA build of torch (~5.4 GB), reused across runs
t0=$(date +%s)
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  free_kb=$(df -Pk "$repo" | awk 'NR==2 {print $4}')
  [ "$free_kb" -gt $((12 * 1024 * 1024)) ] || skip "less than 12 GB free disk for the CUDA torch venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" || skip "cannot create a venv with $python"
  pip_log="$venv/pip-install.log"
  if ! "$venv/bin/pip" install -q "$torch_spec" ninja pybind11 setuptools numpy >"$pip_log" 2>&1; then
    tail -n 5 "$pip_log"
    rm -rf "$venv"
    skip "cannot install $torch_spec (no package index reachable?)"
  fi
fi
t1=$(date +%s)
echo "cuda_build: venv ready in $((t1 - t0)) s: $("$venv/bin/python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"

# 3. build through the project's own build code (same sources and flags as a JIT build on a GPU box)
export CUDA_HOME="$cuda_home" PATH="$cuda_home/bin:$PATH"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export SHARDMIX_EXTENSIONS_DIR="$repo/.cache/torch_extensions_cuda_ci"
export MAX_JOBS="${MAX_JOBS:-2}"
cd "$repo"
PYTHONPATH="$repo" "$venv/bin/python" - <<'PY'
import sys
import time

import torch

from pipeline.kernels import _ext

assert _ext.want_cuda(), "torch has no CUDA or CUDA_HOME was not found"
t0 = time.perf_counter()
_ext._locked_build(with_cuda=True, verbose=False)
seconds = time.perf_counter() - t0
missing = [op for op in ("weighted_sum_", "linear_xent")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"shardmix::{op}", "CUDA")]
if missing:
    sys.exit(f"cuda_build: FAILED: no CUDA kernel registered for {missing}")
print(f"cuda_build: OK: CUDA extension built and loaded in {seconds:.1f} s "
      f"(archs {__import__('os').environ['TORCH_CUDA_ARCH_LIST']}, torch {torch.__version__}); not executed: no GPU")
PY
