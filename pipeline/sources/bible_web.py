"""The World English Bible (with the deuterocanon), one document per chapter: Debian's
sword-text-web (a SWORD zText module under ``usr/share/sword``) read with the PyPI package
``pysword``. A modern-English parallel of ``bible_kjv``: ids use the same scheme (``genesis-1``),
the domain differs.

The module text is OSIS XML: footnotes are dropped, other tags stripped, verses numbered one per
line under a ``<Book> <chapter>`` heading. pysword decompresses a whole book per verse read; a
small cache of decompressed blocks makes the full read take well under a second.
Sub-label: the book.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, SourceError
from pipeline.sources.fetch import unpacked_root

PACKAGE = "sword-text-web"
MIN_CHAPTERS = 1000
_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TAG = re.compile(r"<[^>]*>")
_WS = re.compile(r"\s+")
_NOTE_MARK = "\x00"


def osis_to_text(raw: str) -> str:
    text = _NOTE.sub(_NOTE_MARK, raw)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = re.sub(rf"(?<=\w){_NOTE_MARK}(?=\w)", " ", text).replace(_NOTE_MARK, "")  # "God<note/>created"
    return _WS.sub(" ", text).strip()


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


class BibleWEB(Source):
    domain = "bible_web"
    packages = (PackageSpec("apt", PACKAGE),)  # pysword is a Python dependency of the project, not fetched

    def parse(self, cache: Path) -> Iterator[Document]:
        try:
            from pysword.modules import SwordModules
        except ImportError:
            raise SourceError("bible_web needs the PyPI package pysword: pip install pysword") from None
        sword = self.need(self.root(cache, PACKAGE) / "usr" / "share" / "sword", PACKAGE)
        try:
            modules = SwordModules(str(sword))
            found = modules.parse_modules()
            if not found:
                raise ValueError("no module in mods.d")
            name = sorted(found)[0]
            bible = modules.get_bible_from_module(name)
        except Exception as e:  # pysword raises plain exceptions of many kinds
            raise SourceError(f"{self.spec(PACKAGE)}: pysword cannot open the SWORD module in {sword} "
                              f"({type(e).__name__}: {e}); delete {unpacked_root(sword)} and rerun") from None
        bible._decompressed_text = functools.lru_cache(maxsize=8)(bible._decompressed_text)
        books = bible.get_structure().get_books()
        n = 0
        for testament in ("ot", "nt"):
            for book in books.get(testament, []):
                for c in range(1, book.num_chapters + 1):
                    verses = [osis_to_text(v) for v in bible.get_iter(books=[book.osis_name], chapters=[c], clean=False)]
                    if not any(verses):
                        continue
                    numbered = len(verses) == book.chapter_lengths[c - 1]
                    lines = [f"{i} {v}" if numbered else v for i, v in enumerate(verses, 1) if v]
                    n += 1
                    yield self.doc(f"{slug(book.name)}-{c}", f"{book.name} {c}\n\n" + "\n".join(lines), sub=book.name)
        if n < MIN_CHAPTERS:
            raise SourceError(f"{self.spec(PACKAGE)}: only {n} chapters with text in {sword}; the module is damaged "
                              f"(delete {unpacked_root(sword)} and {self.archive(cache, PACKAGE)} and rerun) or changed")
