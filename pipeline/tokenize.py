"""Stage tokenize: a tokenizer and memory-mapped token files for every domain and split.

Writes ``tokenizer/`` (a Hugging Face tokenizer folder) and ``data/tokens/<split>/<domain>.bin``
with a ``.json`` beside each (dtype, tokens, documents, UTF-8 bytes of the text they encode).
Each document is preceded by the end-of-text token, so every token of every document is
predicted from some context and documents never run into each other.

The tokenizer is a byte-level BPE trained on a sample of the training split, or the seed
model's own tokenizer when ``base.init`` is ``pretrained``. Corpora are read and tokenized with
the ``datasets`` library (arrow-backed, parallel ``map``). Eval sets are capped at
``tokenize.eval_tokens`` tokens per domain, by whole documents in the split's stable order (the
last one cut at a token boundary, its bytes counted from the decoded text).

Shards are views of these files (a domain, or piece i of n equal token ranges of one): adding a
shard never changes a token file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from pipeline.common import StageError, atomic_dir, provenance, read_json, run_stage, stage_parser, write_json
from pipeline.config import Config
from pipeline.model import load_tokenizer

log = logging.getLogger("pipeline.tokenize")

EOT = "<|endoftext|>"
TOKENS_DIR = Path("data/tokens")
TOKENIZER_DIR = Path("tokenizer")


def corpus_domains(corpus: Path) -> list[str]:
    manifest = read_json(corpus / "manifest.json", "corpus manifest")
    return sorted(manifest["domains"])


def sample_texts(corpus: Path, domains: list[str], mb_per_domain: float):
    """The first ``mb_per_domain`` MB of each domain's training split (its order is a stable hash)."""
    import json

    for d in domains:
        budget = mb_per_domain * 1e6
        with open(corpus / d / "train.jsonl") as f:
            for line in f:
                text = json.loads(line)["text"]
                yield text
                budget -= len(text.encode())
                if budget <= 0:
                    break


def train_tokenizer(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=None)


def seed_tokenizer(path: str | Path):
    tok = load_tokenizer(path)
    if tok.eos_token_id is None:
        raise StageError(f"{path}: the tokenizer has no end-of-text token (eos_token); set one in its tokenizer_config.json")
    return tok


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


def tokenize_split(files: dict[str, Path], tokenizer, num_proc: int):
    """Tokenize the JSONL files of one split; return a datasets.DatasetDict of ids and byte counts."""
    from datasets import load_dataset

    ds = load_dataset("json", data_files={d: str(p) for d, p in files.items()}, keep_in_memory=False)
    eot = tokenizer.eos_token_id

    def encode(batch):
        enc = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"ids": [[eot, *ids] for ids in enc], "n_bytes": [len(t.encode()) for t in batch["text"]]}

    cols = next(iter(ds.values())).column_names
    return ds.map(encode, batched=True, batch_size=256, num_proc=num_proc, remove_columns=cols, desc="tokenize")


def write_tokens(path: Path, ids: np.ndarray, meta: dict) -> None:
    ids.tofile(path.with_suffix(".bin"))
    write_json(path.with_suffix(".json"), meta)


def main(args, cfg: Config) -> None:
    corpus = args.corpus
    domains = corpus_domains(corpus)
    if cfg.base.init == "pretrained":
        tokenizer = seed_tokenizer(cfg.base.pretrained_path)
        origin = f"the seed model's tokenizer ({cfg.base.pretrained_path})"
    else:
        tokenizer = train_tokenizer(sample_texts(corpus, domains, cfg.tokenize.sample_mb_per_domain), cfg.tokenize.vocab_size)
        origin = f"byte-level BPE trained on {cfg.tokenize.sample_mb_per_domain} MB of each domain's training split"
    vocab = len(tokenizer)
    dtype = token_dtype(vocab)
    log.info("tokenizer: %d tokens, %s", vocab, origin)

    summary: dict[str, dict] = {}
    with atomic_dir(args.tokenizer_out) as tok_tmp, atomic_dir(args.out) as tmp:
        tokenizer.save_pretrained(tok_tmp)
        tok_hash = hashlib.sha256((tok_tmp / "tokenizer.json").read_bytes()).hexdigest()[:16] if (tok_tmp / "tokenizer.json").exists() else None
        write_json(tok_tmp / "shardmix.json", provenance("tokenize", cfg, origin=origin, vocab_size=vocab))
        for split in ("train", "base", "eval"):
            files = {d: corpus / d / f"{split}.jsonl" for d in domains if (corpus / d / f"{split}.jsonl").stat().st_size > 0}
            if not files:
                continue
            (tmp / split).mkdir()
            dsd = tokenize_split(files, tokenizer, cfg.tokenize.num_proc)
            for d, ds in dsd.items():
                ids_col, bytes_col = ds["ids"], ds["n_bytes"]
                docs = len(ids_col)
                if split == "eval":
                    ids_col, n_bytes = cap_eval(ids_col, bytes_col, cfg.tokenize.eval_tokens, tokenizer)
                else:
                    n_bytes = int(sum(bytes_col))
                flat = np.fromiter((t for ids in ids_col for t in ids), dtype=dtype)
                if flat.size < 2:
                    raise StageError(f"{corpus / d / f'{split}.jsonl'}: tokenizes to {flat.size} token(s); the {split} split of {d} is empty")
                meta = {"domain": d, "split": split, "dtype": np.dtype(dtype).name, "tokens": int(flat.size),
                        "documents": len(ids_col), "documents_in_split": docs, "bytes": n_bytes,
                        "vocab_size": vocab, "eos_id": tokenizer.eos_token_id, "tokenizer_sha256": tok_hash}
                write_tokens(tmp / split / d, flat, meta)
                summary.setdefault(d, {})[f"{split}_tokens"] = int(flat.size)
                summary[d][f"{split}_bytes_per_token"] = round(n_bytes / flat.size, 3)
        write_json(tmp / "shardmix.json", provenance("tokenize", cfg, tokenizer=str(args.tokenizer_out), vocab_size=vocab))
    write_json(args.metrics, {"vocab_size": vocab, "domains": summary})
    log.info("token files in %s: %s", args.out, {d: s.get("train_tokens") for d, s in summary.items()})


def cap_eval(ids_col: list[list[int]], bytes_col: list[int], cap: int, tokenizer) -> tuple[list[list[int]], int]:
    """Whole documents up to ``cap`` tokens; the last one cut, with its bytes from the decoded text."""
    out, n_bytes, total = [], 0, 0
    for ids, b in zip(ids_col, bytes_col):
        room = cap - total
        if room <= 1:
            break
        if len(ids) <= room:
            out.append(ids)
            n_bytes += b
            total += len(ids)
        else:
            cut = ids[:room]
            out.append(cut)
            n_bytes += len(tokenizer.decode(cut[1:]).encode())
            total += room
            break
    return out, n_bytes


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    p.add_argument("--out", type=Path, default=TOKENS_DIR)
    p.add_argument("--tokenizer-out", type=Path, default=TOKENIZER_DIR)
    p.add_argument("--metrics", type=Path, default=Path("metrics/tokens.json"))
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
