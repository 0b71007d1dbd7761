"""WordNet 3.0 as a dictionary: Debian's dict-wn (dictd database ``usr/share/dictd/wn.index`` +
``wn.dict.dz``, see ``_dictd``). One document per headword entry (all its senses).

``{cross-reference}`` braces are removed and the senses dedented. Id: ``<headword>``. Sub-label: the part of speech of the
first sense (``n``, ``v``, ``adj``, ``adv``), ``""`` if none is marked.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._dictd import read_dictd
from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.glossary_computing import _XREF

PACKAGE = "dict-wn"
_POS = re.compile(r"^\s+(n|v|adj|adv)\b(?:\s+\d+)?:", re.M)


class DictWordnet(Source):
    domain = "dict_wordnet"
    packages = (PackageSpec("apt", PACKAGE),)

    def parse(self, cache: Path) -> Iterator[Document]:
        d = self.root(cache, PACKAGE) / "usr" / "share" / "dictd"
        index, dz = self.need(d / "wn.index", PACKAGE), self.need(d / "wn.dict.dz", PACKAGE)
        ids: set[str] = set()
        for word, text in read_dictd(index, dz, self.spec(PACKAGE)):
            did, k = word, 1
            while did in ids:
                k += 1
                did = f"{word}#{k}"
            ids.add(did)
            m = _POS.search(text)
            head, _, body = text.partition("\n")
            yield self.doc(did, _XREF.sub(r"\1", head + "\n" + textwrap.dedent(body)), sub=m.group(1) if m else "")
