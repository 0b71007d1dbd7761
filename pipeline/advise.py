"""Stage advise: every target's answer on one page, and the proxy against training over all of them.

``python -m pipeline.advise --verdicts metrics/recommend --out metrics/recommend.json --report reports/recommend.md``

Reads the confirm stage's metrics of every target in ``recommend.targets`` (``<verdicts>/<target>.json``)
and writes ``metrics/recommend.json``: per target, the answer's weights and trained test perplexity,
each rival's trained margin over it (positive: the answer is better), the noise, which rivals are the
same mixture as the answer, and whether it beats or matches each as :mod:`pipeline.lib.advice` judges
it; across targets, the merged proxy's predicted test loss against the trained one over every
distinct model the confirm stage trained, each target's taken relative to its uniform
(:func:`~pipeline.lib.advice.pooled_spearman`). ``reports/recommend.md`` is the same as the table a
researcher reads first; each target's own page (``reports/recommend/<target>.md``) has the rest.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from pipeline.params.core import StageParams
from pipeline.params.recommend import RecommendConfig
from pipeline.lib import advice
from pipeline.lib.outputs import made_by, read_json, write_json, write_text_atomic
from pipeline.lib.runtime import StageError, exit_stage, run_stage, stage_parser

log = logging.getLogger(__name__)

RIVALS = ("uniform", "natural", "best_single", "best_candidate", "mixmin", "surrogate")
MIN_MODELS = 3  # fewer distinct trained models than this give no rank correlation worth printing


class Params(StageParams):
    """advise reads the names of the targets (their figures are in the confirm stage's metrics)."""

    recommend: RecommendConfig = RecommendConfig()


def target_summary(conf: dict) -> dict:
    """One target's row: the answer, its trained test perplexity, each rival's margin and standing."""
    v, methods = conf["verdict"], conf["methods"]
    mine = methods["recommended"]["trained_as"]
    same = [n for n in RIVALS if n in methods and methods[n]["trained_as"] == mine]
    standing = {}
    for n in RIVALS:
        if n not in methods:
            continue
        margin = v["margin_over_recommended"][n]
        if n in same:
            standing[n] = "same mixture"
        elif n in v["beats"]:  # advice.MUST_BEAT: by more than twice the noise
            standing[n] = "beaten" if v["beats"][n] else "not beaten by 2x the noise"
        elif margin > v["noise"]:
            standing[n] = "beaten"
        else:  # advice's rule for the rivals the answer must match: not worse by more than the noise
            standing[n] = "within the noise" if margin >= -v["noise"] else "ahead by more than the noise"
    return {"recommended": v["recommended"], "test_ppl": math.exp(v["trained_test_logppl"]["recommended"]),
            "noise": v["noise"], "margins": {n: v["margin_over_recommended"][n] for n in standing},
            "standing": standing, "same_as_recommended": same, "worth_having": v["worth_having"],
            "proxy_vs_trained_spearman": v["proxy_vs_trained_spearman"], "trained_models": len(v["trained_models"])}


def summarise(verdicts: dict[str, dict]) -> dict:
    """Every target's row and the proxy against training pooled over all their distinct trained models."""
    models = sum(len(c["verdict"]["trained_models"]) for c in verdicts.values())
    pooled = advice.pooled_spearman([c["verdict"] for c in verdicts.values()]) if models >= MIN_MODELS else None
    return {"targets": {t: target_summary(c) for t, c in verdicts.items()},
            "proxy_vs_trained": {"spearman": pooled, "models": models}}


def markdown(summary: dict) -> str:
    lines = ["# What to train on, per target", ""]
    if not summary["targets"]:
        return "\n".join(lines + ["No targets: name them under `recommend.targets` in params.yaml.", ""])
    lines += ["Each mixture trained for real with the truth recipe and judged on the target's test part, which no stage "
              "before confirm saw. A rival's column: its trained test log-perplexity minus the answer's, in nats "
              "(positive: the answer's model is better), then how it stands. Uniform, natural and the best single shard are "
              "*beaten* by more than twice the noise or not; the others by more than the noise, *within the noise* (a "
              "match), or *ahead*; *same mixture*: the rival's weights are the answer's (trained once). Noise: the "
              "answer trained twice, two data orders.", "",
              "| target | train on | test ppl | noise | " + " | ".join(RIVALS) + " |",
              "|---|---|---|---|" + "---|" * len(RIVALS)]
    for t, s in summary["targets"].items():
        top = ", ".join(f"{sh} {w:.0%}" for sh, w in s["recommended"].items())
        cells = []
        for n in RIVALS:
            if n not in s["standing"]:
                cells.append("")
            elif n in s["same_as_recommended"]:
                cells.append("same mixture")
            else:
                cells.append(f"{s['margins'][n]:+.4f} ({s['standing'][n]})")
        lines.append(f"| [{t}](recommend/{t}.md) | {top} | {s['test_ppl']:.2f} | {s['noise']:.5f} | " + " | ".join(cells) + " |")
    pv = summary["proxy_vs_trained"]
    per = ", ".join(f"{t} {s['proxy_vs_trained_spearman']:.2f} ({s['trained_models']})" for t, s in summary["targets"].items())
    rho = "n/a" if pv["spearman"] is None else f"{pv['spearman']:.2f}"
    lines += ["", f"The merged proxy's predicted test loss against the trained one, over the {pv['models']} distinct models "
              f"trained for {len(summary['targets'])} targets (each relative to its target's uniform): Spearman **{rho}** "
              f"(per target, models in brackets: {per}).", ""]
    return "\n".join(lines)


def main(args, cfg: Params) -> None:
    verdicts = {}
    for t in cfg.recommend.targets:
        path = args.verdicts / f"{t}.json"
        if not path.exists():
            raise StageError(f"{path}: no confirm output for target {t!r} (recommend.targets): run `dvc repro confirm@{t}` first")
        conf = read_json(path, f"the confirm stage's metrics of target {t!r}")
        if "verdict" not in conf or "methods" not in conf:
            raise StageError(f"{path}: not the confirm stage's metrics (no 'verdict' or 'methods' key): rerun `dvc repro -f confirm@{t}`")
        verdicts[t] = conf
    leftover = sorted(p.stem for p in args.verdicts.glob("*.json") if p.stem not in verdicts) if args.verdicts.is_dir() else []
    if leftover:
        log.info("not in recommend.targets, left out: %s", ", ".join(leftover))
    summary = summarise(verdicts)
    summary["made_by"] = made_by("advise", targets=list(verdicts))
    write_text_atomic(args.report, markdown(summary))
    write_json(args.out, summary)
    rho = summary["proxy_vs_trained"]["spearman"]
    log.info("%d targets; proxy against training over %d models: Spearman %s", len(verdicts),
             summary["proxy_vs_trained"]["models"], "n/a" if rho is None else f"{rho:.3f}")


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--verdicts", type=Path, required=True, help="the confirm stage's metrics folder (<target>.json)")
    p.add_argument("--out", type=Path, required=True, help="the metrics JSON to write")
    p.add_argument("--report", type=Path, required=True, help="the page to write (.md)")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
