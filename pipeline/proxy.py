"""Stage proxy: score every candidate mixture by merging the shard models, never by training.

``python -m pipeline.proxy`` reads the ``mixtures:`` and ``validation:`` sections of params.yaml
(every validation mixture is scored too, flagged ``"validation": true``), the shard models
``models/shards/<shard>/`` and the seed ``models/base/``, and for every candidate mixture x every
eval domain writes the merged model's token perplexity and bits-per-byte; each shard model alone
and the seed are scored the same way, on the same windows, as references.

One resident model (the seed, fp32). For each mixture, :func:`pipeline.merge.merge_into` writes the
weighted average of the memory-mapped shard tensors into its parameters in place, and
:func:`pipeline.evaluate.evaluate` scores it with the streaming cross-entropy; a shard alone is the
merge with weight 1 on that shard. References are recomputed here rather than read from
``metrics/eval/``: they then use exactly the windows and code path of the mixtures (also when
``mixtures.eval_tokens`` caps the eval sets) at the cost of K + 1 extra scorings.

Outputs (both written at the end, atomically; nothing is written on error):

- ``metrics/proxy.json``: ``{"mixtures": {NAME: {"shards", "weights", "k", "validation", "eval":
  {DOMAIN: {"ppl", "bpb"}}}}, "shards": {...each shard alone...}, "seed": {"eval": ...}, "eval": {...},
  "cost": {...}, "made_by": {...}}``
- ``plots/proxy.csv``: long format ``mixture,k,domain,ppl,bpb,bpb_vs_seed`` (seed: ``(seed)``, k=0;
  shards k=1), drawn as a mixture x domain heatmap by the ``heatmap`` DVC template
  (:data:`HEATMAP_TEMPLATE`; colour = bpb relative to the seed's on the same domain).
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.common import StageError, progress, provenance, run_stage, stage_parser
from pipeline.config import Config, ConfigError
from pipeline.merge import Mixture, MixturesConfig, load_mixtures_config, merge_many_into, resolve_mixtures, shard_token_counts
from pipeline.validation import resolve_validation

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


def cap_eval_sets(sets: list, tokens: int | None, tokenizer) -> list:
    """The first ``tokens`` predicted tokens of each eval set (all of it when ``tokens`` is None).

    Whole windows are kept and the targets past ``tokens`` are ignored (padding never changes a
    score). A capped set's byte count is that of the text its predicted tokens decode to (specials
    skipped), so bits-per-byte stays exact for the tokens scored.
    """
    from pipeline.evaluate import IGNORE

    if tokens is None:
        return sets
    out = []
    for e in sets:
        if tokens >= e.predicted:
            out.append(e)
            continue
        n = math.ceil(tokens / e.seq_len)
        c = copy.copy(e)
        c.inputs, c.targets = e.inputs[:n], e.targets[:n].clone()
        c.targets.view(-1)[tokens:] = IGNORE
        kept = c.targets[c.targets != IGNORE]
        c.predicted = int(kept.numel())
        c.bytes = len(tokenizer.decode(kept.tolist(), skip_special_tokens=True).encode())
        out.append(c)
    return out


def _scores(result: dict[str, dict]) -> dict[str, dict[str, float]]:
    return {d: {"ppl": round(s["ppl"], 4), "bpb": round(s["bpb"], 5)} for d, s in result.items()}


def score_all(mixtures: list[Mixture], shard_dirs: dict[str, Path], base: Path, sets: list, batch_size: int,
              at_once: int = 1, impl: str = "auto") -> dict[str, Any]:
    """Score the seed, each shard alone and every mixture on ``sets``; return the metrics dict.

    Opens and validates the shard pool (StageError on a bad checkpoint) before scoring anything.
    """
    from pipeline.evaluate import evaluate
    from pipeline.model import load_model
    from pipeline.pool import ShardPool

    names = list(shard_dirs)
    t_start = time.perf_counter()
    with ShardPool(shard_dirs, seed=base) as pool:
        model = load_model(base)
        bar = progress(total=1 + len(names) + len(mixtures), desc="proxy", unit="model")
        try:
            seed = _scores(evaluate(model, sets, batch_size, impl=impl))
            bar.update(1)
            shards = {}
            for k, s in enumerate(names):
                merge_many_into([model], [[float(j == k) for j in range(len(names))]], pool, impl=impl)
                shards[s] = {"shards": [s], "weights": [1.0], "k": 1, "eval": _scores(evaluate(model, sets, batch_size, impl=impl))}
                bar.update(1)
            models = [model] + [copy.deepcopy(model) for _ in range(min(at_once, len(mixtures)) - 1)]
            out, t_merge, t_eval = {}, 0.0, 0.0
            t_mix = time.perf_counter()
            for g in range(0, len(mixtures), len(models)):
                group = mixtures[g : g + len(models)]
                t0 = time.perf_counter()
                merge_many_into(models[: len(group)], [m.vector(names) for m in group], pool, impl=impl)
                t1 = time.perf_counter()
                for mix, mdl in zip(group, models):
                    out[mix.name] = {"shards": list(mix.shards), "weights": [round(w, 6) for w in mix.weights], "k": mix.k,
                                     "eval": _scores(evaluate(mdl, sets, batch_size, impl=impl))}
                    bar.update(1)
                    bar.set_postfix(mixture=mix.name[:40], refresh=False)
                t_merge, t_eval = t_merge + (t1 - t0), t_eval + (time.perf_counter() - t1)
        finally:
            bar.close()
    n = max(1, len(mixtures))
    return {
        "mixtures": out,
        "shards": shards,
        "seed": {"model": str(base), "eval": seed},
        "eval": {"domains": [e.domain for e in sets], "tokens": {e.domain: e.predicted for e in sets},
                 "bytes": {e.domain: e.bytes for e in sets}},
        "cost": {"mixtures": len(mixtures), "models_scored": 1 + len(names) + len(mixtures),
                 "merge_s_per_mixture": round(t_merge / n, 4), "eval_s_per_mixture": round(t_eval / n, 4),
                 "s_per_mixture": round((time.perf_counter() - t_mix) / n, 4),
                 "seconds": round(time.perf_counter() - t_start, 2)},
    }


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
    """Write both files or neither: each goes to a temporary sibling, then both are renamed."""
    import json

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_rows(metrics))
    tmps = []
    try:
        for path, text in ((out_csv, buf.getvalue()), (out_json, json.dumps(metrics, indent=2) + "\n")):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
            tmps.append((Path(tmp), path))
            with os.fdopen(fd, "w") as f:
                f.write(text)
        for tmp, path in tmps:
            if path.is_symlink():  # a DVC cache link: replace the link, never write through it
                path.unlink()
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


def candidates(cfg: Config, mcfg: MixturesConfig, tokens_dir: Path, params: Path) -> tuple[list[Mixture], set[str]]:
    """The candidate mixtures of ``mixtures:`` plus every validation mixture (which the report
    compares with the truth), and the names of the validation ones.

    Raises ConfigError naming the params key: unknown shard, or a validation mixture that has
    the name of a candidate but other shards or weights.
    """
    names = list(cfg.shards)
    try:
        tokens = shard_token_counts(cfg.shards, tokens_dir) if mcfg.weighting == "tokens" else None
        mixtures = resolve_mixtures(mcfg, names, tokens)
        extra = resolve_validation(cfg.validation, mcfg, names, tokens)
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


def main(args, cfg: Config) -> None:
    from pipeline.evaluate import available_eval_domains, load_eval_sets
    from pipeline.model import load_tokenizer

    mcfg: MixturesConfig = load_mixtures_config(cfg.mixtures, str(args.params))
    mixtures, validation = candidates(cfg, mcfg, args.tokens, args.params)
    names = list(cfg.shards)
    domains = cfg.eval_domains(available_eval_domains(args.tokens))
    if not domains:
        raise StageError(f"{args.tokens / 'eval'}: no eval token files; rerun 'dvc repro tokenize'")
    sets = load_eval_sets(args.tokens, domains, cfg.eval.seq_len)
    if mcfg.eval_tokens is not None:
        sets = cap_eval_sets(sets, mcfg.eval_tokens, load_tokenizer(args.base))
    log.info("proxy: %d mixtures (%d validation) of %d shards x %d eval domains (%d tokens each at most)", len(mixtures),
             len(validation), len(names), len(sets), max(e.predicted for e in sets))
    metrics = score_all(mixtures, {s: args.shards_dir / s for s in names}, args.base, sets, cfg.eval.batch_size,
                        at_once=mcfg.at_once)
    for name, entry in metrics["mixtures"].items():
        entry["validation"] = name in validation
    metrics["made_by"] = provenance("proxy", cfg, mixtures=mcfg.model_dump(), eval=cfg.eval.model_dump())
    write_outputs(metrics, args.out, args.plot)
    c = metrics["cost"]
    log.info("proxy: %d mixtures in %.1fs (%.3fs merge + %.3fs eval per mixture); wrote %s and %s", c["mixtures"],
             c["seconds"], c["merge_s_per_mixture"], c["eval_s_per_mixture"], args.out, args.plot)


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=Path("models/base"), help="seed model folder (default: %(default)s)")
    p.add_argument("--shards-dir", type=Path, default=Path("models/shards"), help="shard model folders (default: %(default)s)")
    p.add_argument("--tokens", type=Path, default=Path("data/tokens"))
    p.add_argument("--out", type=Path, default=Path("metrics/proxy.json"))
    p.add_argument("--plot", type=Path, default=Path("plots/proxy.csv"))
    return run_stage(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
