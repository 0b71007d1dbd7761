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
from pipeline.sources.fetch import load_json, walk_files

PACKAGE = "spdx-license-list"
_FAMILY = re.compile(r"[A-Za-z]+")


def family(spdx_id: str) -> str:
    m = _FAMILY.search(spdx_id)
    return m.group(0) if m else spdx_id


class LegalSPDX(Source):
    domain = "legal_spdx"
    packages = (PackageSpec("npm", PACKAGE, "6.12.0"),)

    def parse(self, cache: Path) -> Iterator[Document]:
        licenses = self.need(self.root(cache, PACKAGE) / "package" / "licenses", PACKAGE)
        for path in walk_files(licenses, ".json"):
            rec = load_json(path, self.spec(PACKAGE), self.domain)
            if not isinstance(rec, dict) or not isinstance(rec.get("licenseText"), str):
                raise self.bad(path, PACKAGE, "expected a JSON object with a string field 'licenseText'")
            yield self.doc(path.stem, rec["licenseText"], sub=family(path.stem))
