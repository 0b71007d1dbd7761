"""The PostgreSQL 15 manual: the HTML pages of Debian's postgresql-doc-15
(``usr/share/doc/postgresql-doc-<N>/html/*.html``) turned into text with ``html.parser``; the
navigation header and footer of each page are dropped. Pages are converted in parallel.

Id: the page file name (``sql-createopfamily.html``). Sub-label: none (``""``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._html import html_to_text
from pipeline.sources._parallel import pmap
from pipeline.sources.base import Document, PackageSpec, Source, read_text
from pipeline.sources.fetch import walk_files

PACKAGE = "postgresql-doc-15"
HTML_DIR = "usr/share/doc/postgresql-doc-15/html"
SKIP = frozenset({"navheader", "navfooter"})


class DocsPostgres(Source):
    domain = "docs_postgres"
    packages = (PackageSpec("apt", PACKAGE),)

    def parse(self, cache: Path) -> Iterator[Document]:
        html = self.need(self.root(cache, PACKAGE) / HTML_DIR, PACKAGE)
        paths = walk_files(html, ".html")
        for path, text in zip(paths, pmap(page_text, paths)):
            yield self.doc(path.name, text)


def page_text(path: Path) -> str:
    return html_to_text(read_text(path), SKIP)
