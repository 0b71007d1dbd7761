"""The CUDA kernels (csrc/*.cu: raw pointers, no torch headers) compile with plain nvcc for sm_80
and sm_90. Skipped with the reason when nvcc is absent. Nothing runs on a GPU here; the full
extension (kernels + torch binding) is built by .ci/cuda_build.sh against a CUDA build of torch."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
ARCHS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


def test_cu_files_exist():
    assert {p.name for p in CU_FILES} >= {"merge_cuda.cu", "dot_cuda.cu", "xent_cuda.cu"}


@pytest.mark.parametrize("cu", CU_FILES, ids=[p.name for p in CU_FILES])
def test_nvcc_compiles_for_sm80_sm90(cu, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit on this machine)")
    obj = tmp_path / (cu.stem + ".o")
    cmd = [nvcc, "-std=c++17", "-O3", "-Werror", "all-warnings", f"-I{CSRC}", *ARCHS, "-c", str(cu), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    cuobjdump = Path(nvcc).with_name("cuobjdump")
    if cuobjdump.exists():
        listing = subprocess.run([str(cuobjdump), "--list-elf", str(obj)], capture_output=True, text=True).stdout
        assert "sm_80" in listing and "sm_90" in listing, listing
