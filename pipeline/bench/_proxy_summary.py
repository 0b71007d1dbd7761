"""The proxy benchmark's figures from its workers' results (:mod:`pipeline.bench.proxy` runs them).

``summarise``: times, speed-ups, RSS and its bound of one mixture per pass; ``summarise_multi``: M
mixtures per pass, the machine's limit for each M (from :func:`triad_gbps`, measured in the same
run), the evaluation against ``model(labels=)`` and the GEMM peak, layer streaming's memory and time.
"""

from __future__ import annotations

from typing import Any

from pipeline.bench import seconds


MULTI_M = (8, 16, 32)  # mixtures per pass measured (resident where they fit, and layer-streamed)


def triad_gbps(threads: int, numel: int = 32 << 20, reps: int = 7) -> dict:
    """The C++ extension's triad (plain and non-temporal stores) on this machine now, GB/s: the
    bandwidth the merge's limit is computed from."""
    import torch

    from pipeline.bench import interleaved_medians
    from pipeline.kernels import _ext

    torch.set_num_threads(threads)
    ops = _ext.load_ops(raise_on_error=True)
    a, b, c = (torch.rand(numel) for _ in range(3))
    secs = interleaved_medians({"plain": lambda: ops.triad_(a, b, c, 0.5, False),
                                "nt": lambda: ops.triad_(a, b, c, 0.5, True)}, reps=reps)
    gbps = {key: 3 * 4 * numel / v / 1e9 for key, v in secs.items()}
    return {"plain": round(gbps["plain"], 2), "nt": round(gbps["nt"], 2), "best": round(max(gbps.values()), 2)}


def summarise_multi(res: dict, multi: dict, *, k: int, params: int, triad: dict | None, ms: tuple[int, ...] = MULTI_M) -> dict:
    """Figures of M mixtures per pass: seconds per mixture by M (resident and layer-streamed), the
    machine's limit for each M, speed-ups at M = 8, the evaluation against ``model(labels=)`` and the
    GEMM peak, and peak RSS of layer-streamed against resident at M = 16."""
    model_bytes = 4 * params
    ev = res.get("eval_only", {})
    out: dict[str, Any] = {"triad_gbps": triad}
    per = {"1": round_or_none(res["ours"].get("s_per_mixture"))}
    split = {}
    for name, r in multi.items():
        per[name] = round_or_none(r.get("s_per_mixture")) if "error" not in r else r["error"]
        if "error" not in r:
            split[name] = {"merge": round_or_none(r.get("merge_s")), "eval": round_or_none(r.get("eval_s"))}
    out["s_per_mixture_by_m"] = per
    out["merge_eval_s_by_m"] = split
    if ev.get("eval_s") and triad:
        limits = {str(mm): ev["eval_s"] + (k / mm + 1) * model_bytes / (triad["best"] * 1e9) for mm in (1, *ms)}
        out["limit_s_by_m"] = {key: round_or_none(v) for key, v in limits.items()}
        for mm in ms:
            r = multi.get(f"resident_m{mm}", {})
            if r.get("s_per_mixture"):
                out[f"over_limit_m{mm}"] = round_or_none(r["s_per_mixture"] / limits[str(mm)])
    m8 = multi.get("resident_m8", {}).get("s_per_mixture")
    for meth in ("naive", "mergekit", "mergekit_cli"):
        if m8 and res.get(meth, {}).get("s_per_mixture"):
            out[f"speedup_vs_{meth}_m8"] = round(res[meth]["s_per_mixture"] / m8, 2)
    if ev.get("labels_s"):
        out["eval_s"] = round_or_none(ev["eval_s"])
        out["labels_s"] = round_or_none(ev["labels_s"])
        out["eval_over_labels"] = round_or_none(ev["eval_s"] / ev["labels_s"])
        out["gemm_gflops"] = round_or_none(ev["gemm_gflops"], 1)
        out["eval_gflops"] = round_or_none(ev["eval_gflop"] / ev["eval_s"], 1)
        out["eval_gemm_fraction"] = round_or_none(ev["eval_gflop"] / ev["eval_s"] / ev["gemm_gflops"])
    lay, resi = multi.get("layers_m16", {}), multi.get("resident_m16", {})
    if lay.get("peak_rss_mb") and ev.get("peak_rss_mb"):
        batch_mb = max(0.0, ev["peak_rss_mb"] - ev["baseline_rss_mb"] - model_bytes / 2**20)
        out["rss_m16_layers_mb"] = round_or_none(lay["peak_rss_mb"] - lay["baseline_rss_mb"], 0)
        out["rss_m16_resident_mb"] = round_or_none(resi["peak_rss_mb"] - resi["baseline_rss_mb"], 0) if resi.get("peak_rss_mb") else None
        out["rss_m16_bound_mb"] = round_or_none(1.3 * model_bytes / 2**20 + batch_mb, 0)
        out["rss_m16_layers_ok"] = out["rss_m16_layers_mb"] <= out["rss_m16_bound_mb"]
    if lay.get("s_per_mixture") and resi.get("s_per_mixture"):
        out["layers_over_resident_m16"] = round_or_none(lay["s_per_mixture"] / resi["s_per_mixture"])
    mapped = multi.get("resident_mapped_m16", {})
    if lay.get("s_per_mixture") and mapped.get("s_per_mixture"):
        out["layers_over_resident_mapped_m16"] = round_or_none(lay["s_per_mixture"] / mapped["s_per_mixture"])
    agree = [max(abs(a / b - 1) for a, b in zip(r["ppl"], res["ours"]["ppl"])) for r in multi.values() if r.get("ppl")]
    out["multi_max_ppl_rel_diff_vs_ours"] = float(f"{max(agree):.2e}") if agree else None
    return out


def summarise(res: dict, by_k: dict, *, k: int, m: int, params: int, quick: bool, eval_tokens: int, threads: int) -> dict:
    """The benchmark's figures from the workers' results: times, speed-ups, RSS and its bound."""
    model_mb = params * 4 / 2**20
    ours, naive, mk = res["ours"], res["naive"], res["mergekit"]
    ppl_ref = ours.get("ppl")
    agree = {meth: max(abs(a / b - 1) for a, b in zip(r["ppl"], ppl_ref)) for meth, r in res.items() if "ppl" in r and ppl_ref}
    out: dict[str, Any] = {
        "K": k, "M": m, "params_m": round(params / 1e6, 2), "model_mb": round(model_mb, 1),
        "model": "tiny random Llama" if quick else "SmolLM2-135M fp32 (shards = seed + 2% seeded noise)",
        "eval_tokens_per_mixture": eval_tokens, "threads": threads,
        "ours_s_per_mixture": round_or_none(ours.get("s_per_mixture")), "ours_merge_s": round_or_none(ours.get("merge_s")), "ours_eval_s": round_or_none(ours.get("eval_s")),
        "naive_s_per_mixture": round_or_none(naive.get("s_per_mixture")), "naive_merge_s": round_or_none(naive.get("merge_s")), "naive_eval_s": round_or_none(naive.get("eval_s")),
        "mergekit_s_per_mixture": round_or_none(mk.get("s_per_mixture")), "mergekit_merge_s": round_or_none(mk.get("merge_s")), "mergekit_eval_s": round_or_none(mk.get("eval_s")),
        "mergekit_error": mk.get("error"),
        "ours_peak_rss_mb": round_or_none(ours.get("peak_rss_mb"), 0), "naive_peak_rss_mb": round_or_none(naive.get("peak_rss_mb"), 0),
        "mergekit_peak_rss_mb": round_or_none(mk.get("peak_rss_mb"), 0), "baseline_rss_mb": round_or_none(ours.get("baseline_rss_mb"), 0),
        "ours_peak_rss_mb_by_k": {kk: round_or_none(v, 0) for kk, v in sorted(by_k.items(), key=lambda kv: int(kv[0]))},
        "max_ppl_rel_diff_vs_ours": {meth: float(f"{v:.2e}") for meth, v in agree.items()},
    }
    if ours.get("s_per_mixture"):
        for meth in ("naive", "mergekit"):
            if res[meth].get("s_per_mixture"):
                out[f"speedup_vs_{meth}"] = round(res[meth]["s_per_mixture"] / ours["s_per_mixture"], 2)
                out[f"merge_speedup_vs_{meth}"] = round(res[meth]["merge_s"] / max(ours["merge_s"], 1e-9), 1)
        # Amdahl: every method runs the same evaluation, so no merge, however fast, can beat
        # (their seconds per mixture) / (our evaluation alone) at this eval size.
        for meth in ("naive", "mergekit"):
            if res[meth].get("s_per_mixture") and ours.get("eval_s"):
                out[f"ceiling_speedup_vs_{meth}"] = round(res[meth]["s_per_mixture"] / ours["eval_s"], 2)
        out["eval_share_of_ours"] = round(ours["eval_s"] / ours["s_per_mixture"], 3)
    if "mergekit_cli" in res:
        cli = res["mergekit_cli"]
        out["mergekit_cli_s_per_mixture"] = round_or_none(cli.get("s_per_mixture"))
        if cli.get("s_per_mixture") and ours.get("s_per_mixture"):
            out["speedup_vs_mergekit_cli"] = round(cli["s_per_mixture"] / ours["s_per_mixture"], 2)
    for meth in ("safe_open", "eval_only"):
        if meth in res and "peak_rss_mb" in res[meth]:
            out[f"{meth}_merge_s"] = round_or_none(res[meth]["merge_s"])
            out[f"{meth}_peak_rss_mb"] = round_or_none(res[meth]["peak_rss_mb"], 0)
    if "eval_only" in res and "peak_rss_mb" in res["eval_only"]:
        eval_batch = res["eval_only"]["peak_rss_mb"] - res["eval_only"]["baseline_rss_mb"] - model_mb
        bound = 1.5 * model_mb + max(0.0, eval_batch)
        out["eval_batch_mb"] = round_or_none(eval_batch, 0)
        out["rss_bound_mb"] = round_or_none(bound, 0)
        out["rss_bound_ok"] = all(v is not None and v - ours["baseline_rss_mb"] <= bound for v in by_k.values())
    return out


def round_or_none(x: float | None, nd: int | None = None) -> float | None:
    """``x`` to ``nd`` decimals, or (``nd`` None: the times and ratios) to 4 significant digits
    (:func:`pipeline.bench.seconds`), so that a quick run's milliseconds do not print as 0."""
    if x is None:
        return None
    return seconds(x) if nd is None else round(x, nd)
