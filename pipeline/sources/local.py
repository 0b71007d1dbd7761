"""The user's own corpus: JSON Lines (``.jsonl``, ``.json``) or Parquet (``.parquet``) files with a
text field and a domain field per row, read with pyarrow (the columnar engine of ``datasets``).

``path`` is one file or a folder (every ``.jsonl``/``.json``/``.parquet`` file in it, recursively,
in sorted order). A ``.json`` file may also hold one JSON array of row objects.
"""

from __future__ import annotations

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

    # ------------------------------------------------------------------------------------------

    def _table(self, f: Path):
        import pyarrow as pa

        try:
            if f.suffix.lower() == ".parquet":
                import pyarrow.parquet as pq

                return pq.read_table(f)
            import pyarrow.json as pj

            with open(f, "rb") as fh:
                head = fh.read(4096).lstrip()
            if head.startswith(b"["):  # one JSON array of rows
                rows = json.loads(f.read_text(encoding="utf-8"))
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    raise ValueError("expected a JSON array of objects")
                return pa.Table.from_pylist(rows)
            return pj.read_json(f, parse_options=pj.ParseOptions(newlines_in_values=False))
        except (pa.ArrowException, OSError, ValueError) as e:
            kind = "Parquet" if f.suffix.lower() == ".parquet" else "JSON Lines (one JSON object per line)"
            raise SourceError(f"local corpus {f}: cannot read it as {kind}: {type(e).__name__}: {str(e)[:300]}. "
                              f"Fix the file (is it complete? the right format for its suffix?)") from None

    def _column(self, table, f: Path, field: str | None, role: str, *, kinds: tuple[str, ...]):
        import pyarrow as pa

        if field is None:
            return None
        if field not in table.column_names:
            raise SourceError(f"local corpus {f}: missing field {field!r} (the {role} field); the file has "
                              f"{table.column_names}. Fix: add it to the rows or set prepare.local[].{role}_field")
        col = table.column(field)
        t = col.type
        ok = (("string" in kinds and (pa.types.is_string(t) or pa.types.is_large_string(t)))
              or ("int" in kinds and pa.types.is_integer(t)) or pa.types.is_null(t))
        if not ok:
            raise SourceError(f"local corpus {f}: field {field!r} (the {role} field) has type {t}, expected "
                              f"{' or '.join(kinds)}. Fix: store it as {kinds[0]} or set prepare.local[].{role}_field "
                              f"to another field")
        return col.to_pylist()

    def _read(self, f: Path) -> Iterator[Document]:
        table = self._table(f)
        texts = self._column(table, f, self.text_field, "text", kinds=("string",))
        domains = self._column(table, f, self.domain_field, "domain", kinds=("string",))
        ids = self._column(table, f, self.id_field, "id", kinds=("string", "int"))
        subs = self._column(table, f, self.sub_field, "sub", kinds=("string",))
        n = 0
        for i, (text, domain) in enumerate(zip(texts, domains)):
            if not isinstance(domain, str) or not DOMAIN_NAME.match(domain):
                raise SourceError(f"local corpus {f}: row {i}: field {self.domain_field!r} is {domain!r}; a domain "
                                  f"must be a non-empty name of letters, digits, '_', '-', '.'. Fix the data")
            text = clean_text(text or "")
            if not text.strip():
                continue
            did = f"{f.stem}:{i}" if ids is None else ids[i]
            if did is None or did == "":
                raise SourceError(f"local corpus {f}: row {i}: the id field {self.id_field!r} is empty. Fix the data "
                                  f"or drop id_field to use <file stem>:<row>")
            sub = "" if subs is None or subs[i] is None else subs[i]
            n += 1
            yield Document(id=str(did), domain=domain, sub=sub, text=text)
        log.info("local corpus %s: %d documents", f, n)
