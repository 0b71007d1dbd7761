"""Text to document-aware token arrays: what tokenize and gather write into token files.

:func:`bytes_per_token` counts the UTF-8 bytes of text each token adds (bits-per-byte divides by
their sum: one way of counting bytes for every token file). :func:`encode_documents` turns a list of
documents into one flat array in the layout of :mod:`pipeline.lib.tokens`: each document preceded
by the end-of-text token (which adds no bytes), its start in a document index, whole documents up to
a token cap (the last one cut at a token boundary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bytes_per_token(text: str, offsets: list) -> list[int]:
    """UTF-8 bytes of ``text`` each token adds: from the end of the previous token's span to the end
    of its own (a token inside a character already counted adds 0); the last token takes the rest.
    The counts sum to ``len(text.encode())`` exactly, whatever the tokenizer's offsets look like."""
    if not offsets:
        return []
    if text.isascii():
        edge = np.arange(len(text) + 1)
    else:
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        edge = np.concatenate([[0], np.cumsum(1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000))])
    ends = np.maximum.accumulate(np.clip(np.array([e for _, e in offsets], dtype=np.int64), 0, len(text)))
    byte_ends = edge[ends]
    counts = np.diff(np.concatenate([[0], byte_ends]))
    counts[-1] += edge[-1] - byte_ends[-1]
    return counts.tolist()


def encode_documents(tokenizer, texts: Sequence[str], cap: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, doc_starts, token_bytes)`` of ``texts``: int64 ids, ``documents + 1`` starts, per-token bytes."""
    eot = tokenizer.eos_token_id
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    ids_out, bytes_out, lengths, total = [], [], [], 0
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"]):
        ids, nbytes = [eot, *ids], [0, *bytes_per_token(text, offsets)]
        if cap is not None:
            room = cap - total
            if room <= 1:
                break
            ids, nbytes = ids[:room], nbytes[:room]
        ids_out.extend(ids)
        bytes_out.extend(nbytes)
        lengths.append(len(ids))
        total += len(ids)
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return np.asarray(ids_out, dtype=np.int64), starts, np.asarray(bytes_out, dtype=np.int64)
