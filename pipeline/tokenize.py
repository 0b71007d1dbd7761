"""Stage tokenize: a tokenizer and memory-mapped token files for every domain and split.

Writes ``tokenizer/`` (a Hugging Face tokenizer folder) and ``data/tokens/<split>/<domain>.bin``
with its document index and per-token byte counts beside it (:mod:`pipeline.lib.tokens` says
what each file holds). Each document is preceded by the end-of-text token, and document i of a
token file is line i of ``data/corpus/<domain>/<split>.jsonl``.

The tokenizer is a byte-level BPE trained on a sample of the training split, or the seed
model's own tokenizer when ``base.init`` is ``pretrained``. Corpora are read and tokenized with
the ``datasets`` library (arrow-backed, parallel ``map``). Eval sets are capped at
``tokenize.eval_tokens`` tokens per domain, by whole documents in the split's stable order (the
last one cut at a token boundary).

Shards are views of these files (a domain, or piece i of n equal token ranges of one): adding a
shard never changes a token file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from pipeline.params.core import StageParams
from pipeline.params.data import TokenizeConfig
from pipeline.params.model import BaseConfig
from pipeline.lib.encode import bytes_per_token
from pipeline.lib.models import load_tokenizer
from pipeline.lib.outputs import RunRecord, atomic_dirs, made_by, read_json, write_json
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.tokens import write_token_file

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
SPLITS = ("train", "base", "eval")


class Params(StageParams):
    """The params tokenize reads (of ``base``: whether the seed is pretrained, and where)."""

    tokenize: TokenizeConfig = TokenizeConfig()
    base: BaseConfig


def corpus_domains(corpus: Path) -> list[str]:
    manifest = read_json(corpus / "manifest.json", "corpus manifest")
    return sorted(manifest["domains"])


def sample_texts(corpus: Path, domains: list[str], mb_per_domain: float):
    """The first ``mb_per_domain`` MB of each domain's training split (its order is a stable hash)."""
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
    if not Path(path).is_dir():
        what = "is a file, not a model folder (a GGUF? `python -m pipeline.convert gguf FILE --out DIR`)" if Path(path).is_file() \
            else "does not exist (a relative path is relative to the folder the stage runs in: under DVC, the repository root)"
        raise StageError(f"base.pretrained_path: {path} {what}; give a Hugging Face model folder")
    tok = load_tokenizer(path)
    if not getattr(tok, "is_fast", False):
        raise StageError(f"{path}: the tokenizer has no fast (tokenizers library) version, which bits-per-byte needs for "
                         f"its offsets; save the folder with a tokenizer.json (AutoTokenizer.from_pretrained(...).save_pretrained)")
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
        enc = tokenizer(batch["text"], add_special_tokens=False, return_offsets_mapping=True)
        return {"ids": [[eot, *ids] for ids in enc["input_ids"]],
                "tbytes": [[0, *bytes_per_token(t, o)] for t, o in zip(batch["text"], enc["offset_mapping"])]}

    cols = next(iter(ds.values())).column_names
    return ds.map(encode, batched=True, batch_size=256, num_proc=num_proc, remove_columns=cols, desc="tokenize")


def main(args, cfg: Params) -> None:
    run = RunRecord("tokenize")
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
    with atomic_dirs([args.tokenizer_out, *(args.out / split for split in SPLITS)]) as (tok_tmp, *split_tmps):
        tokenizer.save_pretrained(tok_tmp)
        tok_file = tok_tmp / "tokenizer.json"
        tok_hash = hashlib.sha256(tok_file.read_bytes()).hexdigest()[:16] if tok_file.exists() else None
        write_json(tok_tmp / "shardmix.json", made_by("tokenize", origin=origin, vocab_size=vocab, tokenize=cfg.tokenize.model_dump()))
        for split, tmp in zip(SPLITS, split_tmps):
            files = {d: corpus / d / f"{split}.jsonl" for d in domains if (corpus / d / f"{split}.jsonl").stat().st_size > 0}
            if files:
                for d, meta in tokenize_files(files, split, tokenizer, dtype, cfg, tmp).items():
                    summary.setdefault(d, {})[f"{split}_tokens"] = meta["tokens"]
                    summary[d][f"{split}_bytes_per_token"] = round(meta["bytes"] / meta["tokens"], 3)
            write_json(tmp / "shardmix.json", made_by("tokenize", split=split, tokenizer_sha256=tok_hash, domains=sorted(files)))
    write_json(args.metrics, {"vocab_size": vocab, "domains": summary})
    run.write(vocab_size=vocab, tokens={d: s.get("train_tokens") for d, s in summary.items()})
    log.info("token files in %s: %s", args.out, {d: s.get("train_tokens") for d, s in summary.items()})


def tokenize_files(files: dict[str, Path], split: str, tokenizer, dtype, cfg: Params, out: Path) -> dict[str, dict]:
    """Tokenize one split's JSONL files into ``out/<domain>.bin`` (+ index); return each file's meta."""
    metas = {}
    dsd = tokenize_split(files, tokenizer, cfg.tokenize.num_proc)
    for d, ds in dsd.items():
        ids_col, bytes_col = ds["ids"], ds["tbytes"]
        docs = len(ids_col)
        if split == "eval":
            ids_col, bytes_col = cap_eval(ids_col, bytes_col, cfg.tokenize.eval_tokens)
        lengths = np.fromiter((len(ids) for ids in ids_col), dtype=np.int64, count=len(ids_col))
        flat = np.fromiter((t for ids in ids_col for t in ids), dtype=dtype, count=int(lengths.sum()))
        if flat.size < 2:
            raise StageError(f"{files[d]}: tokenizes to {flat.size} token(s); the {split} split of {d} is empty")
        tbytes = np.fromiter((b for bs in bytes_col for b in bs), dtype=np.int64, count=flat.size)
        meta = {"domain": d, "split": split, "dtype": np.dtype(dtype).name, "documents_in_split": docs,
                "vocab_size": len(tokenizer), "eos_id": tokenizer.eos_token_id}
        write_token_file(out / d, flat, np.concatenate([[0], np.cumsum(lengths)]), tbytes, meta)
        metas[d] = {"tokens": int(flat.size), "bytes": int(tbytes.sum())}
    return metas


def cap_eval(ids_col: list[list[int]], bytes_col: list[list[int]], cap: int) -> tuple[list[list[int]], list[list[int]]]:
    """Whole documents up to ``cap`` tokens; the last one cut at a token boundary."""
    ids_out, bytes_out, total = [], [], 0
    for ids, bs in zip(ids_col, bytes_col):
        room = cap - total
        if room <= 1:
            break
        ids_out.append(ids[:room])
        bytes_out.append(bs[:room])
        total += min(room, len(ids))
        if len(ids) > room:
            break
    return ids_out, bytes_out


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True, help="the prepare stage's corpus folder")
    p.add_argument("--out", type=Path, required=True, help="token files go to OUT/{train,base,eval}/")
    p.add_argument("--tokenizer-out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
