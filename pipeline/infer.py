"""Stage infer: the shard weights that made each model, estimated from its weights alone.

``python -m pipeline.infer --base models/base --shards-dir models/shards --models models/mixtures models/probes
--tokens data/tokens --out metrics/infer.json`` (your own model: ``--model path/to/model --out mine.json``)

For every model of ``infer.models`` (default: every validation mixture's truth model and every probe
of ``infer.probes``), its update from the seed is written as a non-negative mixture of the shard
updates (:mod:`pipeline.lib.mixfit`): the plain least-squares baseline, and the estimate that
models Adam's per-coordinate scaling with each shard's second moments, measured once at the seed
on ``infer.moment_batches`` training batches of the shard. Writes, per model, the true weights (its
``shardmix.json``), both estimates, the shards judged present (estimated weight at least
``infer.present``), the L1 error and membership accuracy, the unexplained share of the update and
whether it flags the model as not made from these shards (share above ``infer.max_unexplained``);
and the means over the validation truths and over the probes. The exponent of the Adam scaling
(``infer.adam_power``) is, with ``fit`` (the default), fitted per model with its weights: the one
whose fit leaves the least of its update unexplained; with ``calibrate``, the one with the least
error on the ``infer.calibration`` probes (models of known data kept apart: then never judged);
or a number.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.params.device import ModelStageParams
from pipeline.params.infer import InferConfig
from pipeline.params.mixtures import ValidationConfig
from pipeline.params.model import OptimConfig
from pipeline.params.shards import Shards
from pipeline.lib.device import placement
from pipeline.lib.mixfit import POWERS, Fit, calibrate_power, coords_of, fit_power, model_update, plain_fit, read_flat, shard_moments
from pipeline.lib.models import find_model, load_model
from pipeline.lib.outputs import RunRecord, made_by, read_json, write_json
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.tokens import shard_slice

log = logging.getLogger(__name__)


class Params(ModelStageParams):
    """The params infer reads (of ``train``: the batch shape the moments are measured with)."""

    seed: int = 0
    train: OptimConfig
    shards: Shards
    validation: ValidationConfig = ValidationConfig()
    infer: InferConfig = InferConfig()


def true_weights(model_dir: Path, names: list[str]) -> tuple[np.ndarray | None, float | None]:
    """The model's known mixture over ``names`` (from the ``shardmix.json`` of a model this pipeline
    trained) and the share of its data outside them; ``(None, None)`` for a model of unknown data."""
    path = model_dir / "shardmix.json"
    meta = read_json(path, "model record") if path.is_file() else {}
    if "shards" not in meta or "weights" not in meta:
        return None, None
    pairs = dict(zip(meta["shards"], meta["weights"]))
    w = np.array([pairs.get(s, 0.0) for s in names], dtype=np.float64)
    return w, float(1.0 - w.sum())


def judge(fit: Fit, truth: np.ndarray | None, outside: float | None, names: list[str], present: float) -> dict:
    """One estimate against the truth (when known): weights, shards judged present, L1 error and membership accuracy."""
    judged = fit.weights >= present
    exact = truth is not None and outside < 1e-9  # L1 and membership are defined when all the model's data is in the pool
    return {
        "weights": {s: round(float(w), 6) for s, w in zip(names, fit.weights)},
        "budgets": round(float(fit.coef.sum()), 4),
        "present": [s for s, j in zip(names, judged) if j],
        "l1": round(float(np.abs(fit.weights - truth).sum()), 6) if exact else None,
        "membership": round(float(np.mean(judged == (truth > 0))), 6) if exact else None,
        "unexplained": round(fit.unexplained, 6),
    }


def summary(rows: dict[str, dict], keys: list[str]) -> dict:
    """Means over ``keys`` of each estimate's L1 and membership (models with data outside the pool left out)."""
    out = {}
    for method in ("adam", "plain"):
        l1 = [rows[k][method]["l1"] for k in keys if rows[k][method]["l1"] is not None]
        mem = [rows[k][method]["membership"] for k in keys if rows[k][method]["membership"] is not None]
        out[method] = {"models": len(l1), "mean_l1": round(float(np.mean(l1)), 6) if l1 else None,
                       "max_l1": round(float(np.max(l1)), 6) if l1 else None,
                       "membership": round(float(np.mean(mem)), 6) if mem else None,
                       "all_members_right": int(sum(m == 1.0 for m in mem)),
                       "mean_unexplained": round(float(np.mean([rows[k][method]["unexplained"] for k in keys])), 6) if keys else None}
    return out


def model_folders(args, cfg: Params) -> dict[str, Path]:
    """name -> folder of each model to infer: ``--model`` folders, else ``infer.models`` (default: every
    validation truth and probe) found under ``--models``."""
    if args.model:  # a researcher's own models, of data known or not (and the calibration probes, if any)
        folders = {p.name: p for p in args.model}
        names = list(cfg.infer.calibration) if cfg.infer.adam_power == "calibrate" else []
    else:
        folders = {}
        names = cfg.infer.models if cfg.infer.models is not None else [*cfg.validation.mixtures, *cfg.infer.probes]
    for m in names:
        folders[m] = find_model(m, args.models, f"{args.params}: infer.models", "run 'dvc repro' to train it (with --model and "
                                "infer.adam_power: calibrate, give --models where the calibration probes are)")
    return folders


def kind_of(m: str, cfg: Params) -> str:
    if m in cfg.infer.calibration and cfg.infer.adam_power == "calibrate":
        return "calibration"
    return "validation" if m in cfg.validation.mixtures else "probe" if m in cfg.infer.probes else "model"


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, params=args.params)
    run = RunRecord("infer")
    ic = cfg.infer
    try:
        ic.check_names(list(cfg.shards), None, list(cfg.validation.mixtures))
    except ValueError as e:
        raise StageError(f"{args.params}: {e}") from None
    names = list(cfg.shards)
    folders = model_folders(args, cfg)
    wanted = list(folders)
    seed_model = load_model(args.base)
    coords = coords_of(args.base, [n for n, _ in seed_model.named_parameters()], ic.max_coords, cfg.seed)
    seed_flat = read_flat(args.base, coords)
    d = np.stack([model_update(args.shards_dir / s, seed_flat, coords) for s in names])
    updates = {m: model_update(folder, seed_flat, coords) for m, folder in folders.items()}  # a bad model fails before the moments
    slices = [shard_slice(s, cfg.shards[s], args.tokens) for s in names]
    v = shard_moments(seed_model, slices, ic.moment_batches, cfg.train.batch_size, cfg.train.seq_len, coords,
                      cfg.seed, place.device)
    power, errors = ic.adam_power, None
    if power == "calibrate":
        cases = [(updates[m], true_weights(folders[m], names)[0]) for m in ic.calibration]
        power, errors = calibrate_power(d, v, cases, workers=torch.get_num_threads())
        log.info("adam_power %.2f from %s (mean L1 by power: %s)", power, ic.calibration, {p: round(e, 3) for p, e in errors.items()})
    fits = fit_power(d, v, updates, POWERS if power == "fit" else [power], workers=torch.get_num_threads())  # the stage's threads
    rows = {}
    for m in wanted:
        f = updates.pop(m)
        truth, outside = true_weights(folders[m], names)
        row = {"kind": kind_of(m, cfg),
               "true": None if truth is None else {s: round(float(w), 6) for s, w in zip(names, truth) if w > 0},
               "outside_pool": None if outside is None else round(outside, 6)}
        row["adam"] = {**judge(fits[m][1], truth, outside, names, ic.present), "power": fits[m][0]}
        row["plain"] = judge(plain_fit(d, f), truth, outside, names, ic.present)
        row["flagged"] = row["adam"]["unexplained"] > ic.max_unexplained
        rows[m] = row
        log.info("%s: L1 %s (plain %s), unexplained %.3f%s", m, row["adam"]["l1"], row["plain"]["l1"], row["adam"]["unexplained"],
                 " FLAGGED: not made from these shards" if row["flagged"] else "")
    groups = {g: [m for m in rows if rows[m]["kind"] == kind and rows[m]["adam"]["l1"] is not None]
              for g, kind in (("validation", "validation"), ("probes", "probe"), ("calibration", "calibration"))}
    groups = {g: keys for g, keys in groups.items() if keys}  # e.g. no calibration group with adam_power: fit
    flags = {m: rows[m]["flagged"] for m in rows}
    out = {"shards": names, "coords": coords.size, "coords_sampled": coords.sample is not None,
           "adam_power": power, "calibration": None if errors is None else {"models": ic.calibration, "mean_l1_by_power": errors},
           "summary": {g: summary(rows, keys) for g, keys in groups.items()},
           "flagged": sorted(m for m, x in flags.items() if x),
           "models": rows,
           "made_by": made_by("infer", infer=ic.model_dump(), **place.record())}
    write_json(args.out, out)
    run.write(models=len(rows), **place.facts())
    for g, s in out["summary"].items():
        log.info("%s (%d): mean L1 %s (plain %s), membership %s (plain %s)", g, s["adam"]["models"], s["adam"]["mean_l1"],
                 s["plain"]["mean_l1"], s["adam"]["membership"], s["plain"]["membership"])


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="seed model folder")
    p.add_argument("--shards-dir", type=Path, required=True, help="folder of the shard model folders")
    p.add_argument("--models", type=Path, nargs="+", default=[], help="folders holding the model folders of infer.models, searched in order")
    p.add_argument("--model", type=Path, action="append", help="a model folder to infer instead of infer.models (repeatable): "
                   "any model fine-tuned from the seed")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the shards' training data, for the moments)")
    p.add_argument("--out", type=Path, required=True, help="the metrics JSON to write")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
