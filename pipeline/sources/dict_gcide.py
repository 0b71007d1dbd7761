"""The GNU Collaborative International Dictionary of English (Webster's 1913 and additions):
Debian's dict-gcide (dictd database ``usr/share/dictd/gcide.index`` + ``gcide.dict.dz``).

One document per definition block; ``{cross-reference}`` braces are removed. A headword that
heads several blocks gets ids ``word``, ``word#2``, ... in index order. Sub-label: none (``""``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._dictd import read_dictd
from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.glossary_computing import tidy_entry

PACKAGE = "dict-gcide"


class DictGCIDE(Source):
    domain = "dict_gcide"
    packages = (PackageSpec("apt", PACKAGE),)

    def parse(self, cache: Path) -> Iterator[Document]:
        d = self.root(cache, PACKAGE) / "usr" / "share" / "dictd"
        index, dz = self.need(d / "gcide.index", PACKAGE), self.need(d / "gcide.dict.dz", PACKAGE)
        ids: set[str] = set()
        for word, text in read_dictd(index, dz, self.spec(PACKAGE)):
            did, k = word, 1
            while did in ids:
                k += 1
                did = f"{word}#{k}"
            ids.add(did)
            yield self.doc(did, tidy_entry(text))
