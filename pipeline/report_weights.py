"""Stage report_weights: what the weights said about the data, against the truth, as markdown and a plot.

``python -m pipeline.report_weights --infer metrics/infer.json --select metrics/select.json --out reports/from_weights``

Reads the infer and select stages' metrics and writes ``from_weights.md`` (inference: mean L1 and
membership per group, both estimates, the models flagged as not made from these shards; SELECT:
precision by method, perplexities and recovery per model) and ``from_weights.png`` (estimated
against true weights, both estimates; precision and recovery by method).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.params.core import StageParams
from pipeline.lib.outputs import atomic_dir, read_json
from pipeline.lib.runtime import exit_stage, run_stage, stage_parser

log = logging.getLogger(__name__)


class Params(StageParams):
    """report_weights reads no params: everything it reports is in its two inputs."""


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def power_line(inf: dict) -> str:
    if inf["adam_power"] == "fit":
        powers = sorted({r["adam"]["power"] for r in inf["models"].values()})
        if not powers:
            return "Adam scaling power: fitted per model with its weights (no models to infer here)."
        return (f"Adam scaling power: fitted per model with its weights, the one (0 to 0.5) that leaves the least of its update "
                f"unexplained; here {powers[0]} to {powers[-1]} (column *power*).")
    cal = inf.get("calibration")
    if not cal:
        return f"Adam scaling power: {inf['adam_power']} (set in params)."
    errs = ", ".join(f"{p}: {e:.3f}" for p, e in cal["mean_l1_by_power"].items())
    return (f"Adam scaling power: **{inf['adam_power']}**, the least mean L1 on the calibration probes "
            f"{', '.join(cal['models'])} (never judged below): {errs}.")


def infer_markdown(inf: dict) -> list[str]:
    lines = ["## Which shards made each model (infer)", "",
             f"Each model's update from the seed as a non-negative mixture of the {len(inf['shards'])} shard updates "
             f"({inf['coords']:,} coordinates). *adam*: the shard updates scaled as Adam scales them in a mixture (each "
             "shard's second moments, measured at the seed); *plain*: least squares of the raw updates (the baseline).", "",
             power_line(inf), "",
             "| models | n | mean L1 adam | mean L1 plain | max L1 adam | membership adam | membership plain | unexplained adam |",
             "|---|---|---|---|---|---|---|---|"]
    for group, s in inf["summary"].items():
        a, p = s["adam"], s["plain"]
        lines.append(f"| {group} | {a['models']} | {fmt(a['mean_l1'])} | {fmt(p['mean_l1'])} | {fmt(a['max_l1'])} | "
                     f"{fmt(a['membership'])} | {fmt(p['membership'])} | {fmt(a['mean_unexplained'])} |")
    lines += ["", "| model | true weights | estimated (adam) | power | L1 adam | L1 plain | unexplained | flagged |",
              "|---|---|---|---|---|---|---|---|"]
    for m, r in inf["models"].items():
        true = ", ".join(f"{s} {w:.2f}" for s, w in r["true"].items()) or f"(outside the pool: {r['outside_pool']:.2f})"
        est = ", ".join(f"{s} {w:.2f}" for s, w in r["adam"]["weights"].items() if w >= 0.05)
        lines.append(f"| {m} | {true} | {est} | {r['adam']['power']} | {fmt(r['adam']['l1'])} | {fmt(r['plain']['l1'])} | "
                     f"{fmt(r['adam']['unexplained'])} | {'yes' if r['flagged'] else 'no'} |")
    return lines


def select_markdown(sel: dict) -> list[str]:
    methods = list(sel["summary"]["precision"])
    lines = ["", "## Which examples made each model (select)", "",
             f"A pool of {sel['pool']['examples']} training windows ({sel['pool']['per_domain']} per domain, {len(sel['pool']['domains'])} "
             f"domains); each method picks {sel['k']}. Gradients: {sel['gradients']} ({sel['layers']} layers, sketch "
             f"{sel['sketch_per_layer'][0]} x {sel['sketch_per_layer'][1]} per layer). Precision: the share of picks from the model's "
             "own domains. Recovery: (ppl random - ppl select) / (ppl random - ppl model), the seed retrained on the picks with the "
             "model's recipe and budget, perplexity averaged over the model's own domains.", "",
             "| model | pool share | " + " | ".join(f"precision {m}" for m in methods) + " | ppl seed | ppl random | ppl select | ppl model | recovery |",
             "|---|---|" + "---|" * (len(methods) + 5)]
    for m, r in sel["models"].items():
        lines.append(f"| {m} | {fmt(r['pool_share'], 2)} | " + " | ".join(fmt(r["precision"][k], 2) for k in methods) +
                     f" | {fmt(r['ppl']['seed'], 2)} | {fmt(r['ppl']['random'], 2)} | {fmt(r['ppl']['select'], 2)} | "
                     f"{fmt(r['ppl']['model'], 2)} | {fmt(r['recovery'], 2)} |")
    s = sel["summary"]
    lines.append("| **mean** | | " + " | ".join(f"**{fmt(s['precision'][k], 2)}**" for k in methods) +
                 f" | | | | | **{fmt(s['recovery']['mean'], 2)}** |")
    return lines


def render_png(inf: dict, sel: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    ax = axes[0]
    for method, marker in (("plain", "x"), ("adam", "o")):
        xs, ys = [], []
        for r in inf["models"].values():
            if r["adam"]["l1"] is None:
                continue
            for s in inf["shards"]:
                xs.append(r["true"].get(s, 0.0))
                ys.append(r[method]["weights"][s])
        ax.scatter(xs, ys, s=14, marker=marker, alpha=0.7, label=method)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set(xlabel="true weight", ylabel="estimated weight", title="infer: shard weights from the update")
    ax.legend()
    ax = axes[1]
    methods = list(sel["summary"]["precision"])
    ax.bar(methods, [sel["summary"]["precision"][m] for m in methods], color="tab:blue")
    ax.set(ylim=(0, 1), ylabel="mean precision", title=f"select: precision by method; recovery {fmt(sel['summary']['recovery']['mean'], 2)}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(args, cfg: Params) -> None:
    inf = read_json(args.infer, "the infer stage's metrics")
    sel = read_json(args.select, "the select stage's metrics")
    text = "\n".join(["# Data from weights", "", *infer_markdown(inf), *select_markdown(sel), ""])
    with atomic_dir(args.out) as tmp:
        (tmp / "from_weights.md").write_text(text)
        render_png(inf, sel, tmp / "from_weights.png")
    log.info("report_weights: %s", args.out / "from_weights.md")


def cli(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--infer", type=Path, required=True, help="the infer stage's metrics")
    p.add_argument("--select", type=Path, required=True, help="the select stage's metrics")
    p.add_argument("--out", type=Path, required=True, help="folder for from_weights.md and from_weights.png")
    return run_stage(main, p, Params, argv)


if __name__ == "__main__":
    exit_stage(cli())
