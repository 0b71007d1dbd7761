"""Stage proxy: score every candidate mixture by merging the shard models, never by training.

``python -m pipeline.proxy`` reads the ``mixtures:`` and ``validation:`` sections of params.yaml
(every validation mixture is scored too, flagged ``"validation": true``), the shard models
``models/shards/<shard>/`` and the seed ``models/base/``, and for every candidate mixture x every
eval domain writes the merged model's token perplexity and bits-per-byte; each shard model alone
and the seed are scored the same way, on the same windows, as references.

The seed, each shard alone and every mixture are weight rows over the K shards and the seed,
scored M at a time by :func:`pipeline.lib.sweep.score_all` on params ``device``: each shard tensor
is read once per group, from memory (RAM or the GPU's) when the checkpoints fit there, else from
its memory-mapped file, and the merged models are scored with the streaming cross-entropy. ``mixtures.at_once``
is M (``auto``: as many as fit in free memory); ``mixtures.stream: layers`` merges and runs one
decoder block at a time instead of whole models (:mod:`pipeline.lib.layerstream`), for models
larger than memory; the scores are the same either way (to 1e-6 relative), so neither setting is
in the metrics' provenance (both go to the run record). References are recomputed here rather than read from
``metrics/eval/``: they then use exactly the windows and code path of the mixtures (also when
``mixtures.eval_tokens`` caps the eval sets) at the cost of K + 1 extra scorings.

Outputs (both written at the end, atomically; nothing is written on error):

- ``metrics/proxy.json``: ``{"mixtures": {NAME: {"shards", "weights", "k", "validation", "eval":
  {DOMAIN: {"ppl", "bpb"}}}}, "shards": {...each shard alone...}, "seed": {"eval": ...}, "eval": {...},
  "made_by": {...}}`` (the time it took goes to ``runs/proxy/proxy.json``)
- ``plots/proxy.csv``: long format ``mixture,k,domain,ppl,bpb,bpb_vs_seed`` (seed: ``(seed)``, k=0;
  shards k=1), drawn as a mixture x domain heatmap by the ``heatmap`` DVC template
  (:data:`HEATMAP_TEMPLATE`; colour = bpb relative to the seed's on the same domain).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from pipeline.params.core import ConfigError
from pipeline.params.device import ModelStageParams
from pipeline.params.evaluation import EvalConfig
from pipeline.params.mixtures import MixturesConfig, ValidationConfig
from pipeline.params.shards import Shards
from pipeline.lib.mixtures import Mixture, resolve_mixtures, resolve_validation
from pipeline.lib.outputs import RunRecord, json_text, made_by, write_texts_atomic
from pipeline.lib.device import placement
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser
from pipeline.lib.scoring import available_eval_domains, load_eval_sets
from pipeline.lib.sweep import score_all
from pipeline.lib.tokens import shard_token_counts

log = logging.getLogger(__name__)

SEED_LABEL = "(seed)"  # cannot collide: shard and mixture names start with a letter or digit
CSV_FIELDS = ["mixture", "k", "domain", "ppl", "bpb", "bpb_vs_seed"]

# DVC plot template (save as .dvc/plots/heatmap.json): mixture (y, in file order: seed, shards,
# mixtures) x domain (x), colour = bits per byte relative to the seed's on that domain (< 1: better).
HEATMAP_TEMPLATE: dict[str, Any] = {
    "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
    "data": {"values": "<DVC_METRIC_DATA>"},
    "title": "<DVC_METRIC_TITLE>",
    "mark": {"type": "rect", "tooltip": True},
    "encoding": {
        "x": {"field": "<DVC_METRIC_X>", "type": "nominal", "title": "<DVC_METRIC_X_LABEL>"},
        "y": {"field": "<DVC_METRIC_Y>", "type": "nominal", "title": "<DVC_METRIC_Y_LABEL>", "sort": None},
        "color": {"field": "bpb_vs_seed", "type": "quantitative", "title": "bpb / seed bpb",
                  "scale": {"scheme": "redblue", "reverse": True, "domainMid": 1}},
        "tooltip": [{"field": "mixture"}, {"field": "domain"}, {"field": "ppl", "type": "quantitative"},
                    {"field": "bpb", "type": "quantitative"}, {"field": "bpb_vs_seed", "type": "quantitative"}],
    },
    "width": 400,
    "height": {"step": 12},
}


class Params(ModelStageParams):
    """The params proxy reads."""

    shards: Shards
    mixtures: MixturesConfig = MixturesConfig()
    validation: ValidationConfig = ValidationConfig()
    eval: EvalConfig = EvalConfig()


def csv_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format plot rows: the seed (k=0), each shard (k=1), then every mixture.

    ``bpb_vs_seed`` is the row's bits-per-byte over the seed's on the same domain (< 1: better).
    """
    rows = []
    seed = metrics["seed"]["eval"]
    entries = [(SEED_LABEL, 0, metrics["seed"]["eval"])]
    entries += [(s, v["k"], v["eval"]) for s, v in metrics["shards"].items()]
    entries += [(m, v["k"], v["eval"]) for m, v in metrics["mixtures"].items()]
    for name, k, ev in entries:
        for d, s in ev.items():
            rows.append({"mixture": name, "k": k, "domain": d, "ppl": s["ppl"], "bpb": s["bpb"],
                         "bpb_vs_seed": round(s["bpb"] / seed[d]["bpb"], 5)})
    return rows


def write_outputs(metrics: dict[str, Any], out_json: Path, out_csv: Path) -> None:
    """Write both files or neither."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_rows(metrics))
    write_texts_atomic({out_csv: buf.getvalue(), out_json: json_text(metrics)})


def candidates(cfg: Params, mcfg: MixturesConfig, tokens_dir: Path, params: Path) -> tuple[list[Mixture], set[str]]:
    """The candidate mixtures of ``mixtures:`` plus every validation mixture (which the report
    compares with the truth), and the names of the validation ones.

    Raises ConfigError naming the params key: unknown shard, or a validation mixture that has
    the name of a candidate but other shards or weights.
    """
    names = list(cfg.shards)
    try:
        tokens = shard_token_counts(cfg.shards, tokens_dir) if mcfg.weighting == "tokens" else None
        mixtures = resolve_mixtures(mcfg, names, tokens)
        extra = resolve_validation(cfg.validation, mcfg.weighting, names, tokens)
    except ValueError as e:
        raise ConfigError(f"{params}: {e}") from None
    by_name = {m.name: m for m in mixtures}
    for v in extra:
        have = by_name.get(v.name)
        if have is None:
            mixtures.append(v)
            by_name[v.name] = v
        elif have.shards != v.shards or any(abs(a - b) > 1e-12 for a, b in zip(have.weights, v.weights)):
            raise ConfigError(f"{params}: validation.mixtures.{v.name} has weights {list(v.weights)} but the candidate mixture "
                              f"of that name has {list(have.weights)}; give the validation mixture another name")
    return mixtures, {v.name for v in extra}


def main(args, cfg: Params) -> None:
    place = placement(cfg.threads, cfg.device, cfg.precision, params=args.params)
    run = RunRecord("proxy")
    mcfg: MixturesConfig = cfg.mixtures
    mixtures, validation = candidates(cfg, mcfg, args.tokens, args.params)
    names = list(cfg.shards)
    domains = cfg.eval.select(available_eval_domains(args.tokens))
    if not domains:
        raise StageError(f"{args.tokens / 'eval'}: no eval token files; rerun 'dvc repro tokenize'")
    sets = load_eval_sets(args.tokens, domains, cfg.eval.seq_len, limit=mcfg.eval_tokens)
    log.info("proxy: %d mixtures (%d validation) of %d shards x %d eval domains (%d tokens each at most)", len(mixtures),
             len(validation), len(names), len(sets), max(e.predicted for e in sets))
    metrics = score_all(mixtures, {s: args.shards_dir / s for s in names}, args.base, sets, cfg.eval.batch_size,
                        at_once=mcfg.at_once, stream=mcfg.stream, place=place)
    for name, entry in metrics["mixtures"].items():
        entry["validation"] = name in validation
    cost = metrics.pop("cost")
    metrics["made_by"] = made_by("proxy", mixtures=mcfg.model_dump(exclude=set(mcfg.EXECUTION)), eval=cfg.eval.model_dump(),
                                 **place.record())
    write_outputs(metrics, args.out, args.plot)
    run.write(cost=cost, **place.facts())
    log.info("proxy: %d models (%d mixtures) in %.1fs, %d at a time (%s): %.3fs merge + %.3fs eval per model; wrote %s and %s",
             cost["models_scored"], cost["mixtures"], cost["seconds"], cost["at_once"], cost["stream"],
             cost["merge_s_per_model"], cost["eval_s_per_model"], args.out, args.plot)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="seed model folder")
    p.add_argument("--shards-dir", type=Path, required=True, help="folder of the shard model folders")
    p.add_argument("--tokens", type=Path, required=True, help="token files folder (the tokenize stage's)")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    p.add_argument("--plot", type=Path, required=True, help="plot CSV to write")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
