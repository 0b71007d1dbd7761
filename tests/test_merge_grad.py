"""merge_grad, the gradient of a loss with respect to the mixture weights through the merge, equals
autograd through the reference merge (theta(w) = sum_k w_k theta_k built from the shard tensors)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch.func import functional_call

from pipeline.lib.adjoint import merge_grad
from pipeline.lib.merging import merge_into
from pipeline.lib.models import load_model
from pipeline.lib.pool import ShardPool
from pipeline.lib.runtime import StageError
from pipeline.lib.training import lm_loss
from tests.test_pool import make_checkpoints


def autograd_grad(seed_dir, shards: dict, w: list[float], x: torch.Tensor) -> torch.Tensor:
    """dL/dw by autograd: every parameter the explicit weighted sum of the shards' stored tensors."""
    model = load_model(seed_dir)
    sds = [load_file(p / "model.safetensors") for p in shards.values()]
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    params = {n: sum(wt[k] * sd[n].double() for k, sd in enumerate(sds)).float() for n in sds[0]}
    loss = lm_loss(lambda **kw: functional_call(model, params, args=(), kwargs=kw), x)
    loss.backward()
    return wt.grad


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("w", [[1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.5, -0.25, 0.75]])
def test_merge_grad_equals_autograd_through_the_reference_merge(tmp_path, tie, w):
    seed_dir, shards = make_checkpoints(tmp_path, k=3, tie=tie, hidden=32)
    x = torch.randint(0, 97, (3, 33), generator=torch.Generator().manual_seed(1))
    want = autograd_grad(seed_dir, shards, w, x)
    model = load_model(seed_dir)
    with ShardPool(shards, seed=seed_dir) as pool:
        merge_into(model, w, pool)
        model.zero_grad()
        lm_loss(model, x).backward()
        got = merge_grad(model, pool, chunk_bytes=4096)  # several chunks per tensor
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_merge_grad_without_a_backward_pass_is_a_clear_error(tmp_path):
    seed_dir, shards = make_checkpoints(tmp_path, k=2)
    model = load_model(seed_dir)
    with ShardPool(shards, seed=seed_dir) as pool, pytest.raises(StageError, match="has no gradient: run loss.backward"):
        merge_grad(model, pool)
