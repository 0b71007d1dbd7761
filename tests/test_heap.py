"""pipeline.lib.heap.kept_heap: large blocks come from the heap inside it and are mapped afresh outside
it (glibc's own counters), blocks nest, training gives the same bits either way, and a C library that is
not glibc leaves everything as it was."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.lib import heap

BIG = 96 << 20  # above glibc's largest mmap threshold (32 MiB): mapped afresh by default


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mapped_bytes() -> int:
    """glibc's bytes in blocks served by mmap (``mallinfo2().hblkhd``)."""
    libc = heap.glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later (mallinfo2)")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


def mapped_while_held(nbytes: int = BIG) -> int:
    """How much glibc's mapped bytes grow while a block of ``nbytes`` is held."""
    before = mapped_bytes()
    block = torch.empty(nbytes, dtype=torch.uint8)
    grown = mapped_bytes() - before
    del block
    return grown


def fresh(code: str) -> list:
    """Run ``code`` in a fresh interpreter (``heap`` and :func:`mapped_while_held` imported; it prints
    a JSON list last) and return that list. In this process, a free block of 96 MB that an earlier
    test left inside the heap would serve the next one without a mapping, whatever the settings."""
    mapped_bytes()  # skips where glibc has no mallinfo2
    prelude = "import json\nfrom pipeline.lib import heap\nfrom tests.test_heap import mapped_while_held\n"
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_large_blocks_come_from_the_heap_inside_and_are_mapped_outside():
    before, inside, after = fresh("""
        before = mapped_while_held()
        with heap.kept_heap() as active:
            assert active
            inside = mapped_while_held()
        print(json.dumps([before, inside, mapped_while_held()]))
    """)
    assert before >= BIG  # glibc's default: a fresh mapping
    assert inside == 0
    assert after >= BIG  # the defaults are back


def test_blocks_nest_and_only_the_outermost_restores():
    inner_active, between, after = fresh("""
        with heap.kept_heap():
            with heap.kept_heap() as inner:
                pass
            between = mapped_while_held()
        print(json.dumps([inner, between, mapped_while_held()]))
    """)
    assert inner_active
    assert between == 0  # the inner block's end left the setting alone
    assert after >= BIG


def runs_inside_kept_heap(fn) -> bool:
    """Whether ``fn``, or a function it wraps (``torch.no_grad`` and others), was decorated with ``kept_heap()``:
    its wrapper's closure holds the context manager made from ``kept_heap``'s generator."""
    while fn is not None:
        if any(getattr(c.cell_contents, "func", None) is heap.kept_heap.__wrapped__ for c in fn.__closure__ or ()):
            return True
        fn = getattr(fn, "__wrapped__", None)
    return False


def test_the_decorated_stages_functions_run_inside_it():
    from pipeline.lib import mixfit, scoring, selection, training
    from pipeline.lib.mixsearch import Search

    for fn in (training.train_model, scoring.evaluate, mixfit.shard_moments, selection.gradient_sketches, Search.descend):
        assert runs_inside_kept_heap(fn), fn.__qualname__
    assert not runs_inside_kept_heap(scoring.nll_batch)  # the check tells a function decorated otherwise apart
    seen = []
    wrapped = heap.kept_heap()(lambda: seen.append(mapped_while_held()))
    wrapped()
    assert seen == [0]


def test_training_gives_the_same_bits_with_and_without_it(tmp_path):
    """The tiny recipe trained by ``train_model`` (inside ``kept_heap``) and by its undecorated body
    (glibc's defaults), from the same weights and data: identical tensors, identical loss curve."""
    from pipeline.lib.training import train_model
    from pipeline.params.model import OptimConfig
    from tests.test_device import token_slice
    from tests.test_pool import tiny_llama

    sl = token_slice(tmp_path / "tokens")
    recipe = OptimConfig(tokens=4096, lr=3e-3, batch_size=4, seq_len=32, log_every=4)
    start = tiny_llama(hidden=32)
    runs = {}
    for tag, fn in (("kept", train_model), ("default", train_model.__wrapped__)):
        model = tiny_llama(hidden=32)
        model.load_state_dict(start.state_dict())
        summary, _ = fn(model, [sl], [1.0], recipe, seed=0, live_dir=tmp_path / f"live-{tag}", desc=tag)
        runs[tag] = (summary, {k: v.clone() for k, v in model.state_dict().items()})
    assert runs["kept"][0] == runs["default"][0]
    assert runs["kept"][0]["final_loss"] < np.log(97)  # it trained: the comparison is not between two untouched models
    for name, t in runs["default"][1].items():
        assert torch.equal(runs["kept"][1][name], t), name


def test_without_glibc_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(heap, "glibc", lambda: None)
    with heap.kept_heap() as active:
        assert active is False
        x = torch.ones(1000)
    assert float(x.sum()) == 1000.0


def test_steps_of_the_default_models_shape_give_the_same_bits_with_and_without_it():
    """Two recipe steps on the default model's shape, whose [2048, 8192] logits (64 MiB) and their
    gradients are the blocks the setting moves into the heap: identical weights after them."""
    from pipeline.bench.train import SHAPES, Trainer, random_model

    vocab, *_, batch, seq = SHAPES["default"]
    model = random_model("default")
    x = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(2))
    after = {}
    for name in ("default_heap", "recipe"):
        tr = Trainer(model, name)
        tr.steps(x, 2)
        after[name] = tr.model.state_dict()
    assert any(not torch.equal(after["recipe"][k], v) for k, v in model.state_dict().items())  # the steps moved it
    for k, v in after["default_heap"].items():
        assert torch.equal(after["recipe"][k], v), k
