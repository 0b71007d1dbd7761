"""Text to document-aware token arrays: what tokenize and gather write into token files.

:func:`bytes_per_token` counts the UTF-8 bytes of text each token adds (bits-per-byte divides by
their sum: one way of counting bytes for every token file). :func:`encode_documents` turns a list of
documents (:func:`tokenize_documents`, then :func:`pack_documents`) into one flat array in the layout of :mod:`pipeline.lib.tokens`: each document preceded
by the end-of-text token (which adds no bytes), its start in a document index, whole documents up to
a token cap (the last one cut at a token boundary), or each document cut to a span of at most
``doc_cap`` tokens at a given place in it. :func:`even_share` is the ``doc_cap`` that spreads a token
budget over as many documents as it can serve.
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


def tokenize_documents(tokenizer, texts: Sequence[str]) -> list[tuple[str, list[int], list]]:
    """Each document as ``(text, ids, offsets)``: its token ids (no end-of-text token) and their
    character spans, for :func:`pack_documents` (its length in tokens, for :func:`even_share`)."""
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(texts, enc["input_ids"], enc["offset_mapping"]))


def pack_documents(docs: Sequence[tuple[str, list[int], list]], eot: int, cap: int | None = None, doc_cap: int | None = None,
                   span_at: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, doc_starts, token_bytes)`` of :func:`tokenize_documents`'s ``docs``: int64 ids, ``documents + 1``
    starts, per-token bytes, each document preceded by ``eot``; at most ``cap`` tokens in all.

    With ``doc_cap``, a document longer than that (its end-of-text token included) keeps a contiguous
    span of it: the span starts at fraction ``span_at[i]`` (in [0, 1)) of the positions it could start
    at, 0 (the default) being the document's first tokens."""
    ids_out, bytes_out, lengths, total = [], [], [], 0
    for i, (text, ids, offsets) in enumerate(docs):
        nbytes = bytes_per_token(text, offsets)
        if doc_cap is not None and len(ids) > doc_cap - 1:
            start = int((span_at[i] if span_at is not None else 0.0) * (len(ids) - (doc_cap - 1) + 1))
            start = min(start, len(ids) - (doc_cap - 1))
            ids, nbytes = ids[start:start + doc_cap - 1], nbytes[start:start + doc_cap - 1]
        ids, nbytes = [eot, *ids], [0, *nbytes]
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


def encode_documents(tokenizer, texts: Sequence[str], cap: int | None = None, doc_cap: int | None = None,
                     span_at: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pack_documents` of :func:`tokenize_documents`, the end-of-text token the tokenizer's."""
    return pack_documents(tokenize_documents(tokenizer, texts), tokenizer.eos_token_id, cap, doc_cap, span_at)


def even_share(lengths: Sequence[int], budget: int, least: int) -> int | None:
    """The per-document cap that spreads ``budget`` tokens evenly over documents of ``lengths``: the
    largest ``c`` with ``sum(min(length, c)) <= budget``, raised to ``least`` (then the budget serves
    fewer documents, in their order); None when every document fits whole."""
    sizes = np.sort(np.asarray(lengths, dtype=np.int64))
    if sizes.sum() <= budget:
        return None
    lo, hi = 1, int(sizes[-1])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= budget:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, least)
