"""How every stage runs: its command line, logging, user errors, threads, seeds and progress bars.

A stage's ``cli()`` builds its parser with :func:`stage_parser` and hands its ``main(args, cfg)``
and its params view (a :class:`~pipeline.params.core.StageParams` of the sections it reads) to
:func:`run_stage`, which validates those sections before any work starts and turns the errors a
user can act on (:class:`~pipeline.params.core.ConfigError`, :class:`StageError`) into one message
and exit status 2. A stage module's ``__main__`` ends through :func:`exit_stage`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from pipeline.params.core import DEFAULT_PARAMS, ConfigError, StageParams, load
from pipeline.lib.paramtrace import traced

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


def run_stage(main: Callable[[argparse.Namespace, StageParams], None], parser: argparse.ArgumentParser,
              params: type[StageParams], argv: list[str] | None = None) -> int:
    """Parse arguments, load and validate the ``params`` sections, run ``main``; user errors exit 2 with one message."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():  # library progress bars garble DVC and CI logs; ours log instead
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    signal.signal(signal.SIGTERM, raise_interrupt)  # clean up temporary outputs when killed, as on Ctrl-C
    try:
        cfg = load(args.params, params)
        main(args, traced(cfg))
    except (ConfigError, StageError) as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; no partial output was kept")
        return 130
    return 0


def exit_stage(code: int) -> NoReturn:
    """End a stage's process with exit status ``code`` (its ``__main__``: ``exit_stage(cli())``).

    Python's teardown of a process that imported torch and transformers runs full cyclic garbage
    collections over the ~400 thousand objects the imports made: about 1 s on 2 cores in each of a
    run's ~85 stage processes, as long as some stages take to work. By now every output is written,
    so they are frozen first (``gc.freeze``): teardown still runs every ``atexit`` handler (and
    ``weakref.finalize``, temporary folders) and frees by reference count; it only no longer
    traverses them. Only for a process about to end: in a long-lived one frozen objects are never
    collected, which is why :func:`run_stage` does not do it.
    """
    gc.freeze()
    raise SystemExit(code)


def raise_interrupt(signum, frame):
    """A signal handler that makes SIGTERM (or any signal) a KeyboardInterrupt, as Ctrl-C is."""
    raise KeyboardInterrupt


def on_main_thread() -> bool:
    """Whether signal handlers can be set here (Python allows it on the main thread only)."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred_interrupts(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver the first that came to the
    handler that was in place: for code that writes files in place and must not stop half-way (DVC
    writes ``.dvc/tmp/rwlock`` and ``dvc.lock`` so; an interrupt in the middle leaves a truncated
    file that every later ``dvc`` command refuses). Outside the main thread, where handlers cannot
    be set, it holds nothing."""
    if not on_main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: not set from Python
        if held:
            signal.raise_signal(held[0])


THREADS_ENV = "SHARDMIX_THREADS"


def resolved_threads(threads: int) -> int:
    """params ``threads``; 0 means this process's share of the machine: the ``SHARDMIX_THREADS``
    that ``pipeline.launch`` gives each job it runs beside others, else every core this process may
    run on (its CPU affinity: all cores, or a Slurm allocation, ``taskset``)."""
    if threads:
        return threads
    share = os.environ.get(THREADS_ENV, "").strip()
    if share:
        if not share.isdigit() or int(share) < 1:
            raise StageError(f"environment {THREADS_ENV}={share!r}: a whole number of threads >= 1; unset it to use every core")
        return int(share)
    return usable_cpus()


def interpreter_first_path() -> str:
    """PATH with this interpreter's folder first, for child processes: its python, dvc and ninja,
    not whatever an activated or system environment puts first."""
    return os.pathsep.join([str(Path(sys.executable).parent)] + ([os.environ["PATH"]] if os.environ.get("PATH") else []))


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def configure_threads(threads: int) -> None:
    """Set torch's threads from params ``threads`` (every stage that runs torch calls this first)."""
    import torch

    torch.set_num_threads(resolved_threads(threads))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def progress(iterable=None, **kw):
    """tqdm on a terminal; periodic log lines otherwise (DVC and CI logs stay readable)."""
    from tqdm.auto import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, **kw)
    kw.setdefault("mininterval", 15.0)
    kw.setdefault("ascii", True)
    return tqdm(iterable, file=sys.stderr, **kw)
