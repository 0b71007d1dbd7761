"""The Linux kernel documentation (6.1): the reStructuredText sources shipped in Debian's
linux-doc-6.1 (``usr/share/doc/linux-doc-6.1/html/_sources/**/*.rst.txt``), markup stripped (``_rst``).

Id: the path under ``_sources`` without ``.txt`` (``networking/napi.rst``). Sub-label: the
subsystem, i.e. the top-level folder (``networking``, ``filesystems``, ``admin-guide``, ...).
``translations/`` (the pages in Chinese, Japanese, Italian, ...) is left out: the corpus is English.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._parallel import pmap
from pipeline.sources._rst import rst_to_text
from pipeline.sources.base import Document, PackageSpec, Source, read_text
from pipeline.sources.fetch import walk_files

PACKAGE = "linux-doc-6.1"
SOURCES_DIR = "usr/share/doc/linux-doc-6.1/html/_sources"


class DocsKernel(Source):
    domain = "docs_kernel"
    packages = (PackageSpec("apt", PACKAGE),)

    def parse(self, cache: Path) -> Iterator[Document]:
        src = self.need(self.root(cache, PACKAGE) / SOURCES_DIR, PACKAGE)
        paths = []
        for path in walk_files(src, ".rst.txt"):
            rel = path.relative_to(src).as_posix()
            if rel.startswith("translations/"):  # Chinese, Japanese, Italian, ... versions of English pages
                continue
            paths.append(path)
        for path, text in zip(paths, pmap(rst_file_text, paths)):
            rel = path.relative_to(src).as_posix()
            sub = rel.split("/", 1)[0] if "/" in rel else ""
            yield self.doc(rel.removesuffix(".txt"), text, sub=sub)


def rst_file_text(path: Path) -> str:
    return rst_to_text(read_text(path))
