"""The user's own corpus: JSON Lines (``.jsonl``, ``.json``) or Parquet (``.parquet``) files with a
text field and a domain field per row.

``path`` is one file or a folder (every ``.jsonl``/``.json``/``.parquet`` file in it, recursively,
in sorted order). A ``.json`` file may also hold one JSON array of row objects.

JSON Lines are read line by line, so that every error names the line: bytes that are not UTF-8, a
line that is not a JSON object. Parquet is read with pyarrow. Then every row is checked before any
document of the file is made: a row whose text field is absent or null (or not a string) is an
error naming the rows, never a row dropped silently; a text that is empty or only whitespace is
skipped, and the number skipped is logged. Rows count from 0 (the default id is
``<file stem>:<row>``); JSON Lines errors give the line (from 1) as well.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, SourceError, clean_text
from pipeline.sources.fetch import sha256_file

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".parquet")
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_WS = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # JSON may escape one ("\ud800"); UTF-8 cannot hold it
_SHOW = 5  # rows named in an error
# Python type -> the name pyarrow gives such a column (the names the messages have always used)
_TYPE_NAMES = {bool: "bool", int: "int64", float: "double", str: "string", list: "list", dict: "struct"}
_KINDS = {"text": ("string",), "domain": ("string",), "id": ("string", "int"), "sub": ("string",)}

Row = tuple[int | None, dict]  # (line of the file, or None; the row's wanted fields)


class LocalCorpus:
    """Documents from local JSONL/Parquet files. ``fetch`` only checks and hashes them."""

    def __init__(self, path: str | Path, text_field: str = "text", domain_field: str = "domain",
                 id_field: str | None = None, sub_field: str | None = None) -> None:
        self.path = Path(path)
        self.text_field = text_field
        self.domain_field = domain_field
        self.id_field = id_field
        self.sub_field = sub_field

    def __repr__(self) -> str:
        return f"LocalCorpus({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        p = self.path
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise SourceError(f"local corpus {p}: the folder holds no .jsonl, .json or .parquet files; "
                                  f"put the files there or point prepare.local[].path at a file")
            return files
        if not p.exists():
            raise SourceError(f"local corpus {p}: file not found; fix prepare.local[].path in params.yaml "
                              f"(relative paths are relative to the repository root)")
        if p.suffix.lower() not in SUFFIXES:
            raise SourceError(f"local corpus {p}: unsupported file type {p.suffix!r}; use .jsonl/.json "
                              f"(JSON Lines) or .parquet")
        return [p]

    def fetch(self, cache: Path) -> list[dict]:
        return [{"registry": "local", "name": str(f), "version": None, "file": str(f), "sha256": sha256_file(f)}
                for f in self.files()]

    def documents(self, cache: Path) -> Iterator[Document]:
        seen: dict[str, set[str]] = {}
        for f in self.files():
            for doc in self._read(f):
                ids = seen.setdefault(doc.domain, set())
                if doc.id in ids:
                    raise SourceError(f"local corpus {f}: id {doc.id!r} occurs twice in domain {doc.domain!r} "
                                      f"(field {self.id_field!r}); ids must be unique within a domain: fix the "
                                      f"data or drop id_field to use <file stem>:<row>")
                ids.add(doc.id)
                yield doc

    # --- reading ------------------------------------------------------------------------------

    def _fields(self) -> dict[str, str]:
        """role -> field name, for the fields that are set."""
        roles = {"text": self.text_field, "domain": self.domain_field, "id": self.id_field, "sub": self.sub_field}
        return {role: field for role, field in roles.items() if field is not None}

    def _load(self, f: Path) -> tuple[list[str], list[Row]]:
        """The file's field names (in order of appearance) and its rows, holding only the wanted fields."""
        wanted = list(self._fields().values())
        if f.suffix.lower() == ".parquet":
            return _parquet(f, wanted)
        with open(f, "rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(codecs.BOM_UTF8):
            head = head[len(codecs.BOM_UTF8):].lstrip()
        if head.startswith(b"["):  # one JSON array of rows
            return _json_array(f, wanted)
        return _jsonl(f, wanted)

    def _check(self, f: Path, columns: list[str], rows: list[Row]) -> None:
        """Every field present, every value of the right type, every text there: else SourceError."""
        for role, field in self._fields().items():
            if field not in columns:
                raise SourceError(f"local corpus {f}: missing field {field!r} (the {role} field); the file has "
                                  f"{columns}. Fix: add it to the rows or set prepare.local[].{role}_field")
        tf = self.text_field
        absent = [(i, line) for i, (line, row) in enumerate(rows) if row.get(tf) is None]
        if absent:
            raise SourceError(f"local corpus {f}: {len(absent)} of {len(rows)} rows have no text (field {tf!r} "
                              f"absent or null): {_where(absent)}. Fix: add the text to these rows, or remove the "
                              f"rows from the file (a row with an empty text is skipped; a row without one is an "
                              f"error, so that no document disappears silently)")
        for role, field in self._fields().items():
            kinds = _KINDS[role]
            bad = [(i, line, row[field]) for i, (line, row) in enumerate(rows)
                   if row.get(field) is not None and _kind(row[field]) not in kinds]
            if bad:
                raise SourceError(f"local corpus {f}: field {field!r} (the {role} field) has type "
                                  f"{_type_name(bad[0][2])}, expected {' or '.join(kinds)}, in {len(bad)} of "
                                  f"{len(rows)} rows: {_where([b[:2] for b in bad])}. Fix: store it as {kinds[0]} "
                                  f"or set prepare.local[].{role}_field to another field")

    def _read(self, f: Path) -> list[Document]:
        """The documents of one file, after every row of it was checked."""
        columns, rows = self._load(f)
        self._check(f, columns, rows)
        docs, blank = [], 0
        for i, (line, row) in enumerate(rows):
            domain = row.get(self.domain_field)
            if not isinstance(domain, str) or not DOMAIN_NAME.match(domain):
                raise SourceError(f"local corpus {f}: row {i}: field {self.domain_field!r} is {domain!r}; a domain "
                                  f"must be a non-empty name of letters, digits, '_', '-', '.'{_at(line)}. Fix the data")
            text = clean_text(row[self.text_field])
            if not text.strip():
                blank += 1
                continue
            did = f"{f.stem}:{i}" if self.id_field is None else row.get(self.id_field)
            if did is None or did == "":
                raise SourceError(f"local corpus {f}: row {i}: the id field {self.id_field!r} is empty{_at(line)}. "
                                  f"Fix the data or drop id_field to use <file stem>:<row>")
            sub = row.get(self.sub_field) if self.sub_field is not None else None
            docs.append(Document(id=str(did), domain=domain, sub=sub or "", text=text))
        if blank:
            log.info("local corpus %s: skipped %d row(s) whose text is empty or only whitespace", f, blank)
        log.info("local corpus %s: %d documents", f, len(docs))
        return docs


# --- formats -----------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise ValueError(f"key {dup!r} appears twice in one object")
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def _unreadable(f: Path, kind: str, where: str, err: str) -> SourceError:
    return SourceError(f"local corpus {f}: cannot read it as {kind}: {where}: {err}. Fix the file "
                       f"(is it complete? the right format for its suffix?)")


def _not_utf8(f: Path, line: int, raw: bytes, e: UnicodeDecodeError) -> SourceError:
    return SourceError(f"local corpus {f}: line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                       f"{e.start + 1} of the line). Fix: save the file as UTF-8 (for a Latin-1 file: iconv -f "
                       f"latin1 -t utf-8 IN > OUT), or remove the line")


def _row(f: Path, where: str, obj: object, wanted: list[str], columns: dict[str, None], kind: str,
         escapes: bool = True) -> dict:
    """The wanted fields of one decoded row; ``escapes``: the source text has a ``\\u`` escape."""
    if not isinstance(obj, dict):
        raise _unreadable(f, kind, where, f"expected a JSON object, found {json.dumps(obj)[:60]}")
    columns.update(dict.fromkeys(obj))
    row = {k: obj[k] for k in wanted if k in obj}
    bad = [k for k, v in row.items() if isinstance(v, str) and _SURROGATE.search(v)] if escapes else []
    if bad:
        raise _unreadable(f, kind, where, f"field {bad[0]!r} holds an unpaired surrogate escape (\\ud800-\\udfff), "
                                          f"which is no character")
    return row


def _jsonl(f: Path, wanted: list[str]) -> tuple[list[str], list[Row]]:
    kind = "JSON Lines (one JSON object per line)"
    columns: dict[str, None] = {}
    rows: list[Row] = []
    with open(f, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(f, n, raw, e) from None
            pos = _WS.match(text).end()
            while pos < len(text):  # usually one object a line; pyarrow also took several
                try:
                    obj, pos = _DECODER.raw_decode(text, pos)
                except ValueError as e:  # JSONDecodeError, or a key written twice
                    col = f", column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
                    msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                    raise _unreadable(f, kind, f"line {n}{col}", msg) from None
                rows.append((n, _row(f, f"line {n}", obj, wanted, columns, kind, b"\\u" in raw)))
                pos = _WS.match(text, pos).end()
    return list(columns), rows


def _json_array(f: Path, wanted: list[str]) -> tuple[list[str], list[Row]]:
    kind = "a JSON array of objects"
    data = f.read_bytes()
    data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SourceError(f"local corpus {f}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x}). Fix: save "
                          f"the file as UTF-8 (for a Latin-1 file: iconv -f latin1 -t utf-8 IN > OUT)") from None
    try:
        items = _DECODER.decode(text)
    except ValueError as e:
        where = f"line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else "an object"
        raise _unreadable(f, kind, where, e.msg if isinstance(e, json.JSONDecodeError) else str(e)) from None
    if not isinstance(items, list):
        raise _unreadable(f, kind, "the top level", f"expected an array, found {json.dumps(items)[:60]}")
    columns: dict[str, None] = {}
    escapes = "\\u" in text
    rows: list[Row] = [(None, _row(f, f"item {i}", obj, wanted, columns, kind, escapes)) for i, obj in enumerate(items)]
    return list(columns), rows


def _parquet(f: Path, wanted: list[str]) -> tuple[list[str], list[Row]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(f)
        columns = list(table.column_names)
        values = table.select([c for c in wanted if c in columns]).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _unreadable(f, "Parquet", type(e).__name__, str(e)[:300]) from None
    return columns, [(None, row) for row in values]


# --- messages ------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    return "string" if isinstance(value, str) else "int" if isinstance(value, int) and not isinstance(value, bool) else "other"


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _at(line: int | None) -> str:
    return f" (line {line} of the file)" if line else ""


def _where(bad: list[tuple[int, int | None]]) -> str:
    """'row 3 (line 4), row 9 (line 10) and 12 more'."""
    shown = ", ".join(f"row {i}" + (f" (line {line})" if line else "") for i, line in bad[:_SHOW])
    return shown + (f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else "")
