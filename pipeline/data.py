"""Token files and the seeded order in which training reads them.

A token file is ``<name>.bin`` (a flat array of token ids, memory-mapped) with ``<name>.json``
beside it. A :class:`Slice` is a contiguous range of one file: a whole domain, or piece i of n
equal pieces of it (a shard). Training reads a slice as non-overlapping windows of
``seq_len + 1`` tokens, in a seeded random order; when a slice has fewer windows than the token
budget asks of it, further epochs follow, each in a fresh order (the paper's upsampling of small
shards). A mixture interleaves its slices evenly by their weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common import StageError, read_json
from pipeline.config import ShardSpec

TOKENS_DIR = Path("data/tokens")


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


def shard_slice(name: str, spec: ShardSpec, tokens_dir: Path = TOKENS_DIR) -> Slice:
    f = TokenFile.open(tokens_dir / "train" / f"{spec.domain}.bin")
    n = f.tokens
    start, end = n * spec.piece // spec.of, n * (spec.piece + 1) // spec.of
    return Slice(name, f, start, end)


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
