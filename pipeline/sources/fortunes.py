"""Fortune cookies: the English ``fortune`` databases of Debian's fortunes and fortunes-min packages
(``usr/share/games/fortunes/<category>``, entries separated by lines holding only ``%``;
fortunes-min adds the ``fortunes``, ``literature`` and ``riddles`` categories).

Overstrike sequences (``_\\bx``, used for underlining) are removed. Id: ``<category>/<n>`` with
``n`` the 1-based position of the entry in its file. Sub-label: the category.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, read_text
from pipeline.sources.fetch import walk_files

PACKAGES = ("fortunes", "fortunes-min")
DIR = "usr/share/games/fortunes"
_OVERSTRIKE = re.compile(r".\x08")
_SEPARATOR = re.compile(r"^%[ \t]*$", re.M)


def split_fortunes(text: str) -> list[str]:
    text = _OVERSTRIKE.sub("", text.replace("\r\n", "\n"))
    return [e.strip("\n") for e in _SEPARATOR.split(text)]


class Fortunes(Source):
    domain = "fortunes"
    packages = tuple(PackageSpec("apt", p) for p in PACKAGES)

    def parse(self, cache: Path) -> Iterator[Document]:
        for pkg in PACKAGES:
            root = self.need(self.root(cache, pkg) / DIR, pkg)
            # the databases are the files without a suffix (``.dat`` are indexes; ``.u8`` are symlinks)
            for path in walk_files(root):
                if "." in path.name:
                    continue
                for i, entry in enumerate(split_fortunes(read_text(path)), 1):
                    yield self.doc(f"{path.name}/{i}", entry, sub=path.name)
