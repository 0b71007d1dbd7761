"""Computing glossaries: FOLDOC (Debian dict-foldoc) and the Jargon File (Debian dict-jargon), read
from their dictd databases (``usr/share/dictd/<name>.index`` + ``.dict.dz``, see ``_dictd``).

One document per definition; ``{cross-reference}`` braces are removed and the body is dedented.
Id: ``<dictionary>/<headword>`` (``foldoc/hacker``, ``jargon/hacker``). Sub-label: the dictionary.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._dictd import read_dictd
from pipeline.sources.base import Document, PackageSpec, Source

DICTS = {"dict-foldoc": "foldoc", "dict-jargon": "jargon"}
_XREF = re.compile(r"\{([^{}]*)\}")


def tidy_entry(text: str) -> str:
    """Dedent the body of a dictd entry (all but its first line) and drop {cross-reference} braces.

    The body's indent is the most common indent of its indented lines (so a stray line at column 0,
    such as a long URL, or the Jargon File's " n." line, does not stop the dedent).
    """
    head, _, body = text.partition("\n")
    lines = body.split("\n")
    indents = Counter(len(ln) - len(ln.lstrip(" ")) for ln in lines if ln.strip() and ln.startswith(" "))
    if indents:
        cut = max(indents.items(), key=lambda kv: (kv[1], -kv[0]))[0]
        lines = [ln[cut:] if ln[:cut].isspace() else ln.lstrip(" ") for ln in lines]
    return _XREF.sub(r"\1", head + "\n" + "\n".join(lines))


class GlossaryComputing(Source):
    domain = "glossary_computing"
    packages = tuple(PackageSpec("apt", p) for p in DICTS)

    def parse(self, cache: Path) -> Iterator[Document]:
        for pkg, name in DICTS.items():
            d = self.root(cache, pkg) / "usr" / "share" / "dictd"
            index = self.need(d / f"{name}.index", pkg)
            dz = self.need(d / f"{name}.dict.dz", pkg)
            ids: set[str] = set()
            for word, text in read_dictd(index, dz, self.spec(pkg)):
                did, k = f"{name}/{word}", 1
                while did in ids:  # the same headword with two definitions
                    k += 1
                    did = f"{name}/{word}#{k}"
                ids.add(did)
                yield self.doc(did, tidy_entry(text), sub=name)
