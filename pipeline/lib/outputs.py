"""Outputs that are whole or absent, and records of what made them.

- :func:`atomic_dir`, :func:`atomic_dirs`, :func:`write_text_atomic`, :func:`write_json`,
  :func:`save_npz`: every output is written under a temporary name beside its final path and
  renamed when complete. Temporary names are ``.<name>.tmp-<pid>-<random>``: ``.dvcignore``
  keeps DVC from hashing them, and a temporary left by a process that no longer runs (killed with
  SIGKILL) is removed the next time the same output is written.
- :func:`made_by`: the provenance stored *inside* an output (which stage, the command, the
  params and library versions). It holds only what is fixed by the inputs, so an output made
  twice from the same inputs on the same machine is byte-identical and DVC's hash does not move.
- :class:`RunRecord`: what may differ between two runs of the same inputs (time taken,
  throughput, git commit and dirty flag, host, CPU instruction set, threads) goes to
  ``runs/<stage>/<item>.json`` instead, beside the outputs: neither git nor DVC tracks it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.lib.runtime import StageError

REPO = Path(__file__).resolve().parents[2]
RUNS_DIR = Path(os.environ.get("SHARDMIX_RUNS", "runs"))
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[^/]*$")


# ---------------------------------------------------------------- atomic outputs


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(path: Path) -> list[Path]:
    """Remove ``path``'s temporaries left by processes that no longer run; return what was removed."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.iterdir():
        m = _TMP.match(p.name)
        if m and m["name"] == path.name and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            remove(p)
            removed.append(p)
    return removed


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    return Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_dirs(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary folder per path; on success each replaces its path, on error all are removed."""
    paths = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        tmps = [_tmp_sibling(p) for p in paths]
        yield tmps
        for tmp, path in zip(tmps, paths):
            remove(path)
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed."""
    with atomic_dirs([path]) as (tmp,):
        yield tmp


def _replace(tmp: str | Path, path: Path) -> None:
    if path.is_symlink():  # a DVC cache link: replace the link, never write through it
        path.unlink()
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_texts_atomic(files: dict[Path, str]) -> None:
    """Write several files or none: each goes to a temporary sibling, then all are renamed."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(path)
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
            tmps.append((Path(tmp), path))
            with os.fdopen(fd, "w") as f:
                f.write(text)
        for tmp, path in tmps:
            _replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them and DVC's parser rejects them."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    return json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json_text(obj))


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: {what} not found (run the stage that makes it: dvc repro)") from None
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: {what} is not valid JSON ({e}); delete it and rerun the stage that makes it") from None


def save_npz(path: str | Path, arrays: dict) -> None:
    """Write numpy arrays to ``path`` atomically (temporary name, then rename)."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        _replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- provenance


def command() -> str:
    """This process's command as a user would type it: ``python -m pipeline.<stage> <args>``."""
    prog = Path(sys.argv[0])
    try:
        module = ".".join(prog.resolve().relative_to(REPO).with_suffix("").parts)
        head = ["python", "-m", module.removesuffix(".__main__")]
    except ValueError:
        head = ["python", prog.name]
    return " ".join([*head, *sys.argv[1:]])


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "tokenizers"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = m.__version__
    return out


def made_by(stage: str, **extra: Any) -> dict[str, Any]:
    """What made an output, fixed by its inputs: stage, command, library versions, and ``extra``
    (the params it used, its data). Nothing here changes between two runs of the same inputs."""
    return {"stage": stage, "command": command(), "versions": versions(), **extra}


def cpu_isa() -> str:
    """The widest SIMD instruction set the CPU kernels can use here: avx512, avx2 or generic."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    words = set(flags.split())
    return "avx512" if "avx512f" in words else "avx2" if {"avx2", "fma"} <= words else platform.machine() or "generic"


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


class RunRecord:
    """Facts of one run that are not fixed by its inputs; ``write()`` puts them in ``runs/<stage>/<item>.json``."""

    def __init__(self, stage: str, item: str | None = None):
        self.stage, self.item = stage, item or stage
        self.facts: dict[str, Any] = {}
        self.t0, self.started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def write(self, **facts: Any) -> Path:
        self.facts.update(facts)
        rec = {"stage": self.stage, "item": self.item, "command": command(), "started": self.started,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.perf_counter() - self.t0, 2),
               "git": git_state(), "host": platform.node(), "cpu_isa": cpu_isa(), "cpus": os.cpu_count(),
               "torch_threads": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None, "versions": versions(), **self.facts}
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", self.item)
        path = RUNS_DIR / self.stage / f"{safe}.json"
        write_json(path, rec)
        return path
