"""Linux manual pages: Debian's manpages (sections 1, 4, 5, 7, ...) and manpages-dev (sections 2
and 3: system calls and the C library), rendered to plain text with groff.

A page is rendered like ``man -l FILE | col -b`` but with one ``groff`` process per page and no
``man``/``col`` pipeline: ``groff -k -t -mandoc -Tutf8 -P-cbou -rHY=0`` (preconv, tbl, no overstriking, no hyphenation), with
``.ad l`` after the ``.TH`` line so that lines are not justified with runs of spaces.
Pages run in parallel, one per core. Symlinked pages and ``.so`` stubs (which only point to
another page) are skipped, so each page is rendered once. The running header and footer lines
are dropped. Id: ``man2/open.2`` (the path under ``usr/share/man`` without ``.gz``). Sub-label:
the section (``2``).
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, SourceError
from pipeline.sources.fetch import walk_files

log = logging.getLogger(__name__)

PACKAGES = ("manpages", "manpages-dev")
PAGE_TIMEOUT = 120
_COMMENT = re.compile(r"^(?:\.\\\"|'\\\"|\.\s*$)")
_RUNNING = re.compile(r"\S+\(\w+\)\s*$")


def is_stub(source: str) -> bool:
    """True for a page that only sources another one (``.so man3/other.3``)."""
    for line in source.splitlines():
        if not line.strip() or _COMMENT.match(line):
            continue
        return line.startswith(".so ")
    return True  # only comments


_TH = re.compile(rb"^\.TH\b.*$", re.M)


def render(source: bytes) -> tuple[int, str, str]:
    """Render one man page source with groff; (return code, text, stderr)."""
    source = _TH.sub(lambda m: m.group(0) + b"\n.ad l", source, count=1)
    env = dict(os.environ, LC_ALL="C.UTF-8", GROFF_NO_SGR="1")
    try:
        r = subprocess.run(["groff", "-k", "-t", "-mandoc", "-Tutf8", "-P-cbou", "-rLL=78n", "-rHY=0"], input=source,
                           capture_output=True, timeout=PAGE_TIMEOUT, env=env)
    except FileNotFoundError:
        raise SourceError("manpages needs groff to render the pages: apt-get install groff-base") from None
    except subprocess.TimeoutExpired:
        return -1, "", f"groff took over {PAGE_TIMEOUT} s"
    return r.returncode, r.stdout.decode("utf-8", errors="replace"), r.stderr.decode("utf-8", errors="replace")


def drop_running_lines(text: str) -> str:
    lines = text.strip("\n").split("\n")
    if lines and _RUNNING.search(lines[0]):
        lines = lines[1:]
    if lines and _RUNNING.search(lines[-1]):
        lines = lines[:-1]
    return "\n".join(lines)


class Manpages(Source):
    domain = "manpages"
    packages = tuple(PackageSpec("apt", p) for p in PACKAGES)

    def parse(self, cache: Path) -> Iterator[Document]:
        pages: list[tuple[str, str, bytes]] = []  # (id, section, source)
        for pkg in PACKAGES:
            man = self.need(self.root(cache, pkg) / "usr" / "share" / "man", pkg)
            for path in walk_files(man, ".gz"):
                if not path.parent.name.startswith("man"):
                    continue
                try:
                    source = gzip.decompress(path.read_bytes())
                except (OSError, EOFError) as e:
                    raise self.bad(path, pkg, f"{type(e).__name__}: {e}") from None
                if is_stub(source.decode("utf-8", errors="replace")):
                    continue
                pages.append((path.relative_to(man).as_posix().removesuffix(".gz"), path.parent.name[3:], source))
        workers = max(1, os.cpu_count() or 1)
        failed = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for (pid, section, _), (code, text, err) in zip(pages, pool.map(lambda p: render(p[2]), pages)):
                if code != 0:
                    failed += 1
                    log.warning("manpages: groff failed on %s (exit %s): %s", pid, code, err.strip()[-200:])
                    continue
                yield self.doc(pid, drop_running_lines(text), sub=section)
        if pages and failed > len(pages) // 10:
            raise SourceError(f"manpages: groff failed on {failed} of {len(pages)} pages; check that groff works "
                              f"(groff -v) and that the man pages in {self.packages} unpacked completely")
