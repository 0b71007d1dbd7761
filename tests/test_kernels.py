"""Every implementation of the shardmix kernels against the pure-torch reference.

Covers odd sizes (not multiples of any vector width), K=1, zero/negative weights, every dtype
combination, ``out`` aliasing an input, read-only memory-mapped inputs, argument errors, the
multi-mixture form, the streaming cross-entropy (V=32001, N=1, bias, ignore_index, extreme
logits), ``torch.library.opcheck`` and each run-time CPU code path (AVX-512 / AVX2 / generic).
The same cases run on CUDA where a GPU and the CUDA kernels are present (the ``target`` fixture,
pytorch/extension-cpp style), and skip cleanly elsewhere. The extension is built once per session
(cached under .cache/torch_extensions).

Longer than ~350 lines on purpose: one table of cases run against every target is the point; split
by kernel, the fixtures and the target matrix would be repeated in each file.
"""

from __future__ import annotations

import mmap
import warnings
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import kernels
from pipeline.kernels import _ext, reference

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
# Per output dtype: (rtol, atol). fp32 sums differ from the reference only in FMA rounding; a
# 16-bit output may round one unit differently when the fp32 sums differ in the last bit.
TOL = {F32: (2e-6, 2e-6), BF16: (2**-7, 1e-5), F16: (2**-10, 1e-5)}
ISAS = ["avx512", "avx2", "generic"]
TARGETS = [*ISAS, "cuda"]


# --------------------------------------------------------------------------------------------
# helpers (kept here: tests/conftest.py belongs to the shared suite)
# --------------------------------------------------------------------------------------------


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    """assert_close that prints the first mismatching elements with their indices."""
    a, e = actual.detach().float().reshape(-1), expected.detach().float().reshape(-1)
    assert a.shape == e.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(bad.any()):
        idx = bad.nonzero()[:8, 0].tolist()
        rows = ", ".join(f"[{i}] got {a[i].item():.8g} want {e[i].item():.8g}" for i in idx)
        pytest.fail(f"{what}: {int(bad.sum())} of {a.numel()} elements differ (rtol={rtol}, atol={atol}); first: {rows}")


@pytest.fixture(scope="session")
def ext():
    """The built extension (fails, not skips, when a compiler exists but the build breaks)."""
    ops = _ext.load_ops()
    if ops is None:
        if shutil.which("c++") or shutil.which("g++"):
            pytest.fail(f"a C++ compiler exists but the extension did not build: {_ext.load_error()}")
        pytest.skip(f"no C++ compiler: {_ext.load_error()}")
    return ops


class Target:
    """Where a kernel test runs: one CPU code path, or CUDA. Inputs are made on the CPU (seeded),
    moved with :meth:`to`; results come back with :meth:`cpu` to meet the reference."""

    def __init__(self, name: str):
        self.name = name
        self.impl = "cuda" if name == "cuda" else "cpu"
        self.device = torch.device("cuda") if name == "cuda" else torch.device("cpu")

    def to(self, x):
        if isinstance(x, (list, tuple)):
            return [self.to(t) for t in x]
        return x.to(self.device)

    def __str__(self) -> str:
        return self.name


@pytest.fixture(params=TARGETS)
def target(request, ext, monkeypatch):
    """Run the test once per CPU code path (capped at what this CPU supports) and once on CUDA."""
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if not _ext.has_cuda_kernels():
            pytest.fail(f"a CUDA device is present but the extension has no CUDA kernels: {_ext.load_error()}")
        return Target("cuda")
    monkeypatch.setenv("SHARDMIX_CPU_ISA", request.param)
    if ext.cpu_isa() != request.param:
        pytest.skip(f"CPU lacks {request.param} (best: {ext.cpu_isa()})")
    return Target(request.param)


def make_inputs(numel: int | tuple, dtypes, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (numel,) if isinstance(numel, int) else numel
    return [torch.randn(shape, generator=gen).to(dt) for dt in dtypes]


def weights_for(k: int) -> list[float]:
    base = [0.5, -1.25, 0.0, 2.0, 0.125, -0.375, 1.0, 0.3]
    return (base * (k // len(base) + 1))[:k]


def ref_sum(xs, w, out_dtype):
    out = torch.empty(xs[0].shape, dtype=out_dtype)
    return reference.weighted_sum(xs, torch.tensor(w, dtype=F32), out)


# --------------------------------------------------------------------------------------------
# weighted_sum / multi_weighted_sum
# --------------------------------------------------------------------------------------------

DTYPE_SETS = {"f32": [F32] * 3, "bf16": [BF16] * 3, "f16": [F16] * 3, "mixed": [F32, BF16, F16]}


@pytest.mark.parametrize("numel", [1, 7, 63, 65, 1000, 100003, (3, 5, 7)])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_weighted_sum_shapes(target, numel, k):
    xs = make_inputs(numel, [F32] * k)
    w = weights_for(k)
    got = kernels.weighted_sum(target.to(xs), w, impl=target.impl)
    assert got.dtype == F32 and got.shape == xs[0].shape and got.device == target.device
    assert_close_verbose(got.cpu(), ref_sum(xs, w, F32), *TOL[F32], f"{target} numel={numel} K={k}")


@pytest.mark.parametrize("in_set", sorted(DTYPE_SETS))
@pytest.mark.parametrize("out_dtype", [F32, BF16, F16], ids=["out_f32", "out_bf16", "out_f16"])
@pytest.mark.parametrize("numel", [77, 2**20 + 13])
def test_weighted_sum_dtypes(target, in_set, out_dtype, numel):
    xs = make_inputs(numel, DTYPE_SETS[in_set], seed=1)
    w = weights_for(len(xs))
    out = target.to(torch.full((numel,), float("nan"), dtype=out_dtype))
    got = kernels.weighted_sum(target.to(xs), w, out, impl=target.impl)
    assert got is out
    assert_close_verbose(out.cpu(), ref_sum(xs, w, out_dtype), *TOL[out_dtype], f"{target} in={in_set} out={out_dtype}")


def test_weighted_sum_special_values(target):
    xs = [torch.tensor([1.0, float("inf"), 3.0e38, -0.0, float("nan")] * 13), torch.ones(65)]
    for out_dtype in (F32, BF16, F16):
        got = kernels.weighted_sum(target.to(xs), [2.0, 1.0], target.to(torch.empty(65, dtype=out_dtype)), impl=target.impl)
        assert_close_verbose(got.cpu(), ref_sum(xs, [2.0, 1.0], out_dtype), *TOL[out_dtype], f"{target} specials out={out_dtype}")


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("alias", [0, 2])
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_weighted_sum_out_aliases_input(target, alias, dtype, offset):
    """``out`` is one of the inputs. ``unaligned``: views one element into their storage, so no
    pointer is 16-byte aligned and every element takes the kernels' scalar path."""
    n = 100_003
    xs = [x[offset:] for x in make_inputs(n + offset, [dtype] * 3, seed=2)]
    w = [0.2, 0.3, 0.5]
    expect = ref_sum(xs, w, dtype)
    dev = target.to(xs)
    got = kernels.weighted_sum(dev, w, dev[alias], impl=target.impl)
    assert got.data_ptr() == dev[alias].data_ptr()
    assert_close_verbose(got.cpu(), expect, *TOL[dtype], f"{target} alias={alias} dtype={dtype} offset={offset}")


def test_weighted_sum_into_live_parameter(ext):
    lin = torch.nn.Linear(33, 17)
    xs = make_inputs((17, 33), [F32] * 4, seed=3)
    w = [0.25] * 4
    ptr = lin.weight.data_ptr()
    with torch.no_grad():
        kernels.weighted_sum(xs, w, lin.weight.data)
    assert lin.weight.data_ptr() == ptr
    assert_close_verbose(lin.weight, ref_sum(xs, w, F32), *TOL[F32], "parameter")


def test_weighted_sum_reads_readonly_mmap(ext, tmp_path):
    """Inputs over read-only mapped memory: any write to them would crash the process."""
    n, k = 70_001, 3
    arrays = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i in range(k)]
    path = tmp_path / "shards.bin"
    path.write_bytes(b"".join(a.tobytes() for a in arrays))
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        with warnings.catch_warnings():  # torch warns once per process that the buffer is not writable
            warnings.simplefilter("ignore", UserWarning)
            xs = [torch.from_numpy(np.frombuffer(mm, dtype=np.float32, count=n, offset=i * n * 4)) for i in range(k)]
        got = kernels.weighted_sum(xs, [1.0, 2.0, -3.0], impl="cpu")
        expect = ref_sum(xs, [1.0, 2.0, -3.0], F32)
        del xs
    assert_close_verbose(got, expect, *TOL[F32], "mmap inputs")


@pytest.mark.parametrize("m", [1, 3, 4, 5, 9])
def test_multi_weighted_sum(target, m):
    xs = make_inputs(50_001, [F32, BF16, F16, F32], seed=4)
    gen = torch.Generator().manual_seed(m)
    w = torch.randn(m, len(xs), generator=gen)
    w[0, 1] = 0.0
    out_dtypes = [(F32, BF16, F16)[i % 3] for i in range(m)]
    outs = [target.to(torch.empty(50_001, dtype=dt)) for dt in out_dtypes]
    got = kernels.multi_weighted_sum(target.to(xs), w, outs, impl=target.impl)
    for i, (o, dt) in enumerate(zip(got, out_dtypes)):
        assert o is outs[i]
        assert_close_verbose(o.cpu(), ref_sum(xs, w[i].tolist(), dt), *TOL[dt], f"{target} M={m} mixture {i}")


@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("m", [2, 4, 6])
def test_multi_weighted_sum_out_aliases_input(target, m, offset):
    """The first output is an input. M <= 4 outputs are computed together (every input element read
    before any output element is written, in the vector path and in the scalar tail: 10,007 is
    not a multiple of 4, and ``unaligned`` sends every element there); M > 4 go through a
    temporary. Either way no later output may see an overwritten input."""
    xs = [x[offset:] for x in make_inputs(10_007 + offset, [F32] * 3, seed=5)]
    w = torch.randn(m, 3, generator=torch.Generator().manual_seed(9))
    expect = [ref_sum(xs, row.tolist(), F32) for row in w]
    dev = target.to(xs)
    outs = [dev[1]] + [target.to(torch.empty(10_007)) for _ in range(m - 1)]
    kernels.multi_weighted_sum(dev, w, outs, impl=target.impl)
    for i, o in enumerate(outs):
        assert_close_verbose(o.cpu(), expect[i], *TOL[F32], f"{target} M={m} offset={offset} mixture {i}")


def test_multi_weighted_sum_new_outputs_and_reference():
    xs = make_inputs(33, [F32, BF16], seed=6)
    outs = kernels.multi_weighted_sum(xs, [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], impl="reference")
    assert [o.dtype for o in outs] == [F32] * 3
    assert_close_verbose(outs[1], xs[1].float(), 0, 0, "identity mixture")


def test_reference_matches_plain_torch():
    xs = make_inputs(1001, [F32, BF16, F16], seed=7)
    got = kernels.weighted_sum(xs, [0.5, -2.0, 1.5], impl="reference")
    plain = 0.5 * xs[0] - 2.0 * xs[1].float() + 1.5 * xs[2].float()
    assert_close_verbose(got, plain, 1e-6, 1e-6, "reference vs plain torch")


def test_merge_argument_errors(ext):
    xs = make_inputs(64, [F32] * 2)
    with pytest.raises(ValueError, match="inputs is empty"):
        kernels.weighted_sum([], [])
    with pytest.raises(ValueError, match=r"weights have shape \(1, 3\), expected \[2\]"):
        kernels.weighted_sum(xs, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"inputs\[1\] has shape"):
        kernels.weighted_sum([xs[0], torch.zeros(65)], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"inputs\[1\] has dtype torch.float64"):
        kernels.weighted_sum([xs[0], xs[1].double()], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"out\[0\] has dtype torch.int32"):
        kernels.weighted_sum(xs, [1.0, 1.0], torch.zeros(64, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"inputs\[1\] is on meta but inputs\[0\] is on cpu"):
        kernels.weighted_sum([xs[0], torch.empty(64, device="meta")], [1.0, 1.0])
    with pytest.raises(ValueError, match="impl='cuda' needs cuda tensors"):
        kernels.weighted_sum(xs, [1.0, 1.0], impl="cuda")
    with pytest.raises(ValueError, match="impl='gpu' is not one of"):
        kernels.weighted_sum(xs, [1.0, 1.0], impl="gpu")
    with pytest.raises(ValueError, match=r"weights have shape \(2, 2\), expected \[1, 2\] for 2 inputs"):
        kernels.multi_weighted_sum(xs, [[1.0, 0.0], [0.0, 1.0]], [torch.empty(64)])


def test_merge_non_contiguous(ext):
    base = torch.randn(64, 64)
    xs = [base.t(), torch.randn(64, 64)]
    with pytest.raises(ValueError, match=r"inputs\[0\] is not contiguous .* pass .contiguous\(\)"):
        kernels.weighted_sum(xs, [1.0, 1.0], impl="cpu")
    with pytest.raises(ValueError, match=r"out\[0\] is not contiguous"):
        kernels.weighted_sum([x.contiguous() for x in xs], [1.0, 1.0], torch.empty(64, 64).t(), impl="cpu")
    # the reference handles any layout
    got = kernels.weighted_sum(xs, [1.0, 1.0], impl="reference")
    assert_close_verbose(got, xs[0] + xs[1], 1e-6, 1e-6, "reference non-contiguous")
    # the op itself reports layout problems too (binding-layer checks)
    with pytest.raises(RuntimeError, match=r"shardmix: inputs\[0\] is not contiguous"):
        ext.weighted_sum_(xs, [1.0, 1.0], [torch.empty(64, 64)])
    with pytest.raises(RuntimeError, match=r"shardmix: weights has 3 values but M \* K = 1 \* 2"):
        ext.weighted_sum_([x.contiguous() for x in xs], [1.0, 1.0, 1.0], [torch.empty(64, 64)])
    with pytest.raises(RuntimeError, match=r"shardmix: outs\[0\] and outs\[1\] share memory"):
        out = torch.empty(64, 64)
        ext.weighted_sum_([x.contiguous() for x in xs], [1.0] * 4, [out, out])


def test_merge_zero_numel(ext):
    xs = [torch.empty(0, 5) for _ in range(2)]
    assert kernels.weighted_sum(xs, [1.0, 2.0], impl="cpu").shape == (0, 5)


def test_triad(ext):
    a, b, c = torch.empty(100_003), torch.randn(100_003), torch.randn(100_003)
    for nt in (False, True):
        ext.triad_(a, b, c, 0.5, nt)
        assert_close_verbose(a, b + 0.5 * c, 1e-6, 1e-6, f"triad nt={nt}")


# --------------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------------


def xent_case(n: int, d: int, v: int, seed: int = 0, scale: float = 1.0, ignore_frac: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen) * scale
    weight = torch.randn(v, d, generator=gen) / d**0.5
    targets = torch.randint(0, v, (n,), generator=gen)
    if ignore_frac:
        targets[torch.rand(n, generator=gen) < ignore_frac] = -100
    return hidden, weight, targets


def check_xent(got: kernels.XentResult, want: kernels.XentResult, what: str, atol: float = 2e-5) -> None:
    assert got.count == want.count, f"{what}: count {got.count} != {want.count}"
    assert got.nll.dtype == F32
    assert_close_verbose(got.nll.cpu(), want.nll.cpu(), 1e-5, atol, what)
    assert got.total == pytest.approx(want.total, rel=1e-6, abs=1e-6), what


@pytest.mark.parametrize(
    ("n", "d", "v", "chunk"),
    [(1, 16, 5, None), (7, 33, 32001, None), (300, 64, 1000, 7), (513, 32, 4097, 100), (64, 48, 8193, 1)],
)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_xent_matches_reference(target, n, d, v, chunk, with_bias):
    hidden, weight, targets = xent_case(n, d, v, seed=n, ignore_frac=0.2)
    bias = torch.randn(v) if with_bias else None
    got = kernels.linear_cross_entropy(*target.to([hidden, weight, targets]), None if bias is None else target.to(bias),
                                       chunk_size=chunk, impl=target.impl)
    want = kernels.linear_cross_entropy(hidden, weight, targets, bias, impl="reference")
    check_xent(got, want, f"{target} N={n} d={d} V={v} chunk={chunk} bias={with_bias}")
    assert bool((got.nll.cpu()[targets == -100] == 0).all())


def test_xent_matches_f_cross_entropy_full_logits(ext):
    hidden, weight, targets = xent_case(1000, 96, 5000, seed=11)
    got = kernels.linear_cross_entropy(hidden, weight, targets, impl="cpu")
    full = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    assert_close_verbose(got.nll, full, 1e-5, 2e-5, "vs F.cross_entropy")
    assert got.total == pytest.approx(float(full.double().sum()), rel=1e-6)


@pytest.mark.parametrize("scale", [30.0, 1e-3])
def test_xent_extreme_logits(target, scale):
    """Logits of magnitude ~1e3 (online LSE must rescale, never overflow) and ~1e-3 (flat)."""
    hidden, weight, targets = xent_case(40, 64, 3001, seed=12, scale=scale)
    got = kernels.linear_cross_entropy(*target.to([hidden, weight, targets]), impl=target.impl)
    want = kernels.linear_cross_entropy(hidden, weight, targets, impl="reference")
    assert bool(torch.isfinite(got.nll).all())
    check_xent(got, want, f"scale={scale}", atol=2e-5 * max(1.0, scale * 30))


def test_xent_ignore_index_custom_and_all_ignored(target):
    hidden, weight, targets = xent_case(50, 16, 300, seed=13)
    targets[::3] = 7
    got = kernels.linear_cross_entropy(*target.to([hidden, weight, targets]), ignore_index=7, impl=target.impl)
    want = kernels.linear_cross_entropy(hidden, weight, targets, ignore_index=7, impl="reference")
    check_xent(got, want, f"{target} ignore_index=7")
    assert got.count == int((targets != 7).sum())
    none = kernels.linear_cross_entropy(*target.to([hidden, weight, torch.full((50,), -100)]), impl=target.impl)
    assert none.count == 0 and none.total == 0.0 and bool((none.nll == 0).all())


@pytest.mark.parametrize("dtype", [BF16, F16])
def test_xent_half_inputs(target, dtype):
    hidden, weight, targets = xent_case(65, 32, 1001, seed=14)
    hidden, weight, bias = hidden.to(dtype), weight.to(dtype), torch.zeros(1001, dtype=dtype)
    got = kernels.linear_cross_entropy(*target.to([hidden, weight, targets, bias]), impl=target.impl)
    want = kernels.linear_cross_entropy(hidden, weight, targets, bias, impl="reference")
    check_xent(got, want, f"{target} dtype={dtype}")


def test_xent_non_contiguous_is_handled(ext):
    hidden, weight, targets = xent_case(30, 40, 257, seed=15)
    hidden_t = hidden.t().contiguous().t()  # same values, column-major
    got = kernels.linear_cross_entropy(hidden_t, weight, targets, impl="cpu")
    check_xent(got, kernels.linear_cross_entropy(hidden, weight, targets, impl="reference"), "non-contiguous hidden")
    with pytest.raises(RuntimeError, match="shardmix: hidden is not contiguous"):
        ext.linear_xent(hidden_t, weight, None, targets, -100, 16, 64)


def test_xent_argument_errors(ext):
    hidden, weight, targets = xent_case(10, 8, 20)
    with pytest.raises(ValueError, match=r"targets\[3\] = 20 is outside \[0, 20\)"):
        bad = targets.clone()
        bad[3] = 20
        kernels.linear_cross_entropy(hidden, weight, bad)
    with pytest.raises(ValueError, match="d must match"):
        kernels.linear_cross_entropy(hidden, weight[:, :7], targets)
    with pytest.raises(ValueError, match=r"targets must be \[N=10\]"):
        kernels.linear_cross_entropy(hidden, weight, targets[:9])
    with pytest.raises(ValueError, match=r"bias must be \[V=20\]"):
        kernels.linear_cross_entropy(hidden, weight, targets, torch.zeros(21))
    with pytest.raises(ValueError, match="weight is on meta but hidden is on cpu"):
        kernels.linear_cross_entropy(hidden, weight.to("meta"), targets)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        kernels.linear_cross_entropy(hidden, weight, targets, chunk_size=0)
    with pytest.raises(RuntimeError, match="shardmix: targets must be int64"):
        ext.linear_xent(hidden, weight, None, targets.int(), -100, 16, 64)


# --------------------------------------------------------------------------------------------
# op registration, dispatch
# --------------------------------------------------------------------------------------------


def test_opcheck(target):
    xs = target.to(make_inputs(257, [F32, BF16]))
    outs = target.to([torch.empty(257), torch.empty(257, dtype=BF16)])
    torch.library.opcheck(torch.ops.shardmix.weighted_sum_.default, (xs, [0.5, -1.0, 1.0, 2.0], outs))
    hidden, weight, targets = target.to(list(xent_case(9, 16, 50)))
    torch.library.opcheck(torch.ops.shardmix.linear_xent.default, (hidden, weight, target.to(torch.randn(50)), targets, -100, 4, 16))
    if target.impl == "cpu":  # the triad (the benchmark's bandwidth yardstick) is a CPU op
        a, b, c = torch.empty(100), torch.randn(100), torch.randn(100)
        torch.library.opcheck(torch.ops.shardmix.triad_.default, (a, b, c, 2.0, False))


def test_available_impls_and_auto(ext):
    impls = kernels.available_impls()
    assert impls[:2] == ["reference", "cpu"]
    assert ("cuda" in impls) == (torch.cuda.is_available() and _ext.has_cuda_kernels())
    xs = make_inputs(100, [F32] * 2)
    assert_close_verbose(kernels.weighted_sum(xs, [1.0, 1.0]), xs[0] + xs[1], 1e-6, 1e-6, "auto")
