"""Token files, their documents, and the orders in which training and evaluation read them.

A token file is ``<name>.bin`` (a flat array of token ids, memory-mapped) with three files beside it:

- ``<name>.json``: dtype, token and document counts, UTF-8 bytes of the text, tokenizer;
- ``<name>.docs.npy``: int64 offsets where each document starts, and the end (``documents + 1``);
  document i is line i of the corpus split it was made from;
- ``<name>.bytes.npy``: per token, the UTF-8 bytes of text it adds (0 for the end-of-text token
  that opens each document); they sum to the text's bytes. The one way bytes are counted for
  bits-per-byte, whatever the tokenizer.

*Training* reads a :class:`Slice` (a whole domain, or piece i of n equal pieces of it: a shard) as
non-overlapping windows of ``seq_len + 1`` tokens in a seeded random order, packed across
documents as pretraining does; when a slice has fewer windows than the token budget asks of it,
further epochs follow, each in a fresh order (the paper's upsampling of small shards). A mixture
interleaves its slices evenly by their weights.

*Evaluation* reads a file with :func:`eval_windows`: consecutive windows of ``seq_len`` inputs;
a token is predicted only from tokens of its own document (positions restart at each document
start, and a document's first token, the end-of-text marker, is never a target), so no score
depends on which document happens to precede another. :func:`eval_windows` with ``limit`` takes
"the first N predicted tokens": the one place that cut is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pipeline.lib.outputs import read_json, write_json
from pipeline.lib.runtime import StageError

if TYPE_CHECKING:  # a shard's params entry; only its domain, piece and of are read
    from pipeline.params.shards import ShardSpec

IGNORE = -100  # target index that scores nothing


@dataclass(frozen=True)
class TokenFile:
    path: Path  # the .bin
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> TokenFile:
        path = Path(path).with_suffix(".bin")
        meta = read_json(path.with_suffix(".json"), "token file metadata")
        expected = meta["tokens"] * np.dtype(meta["dtype"]).itemsize
        if not path.is_file() or path.stat().st_size != expected:
            size = path.stat().st_size if path.is_file() else "missing"
            raise StageError(f"{path}: size {size} does not match {path.with_suffix('.json')} ({expected} bytes); the token file is truncated: rerun 'dvc repro tokenize'")
        return cls(path, meta)

    @property
    def tokens(self) -> int:
        return int(self.meta["tokens"])

    def array(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.meta["dtype"], mode="r", shape=(self.tokens,))

    def _side(self, suffix: str, length: int) -> np.ndarray:
        p = self.path.with_suffix(suffix)
        try:
            a = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise StageError(f"{p}: cannot read the document index of {self.path} ({e}); rerun 'dvc repro tokenize'") from None
        if a.shape != (length,):
            raise StageError(f"{p}: {a.shape[0] if a.ndim == 1 else a.shape} entries, expected {length}; rerun 'dvc repro tokenize'")
        return a

    def doc_starts(self) -> np.ndarray:
        """Offsets where each document starts, then the end: ``documents + 1`` int64 values."""
        starts = self._side(".docs.npy", int(self.meta["documents"]) + 1)
        if starts[0] != 0 or starts[-1] != self.tokens or np.any(np.diff(starts) <= 0):
            raise StageError(f"{self.path.with_suffix('.docs.npy')}: not increasing offsets from 0 to {self.tokens}; rerun 'dvc repro tokenize'")
        return np.asarray(starts, dtype=np.int64)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each token adds (their sum is ``meta['bytes']``)."""
        return self._side(".bytes.npy", self.tokens)


def write_token_file(path: Path, ids: np.ndarray, doc_starts: np.ndarray, token_bytes: np.ndarray, meta: dict) -> None:
    """Write ``<path>.bin`` and its ``.json``, ``.docs.npy`` and ``.bytes.npy`` (into a folder the caller renames)."""
    path = Path(path)
    ids.tofile(path.with_suffix(".bin"))
    np.save(path.with_suffix(".docs.npy"), np.asarray(doc_starts, dtype=np.int64))
    np.save(path.with_suffix(".bytes.npy"), np.asarray(token_bytes, dtype=np.uint32))
    write_json(path.with_suffix(".json"), {**meta, "tokens": int(ids.size), "documents": int(len(doc_starts) - 1),
                                             "bytes": int(np.asarray(token_bytes, dtype=np.int64).sum())})


@dataclass(frozen=True)
class EvalWindows:
    """A token file cut for scoring: ``inputs``, ``targets`` (IGNORE where nothing is scored) and
    ``positions`` (restarting at each document), all ``[windows, seq_len]`` int64."""

    inputs: np.ndarray
    targets: np.ndarray
    positions: np.ndarray
    predicted: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text of the scored tokens


def eval_windows(file: TokenFile, seq_len: int, limit: int | None = None) -> EvalWindows:
    """Consecutive windows of ``seq_len`` inputs over ``file``; the first ``limit`` predicted tokens
    (all when None). Token ``j + 1`` is a target of input ``j`` when both are in one document."""
    tokens = np.asarray(file.array(), dtype=np.int64)
    starts = file.doc_starts()
    nbytes = np.asarray(file.token_bytes(), dtype=np.int64)
    n = tokens.size
    doc_of = np.searchsorted(starts, np.arange(n), side="right") - 1
    n_in = n - 1  # inputs: every token but the last
    n_win = math.ceil(n_in / seq_len)
    pad = n_win * seq_len - n_in
    inputs = np.concatenate([tokens[:-1], np.zeros(pad, np.int64)]).reshape(n_win, seq_len)
    scored = doc_of[1:] == doc_of[:-1]  # target j+1 is in the document of input j
    targets = np.where(scored, tokens[1:], IGNORE)
    if limit is not None:
        cut = np.cumsum(scored) > limit
        targets[cut] = IGNORE
        scored = scored & ~cut
    targets = np.concatenate([targets, np.full(pad, IGNORE, np.int64)]).reshape(n_win, seq_len)
    # position of input j: tokens since the later of its document's start and its window's start
    idx = np.arange(n_win * seq_len)
    win_start = idx // seq_len * seq_len
    doc_start = np.concatenate([starts[doc_of[:-1]], np.full(pad, starts[doc_of[n_in - 1]], np.int64)])
    positions = (idx - np.maximum(win_start, doc_start)).reshape(n_win, seq_len)
    keep = int(np.ceil((np.flatnonzero(scored)[-1] + 1) / seq_len)) if scored.any() else 0
    return EvalWindows(inputs[:keep], targets[:keep], positions[:keep], int(scored.sum()), int(nbytes[1:][scored].sum()))


@dataclass(frozen=True)
class Slice:
    name: str
    file: TokenFile
    start: int
    end: int

    @property
    def tokens(self) -> int:
        return self.end - self.start

    @property
    def bytes(self) -> float:
        """UTF-8 bytes of text this slice covers (proportional share of its file)."""
        return self.file.meta["bytes"] * self.tokens / self.file.tokens


def shard_slice(name: str, spec: ShardSpec, tokens_dir: Path) -> Slice:
    path = tokens_dir / "train" / f"{spec.domain}.bin"
    if not path.is_file():
        have = sorted(p.stem for p in (tokens_dir / "train").glob("*.bin"))
        raise StageError(f"shards.{name}.domain: no training tokens for domain {spec.domain!r} ({path} is missing); "
                         f"the corpus has {have}: fix the shard's domain in the params file or add the domain to prepare")
    f = TokenFile.open(path)
    return Slice(name, f, *piece_range(f.tokens, spec))


def piece_range(n: int, spec: ShardSpec) -> tuple[int, int]:
    """``[start, end)`` of shard ``spec`` in its domain's ``n`` training tokens (equal pieces)."""
    return n * spec.piece // spec.of, n * (spec.piece + 1) // spec.of


def shard_token_counts(shards: dict[str, ShardSpec], tokens_dir: Path) -> dict[str, int]:
    """Training tokens of each shard: what the ``tokens`` weighting of mixtures is proportional to."""
    return {name: shard_slice(name, spec, tokens_dir).tokens for name, spec in shards.items()}


def shard_token_counts_in(metrics: Path, shards: dict[str, ShardSpec]) -> dict[str, int]:
    """The same counts from the tokenize stage's metrics (``metrics/tokens.json``), without the token files."""
    domains = read_json(metrics, "the tokenize stage's metrics").get("domains", {})
    out = {}
    for name, spec in shards.items():
        n = domains.get(spec.domain, {}).get("train_tokens")
        if n is None:
            raise StageError(f"{metrics}: no train_tokens for domain {spec.domain!r} (shards.{name}.domain); "
                             f"rerun 'dvc repro tokenize' or fix the shard's domain in params.yaml")
        start, end = piece_range(int(n), spec)
        out[name] = end - start
    return out


def windows_in(s: Slice, seq_len: int) -> int:
    return max(0, (s.tokens - 1) // seq_len)


def window_order(s: Slice, count: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``count`` window indices of ``s``: epochs of seeded permutations. Returns (order, epochs)."""
    n = windows_in(s, seq_len)
    if n == 0:
        raise StageError(f"shard {s.name}: {s.tokens} tokens is less than one window of {seq_len + 1}; lower train.seq_len or use a larger piece")
    epochs = math.ceil(count / n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])[:count]
    return order, epochs


def mixture_schedule(slices: list[Slice], weights: list[float], total_windows: int, seq_len: int, seed: int) -> tuple[list[tuple[int, int]], dict]:
    """The training order for a mixture: ``(slice index, window index)`` pairs, evenly interleaved.

    Slice i contributes ``round(w_i * total_windows)`` windows (largest remainders make the sum
    exact); each slice's windows come in its own seeded order, and the streams are merged so that
    every stretch of the schedule holds the slices in proportion to their weights.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    raw = w * total_windows
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total_windows - counts.sum()]:
        counts[i] += 1
    rng = np.random.default_rng(seed)
    keyed, info = [], {}
    for i, (s, c) in enumerate(zip(slices, counts)):
        if c == 0:
            continue
        order, epochs = window_order(s, int(c), seq_len, rng)
        keyed.extend(((j + 0.5) / c, i, int(win)) for j, win in enumerate(order))
        info[s.name] = {"windows": int(c), "tokens": int(c) * seq_len, "epochs": epochs, "available_tokens": s.tokens}
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [(i, win) for _, i, win in keyed], info


def batches(slices: list[Slice], schedule: list[tuple[int, int]], seq_len: int, batch_size: int):
    """Yield int64 arrays ``[B, seq_len + 1]`` in schedule order (the last batch may be smaller)."""
    arrays = [s.file.array() for s in slices]
    for b in range(0, len(schedule), batch_size):
        rows = []
        for i, win in schedule[b : b + batch_size]:
            lo = slices[i].start + win * seq_len
            rows.append(np.asarray(arrays[i][lo : lo + seq_len + 1], dtype=np.int64))
        yield np.stack(rows)
