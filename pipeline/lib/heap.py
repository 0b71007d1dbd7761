"""Reuse freed memory in loops that allocate the same large tensors every step (glibc's malloc).

glibc serves a block above its mmap threshold (128 KiB at first, rising to at most 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``. A CPU training step of the default model allocates its
``[tokens, vocabulary]`` logits (64 MiB), their log-softmax and their gradient anew every step, so
every step the kernel faults those pages in and zeroes them again. On this project's 2-core
machine a step runs 1.09-1.14x faster inside this block (``python -m pipeline.bench train``,
``kept_heap_speedup``, in one process beside the other variants), a truth's whole training stage
1.19-1.28x (docs/results.md, "The allocator"). Inside
:func:`kept_heap` every block comes from the heap (``M_MMAP_MAX`` 0) and freed memory stays there
(``M_TRIM_THRESHOLD`` 1 GiB), so from the second step on the same pages are reused. The arithmetic
is the same, so are the results, to the bit (``tests/test_heap.py``).

The price: while the block runs the process keeps its high-water mark of memory (what a step frees
is kept for the next one). On leaving the outermost block glibc's defaults come back and
``malloc_trim`` returns the free memory to the system. Where the C library is not glibc (macOS,
musl) the block changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024  # glibc's defaults, restored on leaving
DEFAULT_MMAP_MAX = 65536
KEPT_TRIM_THRESHOLD = 1 << 30

_depth = 0  # blocks entered and not left
_active = False  # whether the outermost block's settings took effect


@functools.cache  # looked up once: every evaluate() call enters kept_heap
def glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (it has ``mallopt``, ``malloc_trim`` and
    ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return libc
    return None


@contextlib.contextmanager
def kept_heap() -> Iterator[bool]:
    """Serve every allocation from the heap and keep what is freed, until the outermost block ends.

    Yields whether the setting took effect (False where the C library is not glibc). Blocks nest:
    only the outermost one sets and restores.
    """
    global _depth, _active
    libc = glibc()
    if libc is None:
        log.debug("the C library is not glibc: allocations stay as they are")
        yield False
        return
    if _depth == 0:
        _active = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEPT_TRIM_THRESHOLD) == 1
        if not _active:
            log.debug("mallopt refused the heap settings: allocations stay as they are")
    _depth += 1
    try:
        yield _active
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
