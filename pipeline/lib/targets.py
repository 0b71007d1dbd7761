"""A recommend target as the gather stage wrote it, and its loss: the weighted log-perplexity of a model on it.

``data/targets/<target>/target.json`` names the target's domains and their weights (summing to 1);
``{dev,test}/<domain>.bin`` are token files. The loss of a model on a part is ``sum_d alpha_d x
mean NLL on domain d`` (nats per token): every domain counts by its weight, whatever its length.
:func:`loss` scores it like any evaluation (streaming, no gradient); :func:`loss_backward` also
leaves its gradient in the model's parameters (full logits: the merge gradient needs them), for the
gradient with respect to the mixture weights (:func:`pipeline.lib.adjoint.merge_grad`).
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

    def combine(self, per_domain: dict[str, float]) -> float:
        """``sum_d alpha_d x per_domain[d]``."""
        return float(sum(a * per_domain[d] for d, a in self.weights.items()))


def load_target(targets_dir: Path, name: str, seq_len: int) -> Target:
    """The gather stage's files of target ``name``; StageError naming the file and the fix when absent."""
    folder = targets_dir / name
    record = read_json(folder / "target.json", f"target {name}")
    weights = {d: float(e["weight"]) for d, e in record["domains"].items()}
    if not weights:
        raise StageError(f"{folder / 'target.json'}: no domains; rerun 'dvc repro gather'")
    sets = {part: [EvalSet(d, TokenFile.open(folder / part / f"{d}.bin"), seq_len) for d in weights] for part in PARTS}
    return Target(name, weights, sets)


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
