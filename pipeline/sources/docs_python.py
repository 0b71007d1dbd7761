"""The Python 3.11 documentation: the reStructuredText sources shipped in Debian's python3.11-doc
(``usr/share/doc/python3.11/html/_sources/**/*.rst.txt``), with the markup stripped (``_rst``).

Id: the path under ``_sources`` without ``.txt`` (``library/json.rst``). Sub-label: the top-level
section (``library``, ``reference``, ``howto``, ...; ``""`` for the top-level pages).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._parallel import pmap
from pipeline.sources._rst import rst_to_text
from pipeline.sources.base import Document, PackageSpec, Source, read_text
from pipeline.sources.fetch import walk_files

PACKAGE = "python3.11-doc"
SOURCES_DIR = "usr/share/doc/python3.11/html/_sources"


class DocsPython(Source):
    domain = "docs_python"
    packages = (PackageSpec("apt", PACKAGE),)

    def parse(self, cache: Path) -> Iterator[Document]:
        src = self.need(self.root(cache, PACKAGE) / SOURCES_DIR, PACKAGE)
        paths = walk_files(src, ".rst.txt")
        for path, text in zip(paths, pmap(rst_file_text, paths)):
            rel = path.relative_to(src).as_posix()
            sub = rel.split("/", 1)[0] if "/" in rel else ""
            yield self.doc(rel.removesuffix(".txt"), text, sub=sub)


def rst_file_text(path: Path) -> str:
    return rst_to_text(read_text(path))
