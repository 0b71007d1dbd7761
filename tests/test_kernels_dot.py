"""The multi-dot (the merge's adjoint) on every implementation against the pure-torch reference:
odd sizes, K across the CUDA kernel's group of 8, every input dtype, read-only memory-mapped
inputs, determinism, argument errors and ``torch.library.opcheck``. The ``target`` fixture runs
each case on every CPU code path this CPU has and on CUDA where there is one."""

from __future__ import annotations

import mmap
import warnings

import numpy as np
import pytest
import torch

from pipeline import kernels
from pipeline.kernels import reference
from tests.test_kernels import BF16, F16, F32, ext, make_inputs, target  # noqa: F401  (fixtures)

DTYPE_SETS = {"f32": [F32], "bf16": [BF16], "f16": [F16], "mixed": [F32, BF16, F16]}


def dtypes(name: str, k: int) -> list[torch.dtype]:
    base = DTYPE_SETS[name]
    return (base * k)[:k]


def assert_dots(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> None:
    assert got.dtype == torch.float64 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    err = ((got - want).abs() / want.abs().clamp_min(1e-30)).max().item() if want.numel() else 0.0
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol}; got {got.tolist()[:4]} want {want.tolist()[:4]}"


@pytest.mark.parametrize("numel", [1, 7, 63, 65, 2049, 100003, (3, 5, 7)])
@pytest.mark.parametrize("k", [1, 3, 8, 9, 17])  # the C++ paths stream up to 8 (AVX-512) or 4 (AVX2) inputs at once
@pytest.mark.parametrize("dts", sorted(DTYPE_SETS))
def test_multi_dot_matches_the_reference(target, numel, k, dts):
    xs = make_inputs(numel, dtypes(dts, k), seed=k)
    g = make_inputs(numel, [F32], seed=100)[0]
    want = reference.multi_dot(xs, g)
    got = kernels.multi_dot(target.to(xs), target.to(g), impl=target.impl).cpu()
    # exact products, fp64 sums in another order: a few fp64 ulps of the sum of magnitudes
    assert_dots(got, want, 1e-10, f"{target} n={numel} K={k} {dts}")


def test_multi_dot_is_deterministic_and_shapes_may_differ(target):
    xs = make_inputs(300_014, [F32, BF16, F32], seed=3)
    xs[1] = xs[1].reshape(-1, 2)  # same number of elements, another shape
    g = target.to(make_inputs(300_014, [F32], seed=4)[0])
    a = kernels.multi_dot(target.to(xs), g, impl=target.impl)
    b = kernels.multi_dot(target.to(xs), g, impl=target.impl)
    assert torch.equal(a, b)


def test_multi_dot_on_the_cpu_does_not_depend_on_the_grouping(target):
    """Each input's dot is summed in the same order whatever else streams beside it: K = 13 at once
    (groups of 7 and 6 on AVX-512, 4, 3, 3, 3 on AVX2) equals one input at a time, bit for bit."""
    if target.impl != "cpu":
        pytest.skip("a property of the CPU kernels (the CUDA kernel reduces in blocks of its own)")
    xs = make_inputs(100_003, dtypes("mixed", 13), seed=7)
    g = make_inputs(100_003, [F32], seed=8)[0]
    together = kernels.multi_dot(xs, g, impl="cpu")
    alone = torch.cat([kernels.multi_dot([x], g, impl="cpu") for x in xs])
    assert torch.equal(together, alone), (together - alone).abs().max()


def test_multi_dot_of_zero_length_is_zero(target):
    got = kernels.multi_dot([target.to(torch.empty(0)), target.to(torch.empty(0, dtype=BF16))], target.to(torch.empty(0)),
                            impl=target.impl)
    assert got.cpu().tolist() == [0.0, 0.0]


def test_multi_dot_reads_readonly_mmap(ext, tmp_path):
    n, k = 70_001, 3
    arrays = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i in range(k)]
    path = tmp_path / "shards.bin"
    path.write_bytes(b"".join(a.tobytes() for a in arrays))
    g = torch.randn(n, generator=torch.Generator().manual_seed(9))
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        with warnings.catch_warnings():  # torch warns once per process that the buffer is not writable
            warnings.simplefilter("ignore", UserWarning)
            xs = [torch.from_numpy(np.frombuffer(mm, dtype=np.float32, count=n, offset=i * n * 4)) for i in range(k)]
        got, want = kernels.multi_dot(xs, g, impl="cpu"), reference.multi_dot(xs, g)
        del xs
    assert_dots(got, want, 1e-12, "mmap inputs")


@pytest.mark.parametrize("bad, match", [
    (lambda: ([], torch.zeros(3)), "inputs is empty"),
    (lambda: ([torch.zeros(4)], torch.zeros(3)), r"inputs\[0\] has 4 elements but g has 3"),
    (lambda: ([torch.zeros(3, dtype=torch.float64)], torch.zeros(3)), r"inputs\[0\] has dtype torch.float64"),
    (lambda: ([torch.zeros(6)[::2]], torch.zeros(3)), r"inputs\[0\] is not contiguous"),
])
def test_multi_dot_argument_errors(ext, bad, match):
    xs, g = bad()
    with pytest.raises(ValueError, match=match):
        kernels.multi_dot(xs, g, impl="cpu")


def test_multi_dot_op_checks_its_arguments_in_cpp(ext):
    with pytest.raises(RuntimeError, match="g has dtype Double; multi_dot takes a float32 g"):
        torch.ops.shardmix.multi_dot([torch.zeros(3)], torch.zeros(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"inputs\[1\] has 2 elements but g has 3"):
        torch.ops.shardmix.multi_dot([torch.zeros(3), torch.zeros(2)], torch.zeros(3))


def test_multi_dot_opcheck(target):
    xs = target.to(make_inputs(1000, [F32, BF16, F16], seed=1))
    torch.library.opcheck(torch.ops.shardmix.multi_dot.default, (xs, target.to(torch.randn(1000))))
