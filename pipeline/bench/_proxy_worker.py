"""One method of the proxy benchmark, run in a fresh interpreter so that its peak RSS is its own.

``python -m pipeline.bench._proxy_worker METHOD SPEC_JSON`` prints one JSON object: seconds per
mixture (merge and evaluation apart), perplexities, peak RSS and, on a GPU, peak device memory.
:mod:`pipeline.bench.proxy` starts it once per method (``run_worker``); the methods are described
there. ``spec["device"]`` (default cpu) is where models live; on a GPU the timings wait for the
device, and ``ours`` keeps the shards resident in device memory when they fit, as the proxy stage does.
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _status_mb(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, MiB. Unlike ``ru_maxrss``, VmHWM is
    reset by exec, so a worker does not inherit its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _place(spec: dict):
    import torch

    from pipeline.lib.device import Placement

    return Placement(torch.device(spec.get("device", "cpu")))


def _eval_set(spec: dict):
    from pipeline.lib.scoring import EvalSet
    from pipeline.lib.tokens import TokenFile

    return EvalSet("bench", TokenFile.open(spec["tokens"]), spec["seq_len"])


def _full_logits_nll(model, eset, batch: int, device) -> tuple[float, int]:
    """Sum of NLL and token count via ``model(input_ids, labels=...)`` on the eval set's windows."""
    import torch

    windows = torch.cat([eset.inputs, eset.targets[:, -1:]], dim=1).to(device)  # L + 1 tokens: predicts the same L targets
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(windows), batch):
            x = windows[b : b + batch]
            loss = model(input_ids=x, labels=x).loss
            n = x.shape[0] * (x.shape[1] - 1)
            total, count = total + float(loss) * n, count + n
    return total, count


def worker(method: str, spec: dict) -> dict:
    """Score ``spec['mixtures']`` with one method; return per-mixture seconds, ppl and peak RSS."""
    import torch
    import transformers  # noqa: F401  (imported before the baseline is taken)

    from pipeline.kernels import available_impls

    torch.set_num_threads(spec["threads"])
    available_impls()  # load the C++ extension before measuring
    eset = _eval_set(spec)
    baseline = _status_mb("VmRSS")
    extra: dict = {}
    if method == "ours" and spec.get("stream") == "layers":
        rows = _layers(spec, eset)
    elif method in ("ours", "safe_open"):
        rows = _resident(method, spec, eset)
    elif method == "eval_only":
        rows, extra = _eval_only(spec, eset)
    elif method in ("naive", "mergekit", "mergekit_cli"):
        rows = _fresh_model(method, spec, eset)
    else:
        raise ValueError(f"unknown method {method!r}")
    times, merge_s, eval_s, ppl = zip(*rows)
    med = statistics.median
    out = {"method": method, "s_per_mixture": med(times), "merge_s": med(merge_s), "eval_s": med(eval_s),
           "all_s": list(times), "ppl": list(ppl), "peak_rss_mb": _status_mb("VmHWM"), "baseline_rss_mb": baseline,
           "at_once": spec.get("at_once", 1), "stream": spec.get("stream", "resident"),
           "shards_resident": spec.get("shards_resident", False), **extra}
    if torch.cuda.is_available() and spec.get("device", "cpu") != "cpu":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _resident(method: str, spec: dict, eset) -> list[tuple[float, float, float, float]]:
    """(total, merge, eval seconds, ppl) per mixture with resident models merged in place: M =
    ``spec["at_once"]`` models merged per pass (a group's times shared by its mixtures)."""
    import copy

    from pipeline.lib.merging import merge_into, merge_many_into
    from pipeline.lib.models import load_model, model_bytes
    from pipeline.lib.pool import ShardPool
    from pipeline.lib.scoring import evaluate

    place = _place(spec)
    seed, shards = Path(spec["seed"]), [Path(s) for s in spec["shards"]]
    model = load_model(seed).to(place.device)
    pool = ShardPool({p.name: p for p in shards}, seed=seed)
    m = spec.get("at_once", 1)
    # the proxy stage's policy (shards held in memory where they fit), unless told to read and drop the files
    spec["shards_resident"] = method == "ours" and spec.get("read") != "mapped" and pool.hold(place.device, also=2 * model_bytes(model))
    models = [model] + [copy.deepcopy(model) for _ in range(m - 1)]
    if m > 1:  # one group is all there is to time: warm the merge and the evaluation first (the median does it for M = 1)
        first = spec["mixtures"][:m]
        merge_many_into(models[: len(first)], first, pool)
        evaluate(model, [eset], spec["batch"], place=place)
    rows = []
    for g in range(0, len(spec["mixtures"]), m):
        group = spec["mixtures"][g : g + m]
        t0 = time.perf_counter()
        if method == "ours":
            merge_many_into(models[: len(group)], group, pool) if m > 1 else merge_into(model, group[0], pool)
        else:
            _merge_safe_open(model, group[0], shards)
        place.sync()
        t1 = time.perf_counter()
        ppl = [evaluate(mdl, [eset], spec["batch"], place=place)["bench"]["ppl"] for mdl in models[: len(group)]]
        t2 = time.perf_counter()
        n = len(group)
        rows += [((t2 - t0) / n, (t1 - t0) / n, (t2 - t1) / n, x) for x in ppl]
    return rows


def _layers(spec: dict, eset) -> list[tuple[float, float, float, float]]:
    """The same with :class:`pipeline.lib.layerstream.LayerStream` (M = ``spec["at_once"]`` mixtures per group)."""
    from pipeline.lib.layerstream import LayerStream
    from pipeline.lib.pool import ShardPool

    place = _place(spec)
    seed, shards = Path(spec["seed"]), [Path(s) for s in spec["shards"]]
    pool = ShardPool({p.name: p for p in shards}, seed=seed)
    m = spec.get("at_once", 1)
    stream = LayerStream(seed, pool, m, place)
    stream.score(spec["mixtures"][:1], [eset], spec["batch"])  # warm-up, untimed (see _resident)
    rows = []
    for g in range(0, len(spec["mixtures"]), m):
        group = spec["mixtures"][g : g + m]
        before = dict(stream.seconds)
        t0 = time.perf_counter()
        scores = stream.score(group, [eset], spec["batch"])
        t = time.perf_counter() - t0
        n = len(group)
        merge = (stream.seconds["merge"] - before["merge"]) / n
        rows += [(t / n, merge, t / n - merge, sc["bench"]["ppl"]) for sc in scores]
    return rows


def _eval_only(spec: dict, eset) -> tuple[list[tuple[float, float, float, float]], dict]:
    """The seed evaluated with no merging, once per mixture, and on the same windows and model, timed
    round-robin with it: ``model(labels=)`` (full logits) and the GEMM peak of this machine
    (``[tokens, hidden] x [hidden, intermediate]``, the shape of the model's largest matmuls)."""
    import torch

    from pipeline.lib.models import count_params, load_model
    from pipeline.lib.scoring import evaluate

    place = _place(spec)
    model = load_model(Path(spec["seed"])).to(place.device)
    cfg = model.config
    tokens = eset.inputs.numel()
    a = torch.randn(tokens, cfg.hidden_size, device=place.device)
    b = torch.randn(cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size), device=place.device)
    rows, labels, gemm = [], [], []
    for _ in spec["mixtures"]:
        t0 = time.perf_counter()
        ppl = evaluate(model, [eset], spec["batch"], place=place)["bench"]["ppl"]
        place.sync()
        t1 = time.perf_counter()
        _full_logits_nll(model, eset, spec["batch"], place.device)
        place.sync()
        t2 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        place.sync()
        t3 = time.perf_counter()
        rows.append((t1 - t0, 0.0, t1 - t0, ppl))
        labels.append(t2 - t1)
        gemm.append(2 * a.shape[0] * a.shape[1] * b.shape[1] * 5 / (t3 - t2) / 1e9)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    params = count_params(model)
    # forward FLOPs: 2 per weight per token, the head's [vocab, hidden] product included (tied or not),
    # the input embedding a lookup; attention scores and values: 4 x seq x hidden per layer and token
    flops = 2 * tokens * (params - embed.numel() + head.numel()) + 4 * tokens * eset.seq_len * cfg.hidden_size * cfg.num_hidden_layers
    return rows, {"labels_s": statistics.median(labels), "gemm_gflops": statistics.median(gemm), "eval_gflop": flops / 1e9}


def _fresh_model(method: str, spec: dict, eset) -> list[tuple[float, float, float, float]]:
    """The same per mixture for the baselines: a merged state dict (or mergekit's folder) loaded
    into a fresh model, evaluated with full logits."""
    import math

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    place = _place(spec)
    seed, shards = Path(spec["seed"]), [Path(s) for s in spec["shards"]]
    config = AutoConfig.from_pretrained(seed)
    rows = []
    for i, w in enumerate(spec["mixtures"]):
        t0 = time.perf_counter()
        if method == "naive":
            sds = [load_file(p / "model.safetensors", device=str(place.device)) for p in shards]
            avg = {n: sum(wk * sd[n] for wk, sd in zip(w, sds)) for n in sds[0]}
            del sds
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(place.device)
            model.load_state_dict(avg, strict=False)
            model.tie_weights()
            del avg
        else:
            out = Path(spec["scratch"]) / f"mergekit-{i}"
            _mergekit_linear(shards, w, out, cli=method == "mergekit_cli", cuda=place.device.type == "cuda")
            model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(place.device)
            shutil.rmtree(out, ignore_errors=True)
        model.eval()
        place.sync()
        t1 = time.perf_counter()
        total, count = _full_logits_nll(model, eset, spec["batch"], place.device)
        t2 = time.perf_counter()
        del model
        rows.append((t2 - t0, t1 - t0, t2 - t1, math.exp(total / count)))
    return rows


def _merge_safe_open(model, weights: list[float], shards: list[Path]) -> None:
    """Ours with safetensors' own reader: each tensor copied out of each file (onto the model's
    device), then the fused sum."""
    import torch
    from safetensors import safe_open

    from pipeline.kernels import weighted_sum

    device = str(next(model.parameters()).device)
    handles = [safe_open(str(p / "model.safetensors"), framework="pt", device=device) for p in shards]
    stored = set(handles[0].keys())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in stored:
                weighted_sum([h.get_tensor(name) for h in handles], weights, p.data)


def _mergekit_linear(shards: list[Path], weights: list[float], out: Path, cli: bool = False, cuda: bool = False) -> None:
    """mergekit's linear merge of ``shards`` written to ``out``: in-process (``run_merge``) or, as
    its documentation runs it, with the ``mergekit-yaml`` command (a fresh process per merge)."""
    config = {"merge_method": "linear", "dtype": "float32", "parameters": {"normalize": True},
              "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(shards, weights) if w]}
    if cli:
        import yaml

        out.parent.mkdir(parents=True, exist_ok=True)
        cfg_file = out.with_suffix(".yml")
        cfg_file.write_text(yaml.safe_dump(config))
        exe = Path(sys.executable).with_name("mergekit-yaml")
        subprocess.run([str(exe), str(cfg_file), str(out), "--no-copy-tokenizer", "--no-write-model-card", "--quiet",
                        *(["--cuda"] if cuda else [])], check=True, capture_output=True)
        return
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(config), str(out),
              MergeOptions(copy_tokenizer=False, quiet=True, write_model_card=False, cuda=cuda))


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], json.loads(sys.argv[2]))))
