"""infer's Adam fit: one Levenberg-Marquardt step's normal equations, blocked vs the full Jacobian.

``python -m pipeline.bench mixfit [--quick] [--json] [--csv PATH] [-K 10] [-P 1901696] [--reps 7]``

Each step of :func:`pipeline.lib.mixfit.adam_fit` needs ``||r||^2``, ``J J^T`` and ``J r``. The plain
reference forms the residual and the ``[K, P]`` Jacobian (:meth:`AdamModel.residual_jacobian`) and
multiplies; :meth:`AdamModel.normal_equations` (what the fit uses) sums them over cache-sized blocks.
Synthetic shard updates and second moments of the default model's size (K = 10 shards, P = 1,901,696
coordinates), the power 0.3; medians of round-robin repetitions in one process, their ratio, and
the largest relative difference of ``J J^T``. Last line printed: one JSON object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline.bench import emit, interleaved_medians, seconds
from pipeline.lib.mixfit import AdamModel


def inputs(k: int, p: int, seed: int = 0) -> tuple[AdamModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(k, p)) * 1e-4
    v = rng.gamma(0.5, size=(k, p)) * 1e-6
    c = rng.uniform(0.2, 1.0, size=k)
    model = AdamModel(d, v, 0.3)
    f = model.predict(c) + rng.normal(size=int(model.keep.sum())) * 1e-4
    return model, c, f


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
    parser.add_argument("--csv", type=Path, default=None, help="also append the figures to this CSV")
    args = parser.parse_args(argv)
    p = args.P or (200_000 if args.quick else 1_901_696)
    reps = args.reps or (3 if args.quick else 7)
    emit(run(args.K, p, reps), csv_path=args.csv, table=not args.json)
    return 0
