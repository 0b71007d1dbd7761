"""``python -m pipeline.bench train``: its variants timed and checked against the recipe's step, JSON last."""

from __future__ import annotations

import json


def test_train_benchmark_times_the_variants_and_checks_them_against_the_recipe(capsys):
    from pipeline.bench.train import main

    assert main(["--quick", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    for name in ("recipe", "default_heap", "chunked", "bf16", "chunked_bf16"):
        assert res[f"{name}_step_s"] > 0 and res[f"{name}_tokens_per_s"] > 0
    assert res["kept_heap_speedup"] > 0 and "default_heap_speedup" not in res
    assert res["default_heap_loss_abs_diff"] == 0 and res["default_heap_grad_max_rel_diff"] == 0  # the allocator changes no bit
    assert res["chunked_loss_abs_diff"] < 1e-5 and res["chunked_grad_max_rel_diff"] < 1e-4  # fp32: the same math
    assert 0 < res["bf16_grad_max_rel_diff"] < 0.1  # bf16 products: close, not equal
    assert abs(sum(res[f"recipe_{k}_share"] for k in ("forward", "backward", "optimizer")) - 1) < 0.01
