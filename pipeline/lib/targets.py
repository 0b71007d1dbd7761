"""A recommend target as the gather stage wrote it, and its loss: the weighted log-perplexity of a model on it.

``data/targets/<target>/target.json`` names the target's domains and their weights (summing to 1);
``{dev,test}/<domain>.bin`` are token files. The loss of a model on a part is ``sum_d alpha_d x
mean NLL on domain d`` (nats per token): every domain counts by its weight, whatever its length.
:func:`loss` scores it like any evaluation (streaming, no gradient); :func:`loss_backward` also
leaves its gradient in the model's parameters (full logits: the merge gradient needs them), for the
gradient with respect to the mixture weights (:func:`pipeline.lib.adjoint.merge_grad`).
:meth:`Target.document_sums` splits a scored part's NLL by document, and :func:`document_bootstrap`
resamples those documents to say how much of a margin between models the choice of documents holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.lib.device import CPU, Placement
from pipeline.lib.outputs import read_json
from pipeline.lib.runtime import StageError
from pipeline.lib.scoring import EvalSet, evaluate
from pipeline.lib.tokens import IGNORE, TokenFile

PARTS = ("dev", "test")


@dataclass
class Target:
    name: str
    weights: dict[str, float]  # domain -> alpha (sum 1)
    sets: dict[str, list[EvalSet]]  # part -> one EvalSet per domain, in the order of ``weights``
    folder: Path | None = None

    def combine(self, per_domain: dict[str, float]) -> float:
        """``sum_d alpha_d x per_domain[d]``."""
        return float(sum(a * per_domain[d] for d, a in self.weights.items()))

    def documents(self, part: str) -> dict[str, np.ndarray]:
        """Per domain, the document of each predicted token of ``part``, in the order :func:`loss`'s
        ``per_token`` holds them (a token is predicted from its own document only)."""
        out = {}
        for d in self.weights:
            file = TokenFile.open(self.folder / part / f"{d}.bin")
            starts = file.doc_starts()
            doc_of = np.searchsorted(starts, np.arange(file.tokens), side="right") - 1
            out[d] = doc_of[1:][doc_of[1:] == doc_of[:-1]]
        return out

    def document_sums(self, part: str, per_token: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per domain, each document's summed NLL and predicted tokens, from :func:`loss`'s ``per_token``."""
        out = {}
        for d, doc in self.documents(part).items():
            if doc.size != per_token[d].size:
                raise StageError(f"{self.folder / part / d}.bin: {doc.size} predicted tokens, {per_token[d].size} scores; "
                                 f"rerun 'dvc repro gather'")
            n = int(doc.max()) + 1 if doc.size else 0
            out[d] = (np.bincount(doc, weights=per_token[d].astype(np.float64), minlength=n), np.bincount(doc, minlength=n))
        return out


def document_bootstrap(target: Target, sums: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], reference: str,
                       n_boot: int, seed: int) -> dict[str, dict[str, float]]:
    """How much of each model's margin over ``reference`` (target loss, nats) is the choice of documents.

    ``sums[model][domain]`` is :meth:`Target.document_sums` of the model on one part. The documents of
    each domain are resampled with replacement, the same draw for every model (paired), ``n_boot``
    times; per model: its margin (its loss minus the reference's), and the 2.5% and 97.5% points and
    the standard deviation of the resampled margins."""
    rng = np.random.default_rng(seed)
    models = list(sums)
    boot = np.zeros((len(models), n_boot))
    for d, alpha in target.weights.items():
        n_docs = sums[reference][d][1].size
        draw = rng.integers(0, n_docs, size=(n_boot, n_docs))
        counts = np.stack([np.bincount(row, minlength=n_docs) for row in draw]).astype(np.float64)  # [n_boot, docs]
        for i, m in enumerate(models):
            nll, tokens = sums[m][d]
            boot[i] += alpha * (counts @ nll) / (counts @ tokens)
    ref = boot[models.index(reference)]
    out = {}
    for i, m in enumerate(models):
        if m == reference:
            continue
        full = sum(alpha * sums[m][d][0].sum() / sums[m][d][1].sum() - alpha * sums[reference][d][0].sum() / sums[reference][d][1].sum()
                   for d, alpha in target.weights.items())
        diff = boot[i] - ref
        lo, hi = np.quantile(diff, [0.025, 0.975])
        out[m] = {"margin": float(full), "low": float(lo), "high": float(hi), "sd": float(diff.std(ddof=1))}
    return out


def load_target(targets_dir: Path, name: str, seq_len: int) -> Target:
    """The gather stage's files of target ``name``; StageError naming the file and the fix when absent."""
    folder = targets_dir / name
    record = read_json(folder / "target.json", f"target {name}")
    weights = {d: float(e["weight"]) for d, e in record["domains"].items()}
    if not weights:
        raise StageError(f"{folder / 'target.json'}: no domains; rerun 'dvc repro gather'")
    sets = {part: [EvalSet(d, TokenFile.open(folder / part / f"{d}.bin"), seq_len) for d in weights] for part in PARTS}
    return Target(name, weights, sets, folder)


def loss(model, target: Target, part: str, batch_size: int, place: Placement = CPU,
         per_token: dict[str, np.ndarray] | None = None) -> tuple[float, dict[str, float]]:
    """(the target loss, per-domain mean NLL) of ``model`` on ``part``; ``per_token`` receives each
    domain's per-token NLL when given."""
    scores = evaluate(model, target.sets[part], batch_size, per_token=per_token, place=place)
    per_domain = {d: s["nll"] for d, s in scores.items()}
    return target.combine(per_domain), per_domain


def loss_backward(model, target: Target, part: str, batch_size: int, place: Placement = CPU) -> float:
    """The target loss of ``model`` on ``part``, with its gradient accumulated into the parameters'
    ``.grad`` (zero them first). Same windows, positions and masks as :func:`loss`."""
    total = 0.0
    model.eval()  # no dropout; gradients flow all the same
    for e in target.sets[part]:
        alpha = target.weights[e.domain] / e.predicted
        for b in range(0, len(e.inputs), batch_size):
            sl = slice(b, b + batch_size)
            inputs, targets, positions = (place.put(t[sl]) for t in (e.inputs, e.targets, e.positions))
            with place.autocast():
                logits = model(input_ids=inputs, position_ids=positions, use_cache=False).logits
            nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                    ignore_index=IGNORE, reduction="sum")
            (alpha * nll).backward()
            total += alpha * nll.item()
    return total
