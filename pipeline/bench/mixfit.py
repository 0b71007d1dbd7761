"""infer's Adam fit: one Levenberg-Marquardt step's normal equations, blocked vs the full Jacobian;
whole fits: infer's (side by side, in a kept heap) vs one after the other.

``python -m pipeline.bench mixfit [--quick] [--json] [--csv PATH] [-K 10] [-P 1901696] [--reps 7] [--workers N]``

Each step of :func:`pipeline.lib.mixfit.adam_fit` needs ``||r||^2``, ``J J^T`` and ``J r``. The plain
reference forms the residual and the ``[K, P]`` Jacobian (:meth:`AdamModel.residual_jacobian`) and
multiplies; :meth:`AdamModel.normal_equations` (what the fit uses) sums them over cache-sized blocks.
Synthetic shard updates and second moments of the default model's size (K = 10 shards, P = 1,901,696
coordinates), the power 0.3; medians of round-robin repetitions in one process, their ratio, and
the largest relative difference of ``J J^T``. Then the fits infer runs (:func:`fit_power`: every
power for each model's update; ``--workers`` at a time, default torch's threads, the stage's) for 4
synthetic updates at 3 powers, against its plain reference (one fit after the other, the
allocator's and BLAS's defaults), timed round-robin: their ratio, whether each update got the same
power, and the largest difference of the weights. Last line printed: one JSON object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pipeline.bench import emit, interleaved_medians, seconds
from pipeline.lib.mixfit import AdamModel, adam_fit, fit_power, nnls_weights


def shards(k: int, p: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic shard updates ``d`` and second moments ``v``, both ``[k, p]``."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, p)) * 1e-4, rng.gamma(0.5, size=(k, p)) * 1e-6


def inputs(k: int, p: int, seed: int = 0) -> tuple[AdamModel, np.ndarray, np.ndarray]:
    d, v = shards(k, p, seed)
    c = np.random.default_rng(seed + 1).uniform(0.2, 1.0, size=k)
    model = AdamModel(d, v, 0.3)
    f = model.predict(c) + np.random.default_rng(seed + 2).normal(size=int(model.keep.sum())) * 1e-4
    return model, c, f


def fits_one_by_one(d: np.ndarray, v: np.ndarray, updates: dict, powers) -> dict:
    """The plain reference of :func:`fit_power`, as infer ran it before: one fit after the other, with the
    allocator's and BLAS's defaults."""
    best: dict = {}
    for p in powers:
        model = AdamModel(d, v, p)
        for m, f in updates.items():
            fit = adam_fit(model, d, f, start=nnls_weights(d, f)[0])
            if m not in best or fit.unexplained < best[m][1].unexplained:
                best[m] = (p, fit)
    return best


def fits(k: int, p: int, reps: int, workers: int) -> dict:
    """:func:`fit_power` (``workers`` fits at a time) against its plain reference, on 4 updates made at the power 0.3."""
    d, v = shards(k, p)
    rng = np.random.default_rng(3)
    made = AdamModel(d, v, 0.3)
    updates = {i: made.predict(rng.dirichlet(np.ones(k)) * 2) + rng.normal(size=p) * 1e-4 for i in range(4)}
    powers = (0.1, 0.3, 0.5)
    out: dict[str, dict] = {}

    def reference():
        out["reference"] = fits_one_by_one(d, v, updates, powers)

    def side_by_side():
        out["fit_power"] = fit_power(d, v, updates, powers, workers=workers)

    t = interleaved_medians({"reference": reference, "fit_power": side_by_side}, reps, warmup=0)
    ref, ours = out["reference"], out["fit_power"]
    return {"fit_workers": workers, "fits": len(updates) * len(powers), "fits_reference_s": seconds(t["reference"]),
            "fits_s": seconds(t["fit_power"]), "fits_speedup": round(t["reference"] / t["fit_power"], 3),
            "fits_same_powers": all(ref[m][0] == ours[m][0] for m in updates),
            "fits_max_weight_diff": float(max(np.abs(ref[m][1].weights - ours[m][1].weights).max() for m in updates))}


def run(k: int, p: int, reps: int) -> dict:
    model, c, f = inputs(k, p)

    def reference():
        r, jac = model.residual_jacobian(c, f)
        return float(r @ r), jac @ jac.T, jac @ r

    blocked = model.normal_equations(c, f)
    ref = reference()
    rel = float(np.abs(blocked[1] - ref[1]).max() / np.abs(ref[1]).max())
    t = interleaved_medians({"reference": reference, "blocked": lambda: model.normal_equations(c, f)}, reps)
    return {"K": k, "P": p, "reps": reps, "reference_s": seconds(t["reference"]), "blocked_s": seconds(t["blocked"]),
            "speedup": round(t["reference"] / t["blocked"], 3), "jtj_max_rel_diff": rel}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench mixfit", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (P = 200,000, 3 reps)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("-K", type=int, default=10, help="shards (default 10)")
    parser.add_argument("-P", type=int, default=None, help="coordinates (default 1,901,696: the default model; quick 200,000)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7, quick 3)")
    parser.add_argument("--workers", type=int, default=None, help="fits side by side (default: torch's threads)")
    parser.add_argument("--csv", type=Path, default=None, help="also append the figures to this CSV")
    args = parser.parse_args(argv)
    p = args.P or (200_000 if args.quick else 1_901_696)
    reps = args.reps or (3 if args.quick else 7)
    workers = args.workers or torch.get_num_threads()
    emit({**run(args.K, p, reps), **fits(args.K, p, min(reps, 3), workers)}, csv_path=args.csv, table=not args.json)
    return 0
