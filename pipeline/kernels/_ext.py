"""Build and load the shardmix C++/CUDA extension (``csrc/``), JIT with ninja, cached per project.

``python -m pipeline.kernels.build`` (see build.py) builds the extension (or reports the cached build) and prints
how long it took; the project's setup calls it so a fresh machine needs no manual step. Otherwise
the first kernel call builds it (about 45 s cold on 2 cores, ~0.05 s cached).

The build cache lives in ``$SHARDMIX_EXTENSIONS_DIR`` (default ``<repo>/.cache/torch_extensions``),
in a sub-folder per Python/torch version and checkout (a hash of the ``csrc/`` path: ninja's build
file names the sources by their absolute paths, so two checkouts sharing one folder would each read
the other's build as stale and recompile, 25-45 s, every time they alternate). Builders serialise
on an ``fcntl`` lock that the kernel releases when a process dies, so a ``lock`` file left behind
by torch's own build baton inside the folder is known to be stale and is removed (a stale one makes
``load()`` wait forever).

Environment:

- ``SHARDMIX_EXTENSIONS_DIR``: where builds are cached.
- ``SHARDMIX_DISABLE_EXTENSION=1``: never build; every call uses the pure-torch reference.
- ``SHARDMIX_BUILD_VERBOSE=1``: show the compiler commands.

The compile flags are portable (``-O3``, no ``-march=native``): the CPU kernels pick their AVX-512
/ AVX2 / generic code path at run time, so a cached build is safe to reuse on another x86 CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CSRC = REPO_ROOT / "csrc"
EXT_NAME = "shardmix_kernels"

CPU_SOURCES = ["ops.cpp", "merge_cpu.cpp", "merge_avx2.cpp", "merge_avx512.cpp", "dot_ops.cpp", "dot_cpu.cpp", "xent_cpu.cpp"]
CUDA_SOURCES = ["ops_cuda.cpp", "merge_cuda.cu", "dot_ops_cuda.cpp", "dot_cuda.cu", "xent_cuda.cu"]
CFLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=fast", "-fno-trapping-math", "-fno-math-errno", "-DNDEBUG"]
LDFLAGS = ["-fopenmp"]
CUDA_CFLAGS = ["-O3", "-DNDEBUG", "-lineinfo"]


@dataclass
class _State:
    """Outcome of the one load attempt of this process (None until attempted)."""

    ops: object | None = None
    error: str | None = None
    attempted: bool = False
    seconds: float = 0.0
    with_cuda: bool = False


_state = _State()
_load_lock = threading.Lock()


def extensions_dir() -> Path:
    """The build cache folder of this Python/torch version and this checkout's ``csrc/``."""
    root = Path(os.environ.get("SHARDMIX_EXTENSIONS_DIR", REPO_ROOT / ".cache" / "torch_extensions"))
    checkout = hashlib.sha1(str(CSRC).encode()).hexdigest()[:8]
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__.replace('+', '_')}_src{checkout}"
    return root / tag


def want_cuda() -> bool:
    """Build the CUDA kernels too? Only with a CUDA build of torch and a CUDA toolkit."""
    from torch.utils import cpp_extension

    return bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None


def _nvidia_wheel_includes() -> list[str]:
    """Headers of pip's CUDA wheels (e.g. site-packages/nvidia/cu13/include) that torch's
    ``ATen/cuda`` headers need when the toolkit itself lacks them (cuBLAS, cuSPARSE...)."""
    site = Path(torch.__file__).resolve().parent.parent
    return sorted(str(p) for p in site.glob("nvidia/*/include") if p.is_dir())


@contextlib.contextmanager
def _this_environments_ninja():
    """Put the ``ninja`` installed beside this interpreter (the ``ninja`` wheel, a dependency of the
    project) first on PATH while torch builds: torch runs the first ``ninja`` on PATH, and two ninja
    versions sharing one build folder recompile every object each time they alternate (1.11 and
    1.13 hash command lines differently, so each reads the other's log as "command line
    changed"). Without this, a process run as ``.venv/bin/python`` (the system ninja first) and a
    DVC stage (the venv's) rebuilt the kernels for each other, 25-40 s each time."""
    bindir = Path(sys.executable).parent
    old = os.environ.get("PATH")
    if (bindir / "ninja").is_file():
        os.environ["PATH"] = os.pathsep.join([str(bindir)] + ([old] if old else []))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = old


def _compile_and_load(build_dir: Path, with_cuda: bool, verbose: bool) -> None:
    from torch.utils import cpp_extension

    sources = [str(CSRC / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else [])]
    name = EXT_NAME + ("_cuda" if with_cuda else "")
    defines = ["-DSHARDMIX_WITH_CUDA"] if with_cuda else []
    with _this_environments_ninja():
        cpp_extension.load(
            name=name,
            sources=sources,
            extra_cflags=CFLAGS + defines,
            extra_cuda_cflags=CUDA_CFLAGS + defines,
            extra_ldflags=LDFLAGS,
            extra_include_paths=[str(CSRC)] + (_nvidia_wheel_includes() if with_cuda else []),
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=verbose,
        )


def _locked_build(with_cuda: bool, verbose: bool) -> None:
    """Compile (if needed) and load the .so under a process-lifetime lock; clear stale batons."""
    build_dir = extensions_dir() / (EXT_NAME + ("_cuda" if with_cuda else ""))
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.flock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("removing stale build lock %s (left by a killed build)", stale)
                stale.unlink()
            _compile_and_load(build_dir, with_cuda, verbose)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_ops(*, raise_on_error: bool = False) -> object | None:
    """Return ``torch.ops.shardmix`` after building/loading the extension once per process.

    On failure (no compiler, compile error, disabled) this logs ONE warning and returns None, so
    callers fall back to the pure-torch reference; with ``raise_on_error`` it raises instead.
    """
    with _load_lock:
        _load_once()
    if _state.ops is None and raise_on_error:
        raise RuntimeError(f"shardmix extension unavailable: {_state.error}")
    return _state.ops


def _load_once() -> None:
    """Build and load once per process (caller holds ``_load_lock``); never raises."""
    if _state.attempted:
        return
    _state.attempted = True
    t0 = time.perf_counter()
    try:
        _state.ops = _build_and_load()
    except Exception as exc:  # any build failure must degrade to the reference path
        _state.error = f"{type(exc).__name__}: {exc}".strip()
        log.warning(
            "shardmix C++/CUDA kernels unavailable, using the slower pure-torch reference (reason: %s). "
            "`python -m pipeline.kernels.build --verbose` shows the full build log.",
            _state.error.splitlines()[0][:500],
        )
    _state.seconds = time.perf_counter() - t0


def _build_and_load() -> object:
    """CUDA + CPU kernels where possible, else CPU only; returns ``torch.ops.shardmix``."""
    if os.environ.get("SHARDMIX_DISABLE_EXTENSION", "") not in ("", "0"):
        raise RuntimeError("disabled by SHARDMIX_DISABLE_EXTENSION")
    verbose = os.environ.get("SHARDMIX_BUILD_VERBOSE") == "1"
    _state.with_cuda = want_cuda()
    try:
        _locked_build(_state.with_cuda, verbose)
    except Exception as exc:
        if not _state.with_cuda:
            raise
        log.warning("shardmix CUDA kernels failed to build (%s); building the CPU kernels only",
                    str(exc).splitlines()[0][:300])
        _state.with_cuda = False
        _locked_build(False, verbose)
    from . import _fake  # noqa: F401  (registers the fake kernels of the ops)

    return torch.ops.shardmix


def load_error() -> str | None:
    """Why the extension could not be loaded (None if it loaded or was not tried yet)."""
    return _state.error


def status() -> dict:
    """Outcome of this process's load attempt: ok, seconds, with_cuda, dir, error."""
    return {
        "ok": _state.ops is not None,
        "seconds": round(_state.seconds, 2),
        "with_cuda": _state.with_cuda,
        "dir": str(extensions_dir()),
        "error": _state.error,
    }


def has_cuda_kernels() -> bool:
    """True when the loaded extension contains the CUDA kernels."""
    return load_ops() is not None and _state.with_cuda
