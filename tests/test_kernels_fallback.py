"""When the extension cannot be built, every public kernel still works through the pure-torch
reference: one warning, never a crash. Also the build cache's stale-lock cleanup."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline import kernels
from pipeline.kernels import _ext

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def broken_build(monkeypatch):
    """A fresh load state whose build fails like a machine without a compiler."""
    monkeypatch.setattr(_ext, "_state", _ext._State())

    def fail(*_args, **_kwargs):
        raise RuntimeError("Error building extension 'shardmix_kernels': c++: command not found")

    monkeypatch.setattr(_ext, "_compile_and_load", fail)


def test_reference_fallback_in_process(broken_build, caplog):
    xs = [torch.randn(1001) for _ in range(3)]
    hidden, weight, targets = torch.randn(20, 8), torch.randn(50, 8), torch.randint(0, 50, (20,))
    with caplog.at_level(logging.WARNING, logger="pipeline.kernels._ext"):
        merged = kernels.weighted_sum(xs, [0.5, 0.25, 0.25])
        multi = kernels.multi_weighted_sum(xs, [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
        res = kernels.linear_cross_entropy(hidden, weight, targets)
        impls = kernels.available_impls()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "pure-torch reference" in warnings[0].getMessage() and "command not found" in warnings[0].getMessage()
    assert impls == ["reference"]
    torch.testing.assert_close(merged, 0.5 * xs[0] + 0.25 * xs[1] + 0.25 * xs[2])
    torch.testing.assert_close(multi[1], 2.0 * xs[2])
    full = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert res.total == pytest.approx(float(full), rel=1e-5) and res.count == 20
    with pytest.raises(RuntimeError, match="impl='cpu' unavailable: RuntimeError: Error building extension"):
        kernels.weighted_sum(xs, [1.0, 1.0, 1.0], impl="cpu")


def test_disabled_by_env(monkeypatch):
    monkeypatch.setattr(_ext, "_state", _ext._State())
    monkeypatch.setenv("SHARDMIX_DISABLE_EXTENSION", "1")
    assert kernels.available_impls() == ["reference"]
    assert "SHARDMIX_DISABLE_EXTENSION" in (_ext.load_error() or "")


def test_no_compiler_subprocess(tmp_path):
    """A real failed build (compiler missing) in a fresh process and an empty cache."""
    code = (
        "import json, torch\n"
        "from pipeline import kernels\n"
        "xs = [torch.arange(10.0), torch.ones(10)]\n"
        "out = kernels.weighted_sum(xs, [2.0, -1.0])\n"
        "r = kernels.linear_cross_entropy(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 2]))\n"
        "print(json.dumps({'out': out.tolist(), 'total': r.total, 'impls': kernels.available_impls()}))\n"
    )
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), SHARDMIX_EXTENSIONS_DIR=str(tmp_path / "ext"),
               PYTHONPATH=str(REPO))
    env.pop("SHARDMIX_DISABLE_EXTENSION", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["out"] == [2.0 * i - 1.0 for i in range(10)]
    assert res["impls"] == ["reference"]
    expect = 3 * float(torch.logsumexp(torch.eye(3)[0], 0) - 1.0)
    assert res["total"] == pytest.approx(expect, rel=1e-6)
    assert proc.stderr.count("using the slower pure-torch reference") == 1, proc.stderr[-3000:]


def test_stale_lock_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDMIX_EXTENSIONS_DIR", str(tmp_path))
    build_dir = _ext.extensions_dir() / _ext.EXT_NAME
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # left behind by a killed build
    seen = {}

    def fake_compile(path, with_cuda, verbose):
        seen["lock_exists"] = (path / "lock").exists()

    monkeypatch.setattr(_ext, "_compile_and_load", fake_compile)
    _ext._locked_build(with_cuda=False, verbose=False)
    assert seen == {"lock_exists": False}


@pytest.mark.parametrize("beside", [True, False], ids=["ninja beside python", "no ninja beside python"])
def test_the_build_runs_the_ninja_beside_the_interpreter(tmp_path, monkeypatch, beside):
    """Two ninja versions sharing the build folder rebuild everything each time they alternate, so
    the build runs the one installed with this interpreter whatever PATH says; PATH is restored."""
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    if beside:
        (bindir / "ninja").write_text("")
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    seen = {}

    def fake_load(**kwargs):
        seen["path"] = os.environ["PATH"]

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    _ext._compile_and_load(tmp_path / "build", with_cuda=False, verbose=False)
    assert seen["path"] == (f"{bindir}{os.pathsep}/usr/bin:/bin" if beside else "/usr/bin:/bin")
    assert os.environ["PATH"] == "/usr/bin:/bin"


def test_checkouts_sharing_a_build_cache_get_their_own_folders(tmp_path, monkeypatch):
    """Two checkouts with one $SHARDMIX_EXTENSIONS_DIR: ninja's build file names sources by absolute
    path, so a shared folder would be rebuilt each time the other checkout builds."""
    monkeypatch.setenv("SHARDMIX_EXTENSIONS_DIR", str(tmp_path))
    here = _ext.extensions_dir()
    assert here.parent == tmp_path and here == _ext.extensions_dir()
    monkeypatch.setattr(_ext, "CSRC", tmp_path / "other-checkout" / "csrc")
    other = _ext.extensions_dir()
    assert other.parent == tmp_path and other != here
