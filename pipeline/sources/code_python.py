"""Python source code: the standard library modules (``usr/lib/python3.11/**/*.py``) of Debian's
libpython3.11-stdlib and libpython3.11-minimal.

Id: the path under ``usr/lib/python3.11`` (``json/decoder.py``). Sub-label: the top-level module or
package (``json``, ``asyncio``, ``os``). Files are decoded as their PEP 263 coding line says.
"""

from __future__ import annotations

import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.fetch import walk_files

PACKAGES = ("libpython3.11-stdlib", "libpython3.11-minimal")
LIB = "usr/lib/python3.11"


def read_python(path: Path) -> str:
    data = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return data.decode("utf-8", errors="replace")


class CodePython(Source):
    domain = "code_python"
    packages = tuple(PackageSpec("apt", p) for p in PACKAGES)

    def parse(self, cache: Path) -> Iterator[Document]:
        for pkg in PACKAGES:
            lib = self.need(self.root(cache, pkg) / LIB, pkg)
            for path in walk_files(lib, ".py"):
                rel = path.relative_to(lib).as_posix()
                if rel.startswith(("site-packages/", "dist-packages/")):
                    continue
                sub = rel.split("/", 1)[0].removesuffix(".py")
                yield self.doc(rel, read_python(path), sub=sub)
