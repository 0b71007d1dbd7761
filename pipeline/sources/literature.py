"""Novels, one document per chapter: six Jane Austen novels (Debian r-cran-janeaustenr) and Moby
Dick (Debian r-cran-tokenizers, which ships it as test data). No R needed.

Both packages keep their data in an R lazy-load database: ``data/Rdata.rdx`` (an RDS file: a list
mapping each object name to an (offset, length) pair) and ``data/Rdata.rdb`` (at each offset: a 4-byte
big-endian length, then a zlib-compressed serialised R object). The PyPI package ``rdata`` parses
both. An Austen novel is a character vector of lines; Moby Dick is one string (with the Project
Gutenberg header and licence, which are cut off).

Ids: ``<book>/ch<NN>`` (Emma restarts its chapter numbers in each volume: ``emma/v2-ch01``);
Moby Dick also has ``mobydick/etymology``, ``mobydick/extracts`` and ``mobydick/epilogue``.
Sub-label: the book (the R object name, e.g. ``prideprejudice``).
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._parallel import pmap
from pipeline.sources.base import Document, PackageSpec, Source, SourceError
from pipeline.sources.fetch import unpacked_root

AUSTEN = "r-cran-janeaustenr"
TOKENIZERS = "r-cran-tokenizers"
R_DATA = {AUSTEN: "usr/lib/R/site-library/janeaustenr/data", TOKENIZERS: "usr/lib/R/site-library/tokenizers/data"}
BOOKS = {
    AUSTEN: ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"),
    TOKENIZERS: ("mobydick",),
}

_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}
_CHAPTER = re.compile(r"^\s*(?:CHAPTER|Chapter)\s+([IVXLC]+|\d+)\b\.?(.*)$")
_VOLUME = re.compile(r"^\s*VOLUME\s+([IVXLC]+|\d+)\s*$")
_MOBY_SPECIAL = {"ETYMOLOGY.": "etymology", "EXTRACTS (Supplied by a Sub-Sub-Librarian).": "extracts", "Epilogue": "epilogue"}


def roman_or_int(s: str) -> int:
    if s.isdigit():
        return int(s)
    total = 0
    for a, b in zip(s, s[1:] + " "):
        v = _ROMAN[a]
        total += -v if b != " " and _ROMAN[b] > v else v
    return total


def read_lazyload_db(data_dir: Path, names: tuple[str, ...], spec: object) -> dict[str, object]:
    """Read objects from an R lazy-load database (``Rdata.rdx`` + ``Rdata.rdb``) with ``rdata``."""
    import rdata

    rdx, rdb = data_dir / "Rdata.rdx", data_dir / "Rdata.rdb"
    for p in (rdx, rdb):
        if not p.is_file():
            raise SourceError(f"{spec}: {p} is missing; the package layout changed or the unpacked copy is damaged "
                              f"(delete {unpacked_root(data_dir)} and rerun)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns that .rdx / a raw chunk is not a usual RDS file
            return _read_objects(rdata, rdx, rdb, names, spec)
    except SourceError:
        raise
    except Exception as e:  # rdata raises many kinds of errors on damaged input
        raise SourceError(f"{spec}: cannot read the R data in {data_dir} ({type(e).__name__}: {e}). "
                          f"Delete {unpacked_root(data_dir)} (the unpacked package) and rerun; if that does not help, "
                          f"the package format changed: update pipeline/sources/literature.py") from None


def _read_objects(rdata, rdx: Path, rdb: Path, names: tuple[str, ...], spec: object) -> dict[str, object]:
    index = rdata.conversion.convert(rdata.parser.parse_file(rdx))
    variables = {str(k): (int(v[0]), int(v[1])) for k, v in index["variables"].items()}
    blob = rdb.read_bytes()
    chunks = []
    for name in names:
        if name not in variables:
            raise SourceError(f"{spec}: {rdx} has no object {name!r} (it has {sorted(variables)}); "
                              f"update pipeline/sources/literature.py for the new package")
        off, length = variables[name]
        chunk = blob[off:off + length]
        if len(chunk) != length or length < 5:
            raise ValueError(f"object {name} at {off}+{length} lies beyond the end of {rdb}")
        chunks.append((name, chunk))
    # rdata spends ~0.5 s per novel on its 10,000+ strings: the objects are parsed in parallel
    return dict(zip(names, pmap(_parse_object, chunks, chunksize=1, min_items=2)))


def _parse_object(item: tuple[str, bytes]) -> list[str]:
    import rdata

    name, chunk = item
    (size,) = struct.unpack(">I", chunk[:4])
    raw = zlib.decompress(chunk[4:])
    if len(raw) != size:
        raise ValueError(f"object {name}: {len(raw)} bytes after decompression, expected {size}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(raw))]


def split_chapters(book: str, lines: list[str]) -> Iterator[tuple[str, str]]:
    """(id, text) per chapter; front matter before the first chapter heading is dropped."""
    starts: list[tuple[int, str]] = []
    volume = None
    seen: set[str] = set()
    for i, line in enumerate(lines):
        s = line.strip()
        if m := _VOLUME.match(line):
            volume = roman_or_int(m.group(1))
            starts.append((i, ""))  # a volume heading ends the previous chapter but is no document
            continue
        if m := _CHAPTER.match(line):
            n = roman_or_int(m.group(1))
            cid = f"{book}/" + (f"v{volume}-" if volume else "") + f"ch{n:02d}"
        elif book == "mobydick" and s in _MOBY_SPECIAL:
            cid = f"{book}/{_MOBY_SPECIAL[s]}"
        else:
            continue
        while cid in seen:  # never expected; keeps ids unique if a heading repeats
            cid += "+"
        seen.add(cid)
        starts.append((i, cid))
    for (a, cid), (b, _) in zip(starts, starts[1:] + [(len(lines), "")]):
        if cid:
            yield cid, "\n".join(lines[a:b])


def strip_gutenberg(text: str) -> str:
    start = re.search(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", text, re.M)
    if start:
        text = text[start.end():]
    end = re.search(r"^(\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", text, re.M)
    if end:
        text = text[: end.start()]
    return text


class Literature(Source):
    domain = "literature"
    packages = (PackageSpec("apt", AUSTEN), PackageSpec("apt", TOKENIZERS))

    def parse(self, cache: Path) -> Iterator[Document]:
        for pkg, books in BOOKS.items():
            data_dir = self.need(self.root(cache, pkg) / R_DATA[pkg], pkg)
            objects = read_lazyload_db(data_dir, books, self.spec(pkg))
            for book in books:
                value = objects[book]
                if len(value) == 1:  # one string (Moby Dick)
                    value = strip_gutenberg(value[0].replace("\r\n", "\n")).split("\n")
                n = 0
                for cid, text in split_chapters(book, value):
                    n += 1
                    yield self.doc(cid, text, sub=book)
                if n == 0:
                    raise SourceError(f"{self.spec(pkg)}: found no chapter headings in {book}; "
                                      f"update pipeline/sources/literature.py for the new text")
