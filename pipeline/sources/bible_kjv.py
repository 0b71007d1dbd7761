"""The King James Bible, one document per chapter (1189), from Debian's bible-kjv (the ``bible``
program) and bible-kjv-text (its compressed text ``usr/lib/bible.data``).

The unpacked ``bible`` program prints the whole text: ``bible -p DIR gen1:1-rev22:21``. Its output
has a heading line ``<Book> <chapter>`` after a blank line, then verses ``  <n> text`` wrapped at
80 columns; verses are rejoined into one line each. Id: ``genesis-1``, ``1-samuel-3``,
``song-of-solomon-2``. Sub-label: the book.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, SourceError
from pipeline.sources.fetch import run, unpacked_root

PROGRAM = "bible-kjv"
TEXT = "bible-kjv-text"
MIN_CHAPTERS = 1000  # the KJV has 1189; fewer means the output format changed
_HEADING = re.compile(r"^((?:[1-3] )?[A-Z][A-Za-z ]+) (\d+)$")
_VERSE = re.compile(r"^\s+(\d+) (.*)$")


def parse_bible_output(out: str) -> Iterator[tuple[str, str, str]]:
    """(id, book, text) per chapter from the output of ``bible -p DIR gen1:1-rev22:21``."""
    book = chapter = None
    verses: list[str] = []
    prev_blank = True
    for line in out.splitlines():
        m = _HEADING.match(line) if prev_blank else None
        prev_blank = not line.strip()
        if m:
            if book is not None:
                yield _chapter(book, chapter, verses)
            book, chapter, verses = m.group(1), m.group(2), []
        elif book is None or not line.strip():
            continue
        elif v := _VERSE.match(line):
            verses.append(f"{v.group(1)} {v.group(2).strip()}")
        elif verses:  # continuation of a wrapped verse
            verses[-1] += " " + line.strip()
    if book is not None:
        yield _chapter(book, chapter, verses)


def _chapter(book: str, chapter: str, verses: list[str]) -> tuple[str, str, str]:
    cid = f"{book.lower().replace(' ', '-')}-{chapter}"
    return cid, book, f"{book} {chapter}\n\n" + "\n".join(verses)


class BibleKJV(Source):
    domain = "bible_kjv"
    packages = (PackageSpec("apt", PROGRAM), PackageSpec("apt", TEXT))

    def parse(self, cache: Path) -> Iterator[Document]:
        program = self.need(self.root(cache, PROGRAM) / "usr" / "bin" / "bible", PROGRAM)
        data_dir = self.need(self.root(cache, TEXT) / "usr" / "lib" / "bible.data", TEXT).parent
        r = run([str(program), "-p", str(data_dir), "gen1:1-rev22:21"], what=f"{self.spec(PROGRAM)}: running {program}",
                fix="Check that the packaged program runs here (it needs libreadline8).", timeout=300)
        if r.returncode != 0:
            raise SourceError(
                f"{self.spec(PROGRAM)}: {program} -p {data_dir} failed (exit {r.returncode}: "
                f"{(r.stderr or r.stdout)[-300:].strip()}). It needs libreadline8 (apt-get install libreadline8); "
                f"if the unpacked copies are damaged, delete {unpacked_root(program)} and {unpacked_root(data_dir)} and rerun"
            )
        n = 0
        for cid, book, text in parse_bible_output(r.stdout):
            n += 1
            yield self.doc(cid, text, sub=book)
        if n < MIN_CHAPTERS:
            raise SourceError(f"{self.spec(PROGRAM)}: parsed only {n} chapters from the output of {program}; "
                              f"its output format changed: update pipeline/sources/bible_kjv.py")
