"""``python -m pipeline.bench train``: the chunked loss it times against the recipe's, and its JSON."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pipeline.bench.train import ChunkedLinearXent


@pytest.mark.parametrize("chunk", [7, 64, 1000])  # many chunks with a ragged last one, one exact fit, one chunk for all
def test_the_chunked_loss_and_its_gradients_equal_the_full_logits_ones(chunk):
    torch.manual_seed(0)
    n, d, v = 64, 16, 300
    h0, w0 = torch.randn(n, d, dtype=torch.float64), torch.randn(v, d, dtype=torch.float64) * 0.3
    y = torch.randint(0, v, (n,))
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    ref = F.cross_entropy(h @ w.T, y)  # float64: the reference
    (ref * 3.0).backward()  # an upstream gradient other than 1 reaches both inputs
    hc, wc = h0.float().requires_grad_(), w0.float().requires_grad_()
    got = ChunkedLinearXent.apply(hc, wc, y, chunk)
    (got * 3.0).backward()
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert hc.grad.dtype == wc.grad.dtype == torch.float32
    torch.testing.assert_close(hc.grad.double(), h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(wc.grad.double(), w.grad, rtol=1e-5, atol=1e-7)


def test_train_benchmark_times_the_variants_and_checks_them_against_the_recipe(capsys):
    from pipeline.bench.train import main

    assert main(["--quick", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    for name in ("recipe", "chunked", "bf16", "chunked_bf16"):
        assert res[f"{name}_step_s"] > 0 and res[f"{name}_tokens_per_s"] > 0
    assert res["chunked_loss_abs_diff"] < 1e-5 and res["chunked_grad_max_rel_diff"] < 1e-4  # fp32: the same math
    assert 0 < res["bf16_grad_max_rel_diff"] < 0.1  # bf16 products: close, not equal
    assert abs(sum(res[f"recipe_{k}_share"] for k in ("forward", "backward", "optimizer")) - 1) < 0.01
