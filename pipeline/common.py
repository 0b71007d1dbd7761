"""What every stage shares: the command line, logging, seeds, threads and atomic outputs."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import DEFAULT_PARAMS, Config, ConfigError, load_config

log = logging.getLogger("pipeline")


class StageError(RuntimeError):
    """An error a user can act on: the message names the file, the key and the fix."""


def stage_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("urllib3", "filelock", "datasets", "fsspec", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(main: Callable[[argparse.Namespace, Config], None], parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse arguments, load and validate params, run ``main``; user errors exit 2 with one message."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():  # library progress bars garble DVC and CI logs; ours log instead
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    signal.signal(signal.SIGTERM, _terminate)  # clean up temporary outputs when killed, as on Ctrl-C
    try:
        cfg = load_config(args.params)
        configure_threads(cfg.threads)
        main(args, cfg)
    except (ConfigError, StageError) as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; no partial output was kept")
        return 130
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def configure_threads(threads: int) -> None:
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- atomic outputs


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        remove(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.is_symlink():  # a DVC cache link: replace the link, never write through it
            path.unlink()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them and DVC's parser rejects them."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: {what} not found (run the stage that makes it: dvc repro)") from None
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: {what} is not valid JSON ({e}); delete it and rerun the stage that makes it") from None


def provenance(stage: str, cfg: Config | None = None, **extra: Any) -> dict[str, Any]:
    """A small record of what made an output: stage, command, code version, params used."""
    import platform

    rec: dict[str, Any] = {"stage": stage, "command": " ".join([Path(sys.executable).name, *sys.argv])}
    try:
        rec["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rec["git_commit"] = None
    try:
        import torch
        import transformers

        rec["versions"] = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    except ImportError:
        pass
    if cfg is not None:
        rec["seed"] = cfg.seed
    rec.update(extra)
    return rec


def progress(iterable=None, **kw):
    """tqdm on a terminal; periodic log lines otherwise (DVC and CI logs stay readable)."""
    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, **kw)
    kw.setdefault("mininterval", 15.0)
    kw.setdefault("ascii", True)
    return tqdm(iterable, file=sys.stderr, **kw)
