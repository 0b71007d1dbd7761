"""Merge bandwidth: fused weighted sum (and its adjoint, the multi-dot) vs a triad loop, torch's in-place chain and naive torch.

``python -m pipeline.bench merge [--quick] [--json] [--csv PATH] [--device cpu|cuda]``

All variants are timed round-robin in one process with the same threads
(``torch.get_num_threads()``); each figure is the median of ``--reps`` repetitions. Effective
GB/s = (K inputs + 1 output) x bytes / seconds (for the triad: 3 arrays x 4 bytes). The triad
loop lives in the same C++ extension as the merge (same compiler, ISA and threads); ``triad_gbps``
is the STREAM-like loop with ordinary stores, ``triad_nt_gbps`` the same with streaming stores.
``dot_gbps``: the multi-dot ``dots[k] = <g, x_k>`` over the same K inputs, (K + 1) x bytes read
(the merge gradient's kernel; ``dot_over_triad`` against the plain triad). ``mmap_gbps``: the
same merge as the proxy runs it, :func:`pipeline.lib.merging.merge_into` reading the K inputs
from safetensors files (``.cache/bench_merge/``, page cache warm) through their memory maps,
pages dropped after use (the path for shards that do not fit in memory: resident memory stays at
the output's); ``mmap_kept_gbps``: the same with the pages kept mapped between passes
(:meth:`ShardPool.keep_mapped`, the proxy stage's path where the shards fit in memory; no copy,
each tensor in one kernel call). ``*_over_best_triad`` compare with the faster of the two triads.
Last line printed: one JSON object (keys listed in issue 3, plus the ratios).

``--device cuda``: the same variants on the GPU (the CUDA kernel), timed with the device
synchronised around each call, against the device's own copy bandwidth measured in the same run
(``memcpy_gbps``: a device-to-device ``copy_`` of one input, read + write bytes), the GPU's
yardstick as the triad is the CPU's.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from pipeline import kernels
from pipeline.bench import RESULTS, emit, interleaved_medians
from pipeline.kernels import _ext
from pipeline.lib.merging import merge_into
from pipeline.lib.pool import ShardPool

log = logging.getLogger(__name__)



def _check_dot(xs: list, g: torch.Tensor, impl: str) -> float:
    """The multi-dot's largest relative error against the reference on the first 1M elements."""
    n = min(g.numel(), 1 << 20)
    got = kernels.multi_dot([x[:n] for x in xs], g[:n], impl=impl).cpu()
    want = kernels.multi_dot([x[:n].cpu() for x in xs], g[:n].cpu(), impl="reference")
    err = float(((got - want).abs() / want.abs()).max())
    if err > 1e-9:
        raise RuntimeError(f"multi_dot differs from the reference by {err:.3g} (relative)")
    return err


class _Flat(torch.nn.Module):
    """A model of one flat parameter ``w``: what :func:`pipeline.lib.merging.merge_into` writes for the mmap arm."""

    def __init__(self, numel: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(numel), requires_grad=False)


def _shard_files(xs: list, root: Path) -> list[Path]:
    """The inputs as one-tensor safetensors folders under ``root/<numel>/`` (written once per size:
    the seeded inputs of one size are always the same), page cache warmed."""
    from safetensors.torch import load_file, save_file

    from pipeline.bench._fixtures import warm

    folders = []
    for i, x in enumerate(xs):
        d = root / str(x.numel()) / f"s{i}"
        f = d / "model.safetensors"
        if not f.exists() or not torch.equal(load_file(f)["w"][:4096], x[:4096]):
            d.mkdir(parents=True, exist_ok=True)
            save_file({"w": x}, str(f) + ".tmp")
            (d / "config.json").write_text('{"model_type": "bench"}\n')
            os.replace(str(f) + ".tmp", f)
        folders.append(d)
    warm([d / "model.safetensors" for d in folders])
    return folders


def _variants(ops, k: int, numel: int, multi_m: int, pool_root: Path | None = None) -> dict:
    """The timed callables over the same seeded inputs; the fused one checked against the reference."""
    gen = torch.Generator().manual_seed(0)
    log.info("allocating %d x %d fp32 inputs (%.2f GiB)", k, numel, k * numel * 4 / 2**30)
    xs = [torch.rand(numel, generator=gen) for _ in range(k)]
    xs_bf16 = [x.to(torch.bfloat16) for x in xs]
    weights = torch.rand(k, generator=gen)
    weights /= weights.sum()
    wl = weights.tolist()
    mix = torch.rand(multi_m, k, generator=gen)
    out = torch.zeros(numel)
    outs = [torch.zeros(numel) for _ in range(multi_m)]

    def fused() -> None:
        kernels.weighted_sum(xs, weights, out, impl="cpu")

    def torch_chain() -> None:
        torch.mul(xs[0], wl[0], out=out)
        for w, x in zip(wl[1:], xs[1:]):
            out.add_(x, alpha=w)

    # correctness guard: the fused result must match the chain it is compared with
    fused()
    expect = kernels.weighted_sum(xs, weights, impl="reference")
    if not torch.allclose(out, expect, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"fused merge differs from the reference by {float((out - expect).abs().max())}")
    g = torch.rand(numel, generator=gen) - 0.5
    _check_dot(xs, g, "cpu")
    fns = {
        "fused": fused,
        "dot": lambda: kernels.multi_dot(xs, g, impl="cpu"),
        "fused_bf16": lambda: kernels.weighted_sum(xs_bf16, weights, out, impl="cpu"),
        "multi": lambda: kernels.multi_weighted_sum(xs, mix, outs, impl="cpu"),
        "torch_chain": torch_chain,
        "triad": lambda: ops.triad_(out, xs[0], xs[1], 0.5, False),
        "triad_nt": lambda: ops.triad_(out, xs[0], xs[1], 0.5, True),
        "naive": lambda: sum(w * x for w, x in zip(wl, xs)),
    }
    if pool_root is not None:  # the same inputs as files: merge_into reads them through their memory maps
        folders = _shard_files(xs, pool_root)
        pool, kept = ShardPool({d.name: d for d in folders}), ShardPool({d.name: d for d in folders})
        kept.keep_mapped()
        flat, flat_kept = _Flat(numel), _Flat(numel)
        fns["mmap"] = lambda: merge_into(flat, wl, pool)
        fns["mmap_kept"] = lambda: merge_into(flat_kept, wl, kept)
        fns["mmap"]()
        fns["mmap_kept"]()
        want = kernels.weighted_sum(xs, weights, impl="cpu")
        if not (torch.equal(flat.w.data, want) and torch.equal(flat_kept.w.data, want)):
            raise RuntimeError("merge_into from the memory-mapped files differs from the fused kernel on the same inputs")
    return fns


def _cuda_variants(k: int, numel: int, multi_m: int) -> dict:
    """(max error of the fused kernel against the reference, the GPU variants over the same seeded inputs)."""
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    xs = [torch.rand(numel, generator=gen, device=dev) for _ in range(k)]
    xs_bf16 = [x.to(torch.bfloat16) for x in xs]
    weights = torch.rand(k, generator=gen, device=dev)
    weights = (weights / weights.sum()).cpu()
    wl = weights.tolist()
    mix = torch.rand(multi_m, k)
    out = torch.zeros(numel, device=dev)
    outs = [torch.zeros(numel, device=dev) for _ in range(multi_m)]
    kernels.weighted_sum(xs, weights, out, impl="cuda")
    expect = kernels.weighted_sum(xs, weights, impl="reference")
    err = float((out - expect).abs().max())
    if not torch.allclose(out, expect, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"CUDA fused merge differs from the reference by {err}")
    g = torch.rand(numel, generator=gen, device=dev) - 0.5
    _check_dot(xs, g, "cuda")

    def torch_chain() -> None:
        torch.mul(xs[0], wl[0], out=out)
        for w, x in zip(wl[1:], xs[1:]):
            out.add_(x, alpha=w)

    return err, {
        "fused": lambda: kernels.weighted_sum(xs, weights, out, impl="cuda"),
        "fused_bf16": lambda: kernels.weighted_sum(xs_bf16, weights, out, impl="cuda"),
        "dot": lambda: kernels.multi_dot(xs, g, impl="cuda"),
        "multi": lambda: kernels.multi_weighted_sum(xs, mix, outs, impl="cuda"),
        "torch_chain": torch_chain,
        "memcpy": lambda: out.copy_(xs[0]),
        "naive": lambda: sum(w * x for w, x in zip(wl, xs)),
    }


def run_cuda(k: int, numel: int, multi_m: int, reps: int) -> dict:
    """The GPU figures at K inputs of ``numel`` fp32 elements."""
    err, fns = _cuda_variants(k, numel, multi_m)
    secs = interleaved_medians(fns, reps=reps, sync=torch.cuda.synchronize)
    gbps = lambda nbytes, s: nbytes / s / 1e9  # noqa: E731
    fp32_bytes = (k + 1) * 4 * numel
    res = {
        "device": torch.cuda.get_device_name(), "K": k, "numel": numel, "dtype": "float32",
        "fused_gbps": gbps(fp32_bytes, secs["fused"]),
        "torch_chain_gbps": gbps(fp32_bytes, secs["torch_chain"]),
        "naive_gbps": gbps(fp32_bytes, secs["naive"]),
        "memcpy_gbps": gbps(2 * 4 * numel, secs["memcpy"]),
        "dot_gbps": gbps(fp32_bytes, secs["dot"]),
        "bf16_fused_gbps": gbps((k * 2 + 4) * numel, secs["fused_bf16"]),
        "multi_M": multi_m, "multi_s_per_mixture": secs["multi"] / multi_m, "single_s_per_mixture": secs["fused"],
        "max_abs_err_vs_reference": err, "reps": reps,
    }
    res["fused_over_memcpy"] = res["fused_gbps"] / res["memcpy_gbps"]
    res["bf16_over_memcpy"] = res["bf16_fused_gbps"] / res["memcpy_gbps"]
    res["dot_over_memcpy"] = res["dot_gbps"] / res["memcpy_gbps"]
    res["fused_over_torch_chain"] = res["fused_gbps"] / res["torch_chain_gbps"]
    res["fused_over_naive"] = res["fused_gbps"] / res["naive_gbps"]
    res["multi_over_single"] = res["multi_s_per_mixture"] / res["single_s_per_mixture"]
    return {key: round(v, 4) if isinstance(v, float) else v for key, v in res.items()}


def run(k: int, numel: int, multi_m: int, reps: int) -> dict:
    """Measure every variant at K inputs of ``numel`` fp32 elements; return the figures."""
    ops = _ext.load_ops(raise_on_error=True)
    from pipeline.bench._fixtures import CACHE

    fns = _variants(ops, k, numel, multi_m, pool_root=CACHE / "bench_merge")
    naive = {"naive": fns.pop("naive")}
    secs = interleaved_medians(fns, reps=reps)
    secs.update(interleaved_medians(naive, reps=max(1, reps // 2)))

    gbps = lambda nbytes, s: nbytes / s / 1e9  # noqa: E731
    fp32_bytes = (k + 1) * 4 * numel
    res = {
        "K": k,
        "numel": numel,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "isa": ops.cpu_isa(),
        "fused_gbps": gbps(fp32_bytes, secs["fused"]),
        "torch_chain_gbps": gbps(fp32_bytes, secs["torch_chain"]),
        "naive_gbps": gbps(fp32_bytes, secs["naive"]),
        "triad_gbps": gbps(3 * 4 * numel, secs["triad"]),
        "triad_nt_gbps": gbps(3 * 4 * numel, secs["triad_nt"]),
        "dot_gbps": gbps(fp32_bytes, secs["dot"]),
        "mmap_gbps": gbps(fp32_bytes, secs["mmap"]),
        "mmap_kept_gbps": gbps(fp32_bytes, secs["mmap_kept"]),
        "bf16_in_dtype": "bfloat16",
        "bf16_out_dtype": "float32",
        "bf16_fused_gbps": gbps((k * 2 + 4) * numel, secs["fused_bf16"]),
        "multi_M": multi_m,
        "multi_s_per_mixture": secs["multi"] / multi_m,
        "single_s_per_mixture": secs["fused"],
        "reps": reps,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine during the run
    }
    res["fused_over_triad"] = res["fused_gbps"] / res["triad_gbps"]
    best_triad = max(res["triad_gbps"], res["triad_nt_gbps"])
    res["fused_over_best_triad"] = res["fused_gbps"] / best_triad
    res["mmap_over_best_triad"] = res["mmap_gbps"] / best_triad
    res["mmap_kept_over_best_triad"] = res["mmap_kept_gbps"] / best_triad
    res["dot_over_triad"] = res["dot_gbps"] / res["triad_gbps"]
    res["dot_over_best_triad"] = res["dot_gbps"] / best_triad
    res["fused_over_torch_chain"] = res["fused_gbps"] / res["torch_chain_gbps"]
    res["fused_over_naive"] = res["fused_gbps"] / res["naive_gbps"]
    res["bf16_over_triad"] = res["bf16_fused_gbps"] / res["triad_gbps"]
    res["multi_over_single"] = res["multi_s_per_mixture"] / res["single_s_per_mixture"]
    return {key: round(v, 4) if isinstance(v, float) else v for key, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench merge", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (4M elements, 3 reps)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("-K", type=int, default=8, help="number of inputs (default 8)")
    parser.add_argument("--numel", type=int, default=None, help="elements per input (default 64M, quick 4M)")
    parser.add_argument("-M", "--multi", type=int, default=4, help="mixtures for the multi form (default 4)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7, quick 3)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the figures to this CSV")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    numel = args.numel or (4 * 2**20 if args.quick else 64 * 2**20)
    reps = args.reps or (3 if args.quick else 7)
    if args.device == "cuda":
        if not (torch.cuda.is_available() and _ext.has_cuda_kernels()):
            parser.error(f"--device cuda: no CUDA device or no CUDA kernels ({_ext.load_error() or 'torch sees no GPU'})")
        res = run_cuda(args.K, numel, args.multi, reps)
    else:
        res = run(args.K, numel, args.multi, reps)
    emit(res, csv_path=args.csv, table=not args.json)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
