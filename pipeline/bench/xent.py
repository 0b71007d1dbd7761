"""Streaming cross-entropy vs full logits + ``F.cross_entropy``: time, peak memory, agreement.

``python -m pipeline.bench xent [--quick] [--json] [--csv PATH] [--device cpu|cuda]``

Time: medians of ``--reps`` round-robin repetitions in one process. Peak memory: each variant
runs once in a FRESH subprocess that builds the inputs, does a tiny warm-up call (loads the
extension, MKL, the OpenMP pool), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
runs the full-size call and reports ``VmHWM - VmRSS(before)``: the extra resident memory over the
inputs, counting every allocator (torch, MKL, glibc). Accuracy: per-token ``max_abs_err`` and
``rel_err_total`` of the streamed fp64 total against ``F.cross_entropy(reduction="none")`` on the
full fp32 logits, summed in fp64. Last line printed: one JSON object.

``--device cuda``: the same on the GPU (the CUDA kernel), timed with the device synchronised;
peak memory is ``torch.cuda.max_memory_allocated`` during the call minus what was allocated
before it (the inputs); ``gemm_tflops`` is the [T, D] x [D, V] product alone in the same run, fp32
as the kernel computes it: the floor that any logits-based method pays.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import kernels
from pipeline.bench import emit, interleaved_medians

log = logging.getLogger(__name__)


def make_inputs(t: int, d: int, v: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states [T, D], output embedding [V, D] (logits ~ unit scale), targets [T]."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(t, d, generator=gen)
    weight = torch.randn(v, d, generator=gen) / d**0.5
    targets = torch.randint(0, v, (t,), generator=gen)
    return hidden, weight, targets


def naive_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The baseline: full [T, V] logits, then ``F.cross_entropy`` per token."""
    return F.cross_entropy(hidden @ weight.T, targets, reduction="none")


def stream_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return kernels.linear_cross_entropy(hidden, weight, targets, impl="cpu").nll


VARIANTS = {"naive": naive_nll, "stream": stream_nll}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_peak(variant: str, t: int, d: int, v: int) -> float:
    """In this (fresh) process: extra peak RSS in MB of one full-size call of ``variant``."""
    fn = VARIANTS[variant]
    fn(*make_inputs(8, d, 64, seed=1))  # warm-up on a tiny problem: libraries, thread pool
    inputs = make_inputs(t, d, v)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    result = fn(*inputs)
    peak = _rss_kib("VmHWM")
    del result
    return (peak - before) / 1024


def peak_mb(variant: str, t: int, d: int, v: int) -> float:
    """Run :func:`_measure_peak` in a fresh interpreter (same threads) and return its figure."""
    cmd = [sys.executable, "-m", "pipeline.bench.xent", "--_peak", variant, "-T", str(t), "-D", str(d), "-V", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def run(t: int, d: int, v: int, reps: int) -> dict:
    """Measure both variants at [T, D] x [V, D]; return the figures."""
    hidden, weight, targets = make_inputs(t, d, v)
    ref = naive_nll(hidden, weight, targets)
    res_stream = kernels.linear_cross_entropy(hidden, weight, targets, impl="cpu")
    ref_total = float(ref.double().sum())
    secs = interleaved_medians({name: (lambda f=f: f(hidden, weight, targets)) for name, f in VARIANTS.items()}, reps)
    res = {
        "T": t,
        "D": d,
        "V": v,
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "stream_ms": secs["stream"] * 1e3,
        "naive_ms": secs["naive"] * 1e3,
        "stream_peak_mb": peak_mb("stream", t, d, v),
        "naive_peak_mb": peak_mb("naive", t, d, v),
        "max_abs_err": float((res_stream.nll - ref).abs().max()),
        "rel_err_total": abs(res_stream.total - ref_total) / abs(ref_total),
        "reps": reps,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine during the run
    }
    res["time_ratio"] = res["stream_ms"] / res["naive_ms"]
    return {key: round(val, 4) if isinstance(val, float) and key not in ("max_abs_err", "rel_err_total") else val
            for key, val in res.items()}


def run_cuda(t: int, d: int, v: int, reps: int) -> dict:
    """The GPU figures at [T, D] x [V, D]."""
    dev = torch.device("cuda")
    hidden, weight, targets = (x.to(dev) for x in make_inputs(t, d, v))
    fns = {"naive": lambda: naive_nll(hidden, weight, targets),
           "stream": lambda: kernels.linear_cross_entropy(hidden, weight, targets, impl="cuda").nll,
           "gemm": lambda: hidden @ weight.T}
    ref = naive_nll(hidden, weight, targets)
    got = kernels.linear_cross_entropy(hidden, weight, targets, impl="cuda")
    ref_total = float(ref.double().sum())
    secs = interleaved_medians(fns, reps, sync=torch.cuda.synchronize)
    peak = {}
    for name in ("naive", "stream"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fns[name]()
        torch.cuda.synchronize()
        peak[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
        del result
    res = {
        "device": torch.cuda.get_device_name(), "T": t, "D": d, "V": v, "dtype": "float32",
        "stream_ms": secs["stream"] * 1e3, "naive_ms": secs["naive"] * 1e3, "gemm_ms": secs["gemm"] * 1e3,
        "gemm_tflops": 2 * t * d * v / secs["gemm"] / 1e12,
        "stream_peak_mb": peak["stream"], "naive_peak_mb": peak["naive"],
        "max_abs_err": float((got.nll - ref).abs().max()),
        "rel_err_total": abs(got.total - ref_total) / abs(ref_total),
        "reps": reps,
    }
    res["time_ratio"] = res["stream_ms"] / res["naive_ms"]
    res["memory_ratio"] = res["stream_peak_mb"] / res["naive_peak_mb"]
    return {key: round(val, 4) if isinstance(val, float) and key not in ("max_abs_err", "rel_err_total") else val
            for key, val in res.items()}


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench xent", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (T=1024, V=8000, 3 reps)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("-T", type=int, default=None, help="tokens (default 4096, quick 1024)")
    parser.add_argument("-D", type=int, default=768, help="hidden size (default 768)")
    parser.add_argument("-V", type=int, default=None, help="vocabulary (default 32000, quick 8000)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7, quick 3)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the figures to this CSV")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--_peak", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    t = args.T or (1024 if args.quick else 4096)
    v = args.V or (8000 if args.quick else 32000)
    if args._peak:
        print(_measure_peak(args._peak, t, args.D, v))
        return 0
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    reps = args.reps or (3 if args.quick else 7)
    if args.device == "cuda":
        from pipeline.kernels import _ext

        if not (torch.cuda.is_available() and _ext.has_cuda_kernels()):
            parser.error(f"--device cuda: no CUDA device or no CUDA kernels ({_ext.load_error() or 'torch sees no GPU'})")
        res = run_cuda(t, args.D, v, reps)
    else:
        res = run(t, args.D, v, reps)
    emit(res, csv_path=args.csv, table=not args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
