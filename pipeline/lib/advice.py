"""What the recommend and confirm stages found, per target: the answer, how it did when trained, and whether to trust it.

:func:`summarise_target` reads the recommend stage's output (the methods' weights and the merged
proxy's predictions) and the confirm stage's figures (the same methods trained and judged on the
target's test part) and gives: the recommended weights; every method's trained test
log-perplexity and its margin over the recommended one (positive: the recommended mixture is
better), with its 95% interval over the test part's documents (the judge's noise); the noise (the
recommended mixture trained twice, two data orders); which rivals it beats
by more than twice the noise; whether the predicted gain over uniform is worth having (at least
4x the noise); the proxy's predicted against trained test loss (Spearman over the distinct trained
models); the
surrogate's held-out error and how far its optimum is from the gradient descent's. :func:`markdown` and
:func:`render_png` present it (the confirm stage writes them); :func:`pooled_spearman` puts the
targets together.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from pipeline.lib.stats import spearman

MUST_BEAT = ("uniform", "natural", "best_single")  # by more than twice the noise
NOT_WORSE_THAN = ("best_candidate", "mixmin")  # by more than the noise
WORTH = 4.0  # a predicted gain over uniform below this many noises is not an answer worth having


def summarise_target(rec: dict, conf: dict) -> dict:
    methods = conf["methods"]
    noise = conf["noise"]
    mine = methods["recommended"]["test"]
    margin = {n: m["test"] - mine for n, m in methods.items() if n != "recommended"}
    pred_gain = rec["methods"]["uniform"]["test"] - rec["methods"]["recommended"]["test"]
    distinct = [n for n, m in methods.items() if m.get("trained_as", n) == n]  # each trained model once
    qp, grad, answer = rec["methods"]["surrogate"], rec["descent"], rec["methods"]["recommended"]
    l1 = sum(abs(qp["weights"][s] - grad["weights"][s]) for s in grad["weights"])
    return {
        "recommended": {s: w for s, w in sorted(answer["weights"].items(), key=lambda kv: -kv[1]) if w >= 0.005},
        "recommended_from": answer.get("from", "descent"),
        "trained_test_logppl": {n: m["test"] for n, m in methods.items()},
        "proxy_test_logppl": {n: m["proxy_test"] for n, m in methods.items()},
        "margin_over_recommended": margin, "noise": noise,
        "margin_over_documents": {n: [d["low"], d["high"]] for n, d in conf.get("documents", {}).items()},
        "beats": {n: bool(margin[n] > 2 * noise) for n in MUST_BEAT if n in margin},
        "not_worse": {n: bool(margin[n] >= -noise) for n in NOT_WORSE_THAN if n in margin},
        "predicted_gain_over_uniform": pred_gain, "worth_having": bool(pred_gain >= WORTH * noise),
        "proxy_vs_trained_spearman": spearman([methods[n]["proxy_test"] for n in distinct], [methods[n]["test"] for n in distinct]),
        "trained_models": distinct,
        "surrogate": {**rec["surrogate"], "l1_to_descent": l1, "dev_gap": qp["dev"] - grad["dev"]},
        "cost": rec["cost"],
    }


def pooled_spearman(summaries: list[dict]) -> float:
    """Proxy against training over the models of several targets: each method's loss minus its
    target's uniform, pooled (so the targets' own levels do not count)."""
    pairs = [(s["proxy_test_logppl"][n] - s["proxy_test_logppl"]["uniform"], s["trained_test_logppl"][n] - s["trained_test_logppl"]["uniform"])
             for s in summaries for n in s["trained_models"]]
    return spearman([p for p, _ in pairs], [t for _, t in pairs])


def markdown(target: str, s: dict) -> str:
    top = ", ".join(f"{sh} {w:.0%}" for sh, w in s["recommended"].items())
    verdict = "worth having" if s["worth_having"] else f"not worth having: below {WORTH:g}x the noise"
    origin = "" if s["recommended_from"] == "descent" else (
        f" (the {s['recommended_from']} rival's mixture: it scored lower on dev than where the gradient descent stopped)")
    lines = [f"# {target}: what to train on", "", f"**To do well on {target}, train on:** {top}{origin}.", "",
             f"Predicted gain over uniform: {s['predicted_gain_over_uniform']:.5f} nats ({verdict}); noise "
             f"(the recommended mixture trained twice): {s['noise']:.5f} nats.", "",
             "| method | trained test ppl | margin over recommended (nats) | its 95% interval over the test documents | proxy predicted ppl |",
             "|---|---|---|---|---|"]
    for n, v in s["trained_test_logppl"].items():
        m = "" if n == "recommended" else f"{s['margin_over_recommended'][n]:+.5f}"
        lo_hi = s.get("margin_over_documents", {}).get(n)
        iv = "" if lo_hi is None else f"{lo_hi[0]:+.5f} to {lo_hi[1]:+.5f}"
        lines.append(f"| {n} | {math.exp(v):.3f} | {m} | {iv} | {math.exp(s['proxy_test_logppl'][n]):.3f} |")
    err = s["surrogate"]["max_abs_error"]
    lines += ["", "Beats by more than twice the noise: " + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in s["beats"].items())
              + ". Not worse than (within the noise): " + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in s["not_worse"].items()) + ".",
              "The interval is the judge's own noise: the margin again on the test part's documents drawn with replacement "
              "(an interval that holds 0: other documents of the target could have reversed it).",
              f"Proxy against training over the {len(s['trained_models'])} distinct trained models: Spearman {s['proxy_vs_trained_spearman']:.2f}. Surrogate: "
              f"held-out max error {'n/a' if err is None else f'{err:.2e}'} nats; its optimum is {s['surrogate']['l1_to_descent']:.2f} "
              f"(L1) from the gradient descent's and {s['surrogate']['dev_gap']:+.1e} nats from it on dev.",
              f"Cost: {s['cost']['merges_scored']} merges scored on dev, {s['cost']['gradient_steps']} gradient steps."]
    return "\n".join(lines) + "\n"


def render_png(target: str, s: dict, path: Path) -> None:
    """Trained test perplexity by method (the recommended one with its noise), and the recommended weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.0))
    names = list(s["trained_test_logppl"])
    ppl = [math.exp(v) for v in s["trained_test_logppl"].values()]
    mine = math.exp(s["trained_test_logppl"]["recommended"])
    left.barh(names, ppl, color=["tab:green" if n == "recommended" else "tab:gray" for n in names],
              xerr=[mine * s["noise"] if n == "recommended" else 0.0 for n in names])
    left.set_xlim(min(ppl) * 0.995, max(ppl) * 1.002)
    left.set_title(f"{target}: trained on each mixture, test perplexity", fontsize=9)
    left.tick_params(labelsize=7)
    right.bar(list(s["recommended"]), list(s["recommended"].values()), color="tab:green")
    right.set_title(f"{target}: recommended weights", fontsize=9)
    right.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")  # whole or absent, as every output
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
