"""Stage gather: each recommend target's text, split into a dev part (the optimiser's) and a test part (the judge's).

``python -m pipeline.gather --corpus data/corpus --tokenizer tokenizer --out data/targets --metrics metrics/targets.json``
writes, for every target of ``recommend.targets``, ``data/targets/<target>/{dev,test}/<domain>.bin``
(token files as :mod:`pipeline.lib.tokens` describes them, made with the pipeline's tokenizer) and
``data/targets/<target>/target.json`` (its domains, their normalised weights, counts).

A target's text never was training data: a domain of the corpus gives its eval split; a registry
source outside ``prepare.domains`` gives its documents (``recommend.max_mb`` of them, in a stable
hash order), and a file its documents, either without any whose text the corpus holds. Each document
goes to dev or test by a hash of the target, the domain and its id (``recommend.dev_fraction``), so
no document is in both; each part holds about ``recommend.max_tokens`` tokens, shared among the
target's domains by weight (at least 1024 each). A domain's share is spread over as many of its
documents as it can serve (``recommend.min_doc_tokens``): each document gives at most an even share
of it, a contiguous span at a place in the document fixed by a hash of its id, and no document
less than ``min_doc_tokens`` (then fewer documents, in hash order), so a part judges mixtures on
many documents, not on the first few long ones (``null``: whole documents, in hash order, until the
share is full). Adding a target never changes the corpus or the tokenizer, so it retrains nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from pipeline.params.core import StageParams
from pipeline.params.data import PrepareConfig
from pipeline.params.recommend import RecommendConfig, TargetSpec
from pipeline.lib.encode import even_share, pack_documents, tokenize_documents
from pipeline.lib.models import load_tokenizer
from pipeline.lib.outputs import RunRecord, atomic_dir, made_by, read_json, write_json
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.tokens import write_token_file

log = logging.getLogger(__name__)

PARTS = ("dev", "test")
MIN_TOKENS = 1024  # per domain and part, however small its weight
FEW_DOCUMENTS = 10  # a part with fewer documents of a domain is warned about: a verdict on a handful of documents


class Params(StageParams):
    """The params gather reads (of ``prepare``: ``min_chars``, the shortest document kept)."""

    prepare: PrepareConfig
    recommend: RecommendConfig = RecommendConfig()


def unit(key: str) -> float:
    """A stable number in [0, 1) for ``key`` (salted apart from prepare's split and cap orders)."""
    return int.from_bytes(hashlib.sha1(f"target:{key}".encode()).digest()[:8], "big") / 2.0**64


def corpus_rows(corpus: Path, domain: str, split: str) -> list[dict]:
    with open(corpus / domain / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def corpus_digests(corpus: Path, domains: list[str]) -> set[bytes]:
    """sha256 of every corpus document's text (every split)."""
    out = set()
    for d in domains:
        for split in ("train", "base", "eval"):
            out |= {hashlib.sha256(r["text"].encode()).digest() for r in corpus_rows(corpus, d, split)}
    return out


def source_rows(domain: str, key: str, cfg: Params, seen: set[bytes]) -> list[dict]:
    """Documents of a registry source outside the corpus: cleaned, without corpus duplicates, capped."""
    from pipeline.sources import SOURCES, SourceError, get_source, prefetch

    if domain not in SOURCES:
        raise StageError(f"recommend.targets.{key}.domains: unknown domain {domain!r}: neither a domain of the corpus nor a "
                         f"registry source ({', '.join(sorted(SOURCES))}); fix the name or add a file target")
    cache = (Path(os.environ.get("SHARDMIX_CACHE", ".cache")) / "downloads").resolve()
    src = get_source(domain)
    try:
        prefetch([src], cache)
        src.fetch(cache)
        docs = list(src.documents(cache))
    except SourceError as e:
        raise StageError(f"recommend.targets.{key}: source {domain}: {e}") from None
    rows, budget = [], cfg.recommend.max_mb * 1e6
    for doc in sorted(docs, key=lambda d: unit(f"cap/{domain}/{d.id}")):
        text = doc.text.strip()
        digest = hashlib.sha256(text.encode()).digest()
        if len(text) < cfg.prepare.min_chars or digest in seen:
            continue
        seen.add(digest)
        rows.append({"id": doc.id, "text": text})
        budget -= len(text.encode())
        if budget <= 0:
            break
    return rows


def file_rows(spec: TargetSpec, key: str) -> list[dict]:
    """A target file's documents: JSON Lines (``text_field``), or text (documents split on blank lines); the
    file is there (:func:`main` checked every target's before building any)."""
    path = Path(spec.file)
    fix = f"recommend.targets.{key}.file"
    rows, fields = [], set()
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise StageError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8: {fix}") from None
    if path.suffix == ".jsonl":
        for i, line in enumerate(content.splitlines()):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj.get(spec.text_field)
            except (json.JSONDecodeError, AttributeError) as e:
                raise StageError(f"{path}: line {i + 1}: not a JSON object ({e}); {fix} must be JSON Lines") from None
            fields |= set(obj)
            if isinstance(text, str) and text.strip():
                rows.append({"id": f"{path.stem}:{i}", "text": text.strip()})
    else:
        rows = [{"id": f"{path.stem}:{i}", "text": t.strip()} for i, t in enumerate(content.split("\n\n")) if t.strip()]
    if len(rows) < 2:
        has = ""
        if fields and spec.text_field not in fields:
            has = f"; the file's fields are {sorted(fields)} (set recommend.targets.{key}.text_field)"
        raise StageError(f"{path}: {len(rows)} document(s) with text (field {spec.text_field!r}){has}; a target needs at least 2 "
                         f"(one for dev, one for test): {fix}")
    return rows


def split_parts(rows: list[dict], key: str, fraction: float) -> dict[str, list[dict]]:
    """Dev and test by a hash of the id; each part keeps at least one document."""
    ordered = sorted(rows, key=lambda r: unit(f"split/{key}/{r['id']}"))
    n_dev = min(len(ordered) - 1, max(1, sum(unit(f"split/{key}/{r['id']}") < fraction for r in ordered)))
    return {"dev": ordered[:n_dev], "test": ordered[n_dev:]}


def gather_target(name: str, spec: TargetSpec, cfg: Params, corpus: Path, tokenizer, seen: set[bytes], out: Path) -> dict:
    """Write one target's token files under ``out``; return its record."""
    known = sorted(read_json(corpus / "manifest.json", "corpus manifest")["domains"])
    domains = dict(spec.domains) if spec.domains is not None else {Path(spec.file).stem: 1.0}
    total = sum(domains.values())
    record: dict = {"target": name, "domains": {}}
    for domain, weight in domains.items():
        if weight == 0:
            continue
        if spec.file is not None:
            rows, origin = file_rows(spec, name), f"file {spec.file}"
            kept = [r for r in rows if hashlib.sha256(r["text"].encode()).digest() not in seen]
            if len(kept) < len(rows):
                log.warning("%s: %d document(s) of %s are corpus documents: left out (no target text is training data)",
                            name, len(rows) - len(kept), spec.file)
            rows = kept
        elif domain in known:
            rows, origin = corpus_rows(corpus, domain, "eval"), "the corpus' eval split"
        else:
            rows, origin = source_rows(domain, name, cfg, seen), "registry source (not in the corpus)"
        if len(rows) < 2:
            raise StageError(f"recommend.targets.{name}: domain {domain} has {len(rows)} document(s) left; a target needs 2 or more")
        entry = {"weight": weight / total, "origin": origin}
        cap = max(MIN_TOKENS, round(cfg.recommend.max_tokens * weight / total))  # a target's parts stay max_tokens long
        for part, docs in split_parts(rows, f"{name}/{domain}", cfg.recommend.dev_fraction).items():
            encoded, share = tokenize_documents(tokenizer, [r["text"] for r in docs]), None
            if cfg.recommend.min_doc_tokens is not None:  # each document's length with its end-of-text token
                share = even_share([len(ids) + 1 for _, ids, _ in encoded], cap, cfg.recommend.min_doc_tokens)
            ids, starts, nbytes = pack_documents(encoded, tokenizer.eos_token_id, cap, share,
                                                 [unit(f"span/{name}/{domain}/{r['id']}") for r in docs])
            (out / part).mkdir(parents=True, exist_ok=True)
            write_token_file(out / part / domain, ids.astype("uint32"), starts, nbytes,
                             {"target": name, "domain": domain, "part": part, "dtype": "uint32", "eos_id": tokenizer.eos_token_id})
            entry[part] = {"documents": len(starts) - 1, "tokens": int(ids.size), "bytes": int(nbytes.sum()),
                           "tokens_per_document": share}
        record["domains"][domain] = entry
        few = [part for part in PARTS if entry[part]["documents"] < FEW_DOCUMENTS]
        if few:
            log.warning("%s: %s gives %s document(s) to the %s part%s (%s): a verdict on it rests on a handful of "
                        "documents; a source with more documents judges more surely", name, domain,
                        " / ".join(str(entry[p]["documents"]) for p in few), " / ".join(few), "s" if len(few) > 1 else "", origin)
        log.info("%s: %s (%s, weight %.2f): dev %d tokens in %d documents, test %d tokens in %d documents", name, domain,
                 origin, entry["weight"], entry["dev"]["tokens"], entry["dev"]["documents"], entry["test"]["tokens"],
                 entry["test"]["documents"])
    write_json(out / "target.json", record)
    return record


def main(args, cfg: Params) -> None:
    run = RunRecord("gather")
    tokenizer = load_tokenizer(args.tokenizer)
    known = sorted(read_json(args.corpus / "manifest.json", "corpus manifest")["domains"])
    for name, spec in cfg.recommend.targets.items():  # before any target is built (the check stage does this under DVC)
        if (problem := spec.file_problem()) is not None:
            raise StageError(f"{args.params}: recommend.targets.{name}.file: {spec.file} {problem}; give a .jsonl or .txt "
                             f"file (relative to the repository root)")
    seen = corpus_digests(args.corpus, known)
    records = {}
    with atomic_dir(args.out) as tmp:
        for name, spec in cfg.recommend.targets.items():
            records[name] = gather_target(name, spec, cfg, args.corpus, tokenizer, seen, tmp / name)
    rc = cfg.recommend
    used = {"targets": {n: s.model_dump() for n, s in rc.targets.items()}, "dev_fraction": rc.dev_fraction,
            "max_tokens": rc.max_tokens, "min_doc_tokens": rc.min_doc_tokens, "max_mb": rc.max_mb}
    write_json(args.metrics, {"targets": records, "made_by": made_by("gather", recommend=used)})
    run.write(targets=len(records))


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True, help="the prepare stage's corpus folder")
    p.add_argument("--tokenizer", type=Path, required=True, help="the tokenize stage's tokenizer folder")
    p.add_argument("--out", type=Path, required=True, help="target token files go to OUT/<target>/{dev,test}/")
    p.add_argument("--metrics", type=Path, required=True, help="a summary of the targets (git-tracked)")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
