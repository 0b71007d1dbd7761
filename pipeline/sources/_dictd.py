"""Reader for dictd databases: ``NAME.index`` + ``NAME.dict.dz``.

The index has one line per headword: ``headword<TAB>offset<TAB>length``, the numbers in dictd's
base64 (``A-Za-z0-9+/``, most significant digit first), giving a byte range of the uncompressed
``.dict`` file. ``.dict.dz`` is gzip (dictzip adds random access, which is not needed here).
Headwords ``00-*`` (``00-database-info``, ``00-gcide-url``, ...) and ``00database*`` are metadata and are skipped; several headwords
may share one definition, which is returned once (under its first headword in index order).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import SourceError

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def b64_number(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def _fix(path: Path) -> str:
    from pipeline.sources.fetch import unpacked_root

    root = unpacked_root(path)
    return (f"delete {root} (the unpacked package) and rerun" if root else f"delete {path} and rerun")


def read_dictd(index: Path, dict_dz: Path, spec: object = "") -> Iterator[tuple[str, str]]:
    """(headword, definition text) per distinct definition, in index order."""
    try:
        data = gzip.decompress(dict_dz.read_bytes()) if dict_dz.suffix == ".dz" else dict_dz.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise SourceError(f"{spec}: {dict_dz} is corrupt or truncated ({type(e).__name__}: {e}). Fix: {_fix(dict_dz)}") from None
    try:
        lines = index.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{spec}: cannot read {index} ({type(e).__name__}: {e}). Fix: {_fix(index)}") from None
    seen: set[tuple[int, int]] = set()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            word, off, length = fields[0], b64_number(fields[1]), b64_number(fields[2])
        except (IndexError, KeyError):
            raise SourceError(f"{spec}: {index} line {lineno} is not 'headword<TAB>offset<TAB>length': {line[:80]!r}. "
                              f"Fix: {_fix(index)}") from None
        if word.startswith(("00-", "00database")) or (off, length) in seen:
            continue
        if off + length > len(data):
            raise SourceError(f"{spec}: {index} line {lineno} points beyond the end of {dict_dz} "
                              f"({off}+{length} > {len(data)} bytes): the files do not match or one is truncated. "
                              f"Fix: {_fix(dict_dz)}")
        seen.add((off, length))
        yield word, data[off:off + length].decode("utf-8", errors="replace")
