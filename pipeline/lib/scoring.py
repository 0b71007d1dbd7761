"""Streaming perplexity and bits-per-byte of a causal LM over eval sets.

An :class:`EvalSet` is one domain's eval token file cut once by
:func:`pipeline.lib.tokens.eval_windows` (consecutive windows; every token predicted from its own
document only; optionally just the first N predicted tokens) and reused for every model. Padding
is ignored and causal attention keeps it from touching real positions, so batch size never
changes a score. The model's backbone gives hidden states and the streaming cross-entropy kernel
scores them against the output embedding without materialising the ``[tokens, vocab]`` logits;
sums are fp64.

Token perplexity = exp(total nats / predicted tokens); bits-per-byte = total nats / (ln 2 x UTF-8
bytes of the text of the predicted tokens), comparable across tokenizers.

Batches go to the device the model is on; under ``bf16-mixed`` (a
:class:`~pipeline.lib.device.Placement`) the backbone runs under autocast and the cross-entropy
still takes fp32 math with fp64 sums.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline.kernels import linear_cross_entropy
from pipeline.lib.device import CPU, Placement
from pipeline.lib.heap import kept_heap
from pipeline.lib.runtime import progress
from pipeline.lib.tokens import IGNORE, TokenFile, eval_windows


class EvalSet:
    """One domain's eval windows (``inputs``, ``targets``, ``positions``: ``[windows, seq_len]``)."""

    def __init__(self, domain: str, file: TokenFile, seq_len: int, limit: int | None = None):
        w = eval_windows(file, seq_len, limit)
        self.domain, self.seq_len = domain, seq_len
        self.inputs = torch.from_numpy(w.inputs)
        self.targets = torch.from_numpy(w.targets)
        self.positions = torch.from_numpy(w.positions)
        self.predicted, self.bytes = w.predicted, w.bytes


def load_eval_sets(tokens_dir: Path, domains: list[str], seq_len: int, limit: int | None = None) -> list[EvalSet]:
    """The eval sets of ``domains``: the first ``limit`` predicted tokens of each (all when None)."""
    return [EvalSet(d, TokenFile.open(tokens_dir / "eval" / f"{d}.bin"), seq_len, limit) for d in domains]


def available_eval_domains(tokens_dir: Path) -> list[str]:
    return sorted(p.stem for p in (tokens_dir / "eval").glob("*.bin"))


def streaming_supported(model) -> bool:
    """True when logits are exactly ``hidden @ W.T (+ b)``; models that scale or cap logits are not."""
    cfg = model.config
    head = model.get_output_embeddings()
    special = any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return isinstance(head, torch.nn.Linear) and not special


@torch.no_grad()
def nll_batch(model, inputs: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor | None = None,
              impl: str = "auto", place: Placement = CPU) -> tuple[float, torch.Tensor]:
    """fp64 sum of NLL and the per-token NLL (float32, predicted positions only, in order, on the
    model's device) of one batch.

    ``positions`` that restart inside a window make the model attend within each document only
    (transformers reads restarting ``position_ids`` as packed sequences and masks across them).
    """
    inputs, targets = place.put(inputs), place.put(targets)
    positions = None if positions is None else place.put(positions)
    flat_targets = targets.reshape(-1)
    mask = flat_targets != IGNORE
    kw = {"input_ids": inputs, "use_cache": False}
    if positions is not None:
        kw["position_ids"] = positions
    if impl == "logits" or not streaming_supported(model):
        with place.autocast():
            logits = model(**kw).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), flat_targets, ignore_index=IGNORE, reduction="none")
        return float(nll[mask].double().sum()), nll[mask]
    with place.autocast():
        hidden = model.base_model(**kw).last_hidden_state
    head = model.get_output_embeddings()
    res = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight, flat_targets, head.bias, ignore_index=IGNORE, impl=impl)
    return res.total, res.nll[mask]


@torch.no_grad()
@kept_heap()
def evaluate(model, eval_sets: list[EvalSet], batch_size: int, impl: str = "auto", desc: str | None = None,
             per_token: dict[str, np.ndarray] | None = None, place: Placement = CPU) -> dict[str, dict]:
    """Perplexity and bits-per-byte of ``model`` (already on ``place.device``) on each eval set.

    When ``per_token`` is a dict, it receives each domain's per-token NLL (float32, in token
    order): what an output-space ensemble of models needs, since it only mixes the probabilities
    of the targets.
    """
    model.eval()
    nats, parts = [0.0] * len(eval_sets), [[] for _ in eval_sets]
    total_windows = sum(len(e.inputs) for e in eval_sets)
    bar = progress(total=total_windows, desc=desc, unit="win", leave=False) if desc else None
    for i, sl in batches(eval_sets, batch_size):
        e = eval_sets[i]
        s, nll = nll_batch(model, e.inputs[sl], e.targets[sl], e.positions[sl], impl, place)
        nats[i] += s
        parts[i].append(nll)
        if bar is not None:
            bar.update(len(e.inputs[sl]))
    if bar is not None:
        bar.close()
    out = {}
    for e, total, pieces in zip(eval_sets, nats, parts):
        count = sum(p.numel() for p in pieces)
        assert count == e.predicted, (count, e.predicted)
        if per_token is not None:
            per_token[e.domain] = torch.cat(pieces).cpu().numpy().astype(np.float32)
        out[e.domain] = domain_scores(e, total, count)
    return out


def domain_scores(e: EvalSet, nats: float, count: int) -> dict:
    """Perplexity, bits-per-byte and mean NLL from a domain's fp64 NLL sum over ``count`` tokens."""
    return {"ppl": math.exp(nats / count), "bpb": nats / (math.log(2) * e.bytes), "nll": nats / count,
            "tokens": count, "bytes": e.bytes}


def batches(eval_sets: list[EvalSet], batch_size: int) -> list[tuple[int, slice]]:
    """``(set index, window slice)`` of every batch, in the order :func:`evaluate` scores them."""
    return [(i, slice(b, b + batch_size)) for i, e in enumerate(eval_sets) for b in range(0, len(e.inputs), batch_size)]
