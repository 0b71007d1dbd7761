"""Which shards made a model, from its weights alone: its update as a mixture of the shard updates.

A model fine-tuned from the seed moved by ``f = theta_f - theta_seed``; shard ``k``'s model moved
by ``d_k``. The plain estimate is non-negative least squares of ``f`` on the ``d_k`` (a free overall
scale, then normalised to the simplex): :func:`nnls_weights`. Measured on the default run it is
biased by shard: the shards were trained with Adam, which divides each coordinate's step by the root
of its second moment ``v``, and in a mixture that moment is the mixture's, not the shard's. A shard
whose gradients are large where another's are small moves those coordinates by about
``sqrt(v_k / v_mix)`` times more in the mixture than alone (email's coefficient came out ~1.2,
literature's ~0.6 in every mixture that held them).

:func:`adam_fit` models that. With ``v_k`` shard ``k``'s per-coordinate second moment of (raw)
minibatch gradients at the seed (:func:`shard_moments`), and the mixture's taken as
``sum_j w_j v_j`` (the noise-dominated regime, where a batch's second moment is the weighted mean of
its sources'), the update of a model trained on weights ``w`` for a total of ``s`` shard budgets is
predicted coordinate-wise as

    pred_i(c) = sum_k c_k d_ki v_ki^p / (sum_j w_j v_ji)^p,   c = s w,  p = 1/2 (Adam's root)

exact for a single shard (``pred(c e_k) = c d_k``) and the plain linear model when all ``v_k`` are
equal or ``p = 0``. Non-negative ``c`` minimise ``||pred(c) - f||^2`` (projected Levenberg-Marquardt with
the analytic Jacobian), started from the plain estimate; ``w = c / sum(c)``. The unexplained share
``||pred - f||^2 / ||f||^2`` tells a model made from these shards (here 0.28-0.49: the rest is
SGD's data-order noise) from one that was not (another seed, random weights, other data).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from scipy.optimize import nnls
from threadpoolctl import threadpool_limits

from pipeline.lib.heap import kept_heap
from pipeline.lib.runtime import StageError, progress
from pipeline.lib.tokens import Slice, batches, mixture_schedule
from pipeline.lib.training import lm_loss

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Coords:
    """The coordinates a fit reads: tensor names in order, their shapes, and (on large models) a
    seeded sample of flat indices into their concatenation."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sample: np.ndarray | None

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes)) if self.sample is None else int(self.sample.size)


def coords_of(seed_dir: Path, params: Sequence[str], max_coords: int, seed: int) -> Coords:
    """The floating tensors of the seed checkpoint that are trained parameters (``params``: the
    model's parameter names; tied copies are not in the file), sampled down to ``max_coords``."""
    with safe_open(str(Path(seed_dir) / WEIGHTS), framework="pt") as f:
        names = tuple(n for n in f.keys() if n in set(params) and f.get_slice(n).get_dtype() in ("F32", "BF16", "F16", "F64"))
        shapes = tuple(tuple(f.get_slice(n).get_shape()) for n in names)
    total = int(sum(int(np.prod(s)) for s in shapes))
    sample = None
    if total > max_coords:
        sample = np.sort(np.random.default_rng(seed).choice(total, size=max_coords, replace=False))
    return Coords(names, shapes, sample)


def read_flat(model_dir: Path, coords: Coords) -> np.ndarray:
    """The model's parameters at ``coords`` as one float64 vector; a StageError naming the file when
    it lacks a tensor or has another shape (a model of another architecture)."""
    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise StageError(f"{path}: no safetensors checkpoint here; give a model folder the pipeline wrote (or convert one)")
    parts = []
    with safe_open(str(path), framework="pt") as f:
        have = set(f.keys())
        for name, shape in zip(coords.names, coords.shapes):
            if name not in have:
                raise StageError(f"{path}: no tensor {name!r}: not a model fine-tuned from this seed (another architecture)")
            t = f.get_tensor(name)
            if tuple(t.shape) != shape:
                raise StageError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the seed's is {shape}: not a model "
                                 f"fine-tuned from this seed (another architecture)")
            parts.append(t.reshape(-1).to(torch.float64).numpy())
    flat = np.concatenate(parts)
    return flat if coords.sample is None else flat[coords.sample]


@kept_heap()
def shard_moments(model, slices: Sequence[Slice], n_batches: int, batch_size: int, seq_len: int, coords: Coords,
                  seed: int, device: torch.device = torch.device("cpu")) -> np.ndarray:
    """``[K, coords.size]``: each slice's mean squared minibatch gradient at ``model``'s weights
    (Adam's second moment ``v``). ``n_batches`` batches of each slice in a seeded order.

    The gradients are not clipped, although training clips them: Adam's step ``m / sqrt(v)`` does not
    change when every gradient of a run is scaled alike, so clipping (by a norm that is about constant
    within a run) leaves a shard's update as it was; but it would scale each shard's moments by its own
    norm (here email's and legal_spdx's batches exceed the clip, the others' mostly do not), while in a
    mixture the shards' raw gradients add up in one batch before it is clipped. So the moments whose
    mixture ``sum_j w_j v_j`` predicts the mixture's scaling are the raw ones (measured on the default
    run: mean L1 of the truths 0.088 against 0.097 with clipped moments, the same power and batches)."""
    params = dict(model.named_parameters())
    model.to(device).train()
    out = np.zeros((len(slices), coords.size))
    for k, s in enumerate(progress(slices, desc="moments", unit="shard")):
        order, _ = mixture_schedule([s], [1.0], n_batches * batch_size, seq_len, seed + k)
        acc = None
        for x in batches([s], order, seq_len, batch_size):
            model.zero_grad(set_to_none=True)
            lm_loss(model, torch.from_numpy(x).to(device)).backward()
            g = torch.cat([params[n].grad.reshape(-1).to(torch.float64) for n in coords.names]).cpu()
            g2 = g * g
            acc = g2 if acc is None else acc + g2
        v = (acc / n_batches).numpy()
        out[k] = v if coords.sample is None else v[coords.sample]
    model.zero_grad(set_to_none=True)
    model.eval()
    return out


def nnls_weights(d: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative ``c`` minimising ``||d.T c - f||`` (``d``: ``[K, P]``), solved on the K x K Gram
    matrix; and the unexplained share of ``||f||^2``."""
    gram = d @ d.T
    b = d @ f
    ff = float(f @ f)
    # ||d.T c - f||^2 = c'Gc - 2b'c + ff = ||L'c - L^-1 b||^2 + const with G = L L'
    lower = np.linalg.cholesky(gram + 1e-12 * np.trace(gram) / len(gram) * np.eye(len(gram)))
    c, _ = nnls(lower.T, np.linalg.solve(lower, b))
    resid = float(c @ gram @ c - 2 * b @ c + ff)
    return c, max(resid, 0.0) / ff


class AdamModel:
    """The update a model trained on a mixture makes, from the shard updates ``d`` and second moments ``v``
    (both ``[K, P]``); coordinates no shard's gradient reached (all ``v`` zero) are left out.

    ``power`` is the exponent of the moment ratio: 0.5 is Adam's square root (the noise-dominated
    regime); 0 is the plain linear model. Predicted: ``sum_k c_k d_k v_k^p / (sum_j w_j v_j)^p``.
    """

    def __init__(self, d: np.ndarray, v: np.ndarray, power: float = 0.5):
        keep = v.sum(0) > 0
        self.keep, self.power = keep, power
        # row-major: a boolean index on the columns returns the [K, P] copy column by column, and the
        # blocks of normal_equations read rows (a strided read of every block otherwise)
        self.v = np.ascontiguousarray(v[:, keep])
        self.a = np.ascontiguousarray(d[:, keep] * self.v ** power)

    def _parts(self, c: np.ndarray):
        total = c.sum()
        u = np.maximum(c @ self.v, 1e-30)  # a coordinate only zero-weight shards reached
        scale = (total / u) ** self.power  # (sum_j w_j v_j)^-p with w = c / total
        return total, u, scale, c @ self.a

    def predict(self, c: np.ndarray) -> np.ndarray:
        _, _, scale, big_a = self._parts(c)
        return big_a * scale

    def residual_jacobian(self, c: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``pred(c) - f`` (``f`` on the kept coordinates) and its Jacobian ``[K, P]`` in ``c``: the plain
        reference of :meth:`normal_equations`, which the fit uses."""
        total, u, scale, big_a = self._parts(c)
        pred = big_a * scale
        # pred = A (S / u)^p: d/dc_k = a_k (S/u)^p + p pred / S - p pred v_k / u
        jac = self.a * scale
        jac -= self.v * (self.power * pred / u)
        jac += self.power * pred / total
        return pred - f, jac

    def normal_equations(self, c: np.ndarray, f: np.ndarray, chunk: int = 1 << 14) -> tuple[float, np.ndarray, np.ndarray]:
        """``||r||^2``, ``J J^T`` and ``J r`` of :meth:`residual_jacobian` (``f`` on the kept coordinates),
        a block of ``chunk`` coordinates at a time: the ``[K, P]`` Jacobian is never formed, so each call
        reads ``a`` and ``v`` once and the products run on blocks that stay in cache (the per-coordinate
        vectors in place: ``python -m pipeline.bench mixfit``)."""
        total, p = c.sum(), self.power
        k = len(c)
        loss, jtj, jtr = 0.0, np.zeros((k, k)), np.zeros(k)
        for lo in range(0, self.v.shape[1], chunk):
            a, v = self.a[:, lo : lo + chunk], self.v[:, lo : lo + chunk]
            u = np.maximum(c @ v, 1e-30)
            scale = np.divide(total, u)
            np.power(scale, p, out=scale)  # (sum_j w_j v_j)^-p
            pred = c @ a
            pred *= scale
            r = pred - f[lo : lo + chunk]
            q = pred * p  # d pred / d c_k = a_k scale - v_k p pred / u + p pred / S
            jac = a * scale
            jac += q / total
            q /= u
            jac -= v * q
            loss += float(r @ r)
            jtj += jac @ jac.T
            jtr += jac @ r
        return loss, jtj, jtr


@dataclass(frozen=True)
class Fit:
    coef: np.ndarray  # c >= 0: total shard budgets per shard
    weights: np.ndarray  # c / sum(c)
    unexplained: float  # ||residual||^2 / ||f||^2


def _fit(coef: np.ndarray, unexplained: float) -> Fit:
    total = coef.sum()
    weights = coef / total if total > 0 else np.full(coef.shape, np.nan)
    return Fit(coef, weights, unexplained)


def _one_blas_thread():
    """BLAS at one thread during the fits. OpenBLAS splits the sum of a long dot product among its threads
    (``f @ f`` and ``d @ f`` over every coordinate), so with its default, a thread per core, the fits'
    last bits depended on the machine's core count; at one thread they do not (nor, for the Adam fits,
    on how many run side by side: tests/test_mixfit.py). It costs nothing: a second BLAS thread gained
    nothing on the fits' [K, 16k] blocks, and fits side by side with it ran slower than one by one."""
    return threadpool_limits(limits=1, user_api="blas")


def plain_fit(d: np.ndarray, f: np.ndarray) -> Fit:
    """The baseline: non-negative least squares of the update on the shard updates, normalised."""
    with _one_blas_thread():
        return _fit(*nnls_weights(d, f))


def adam_fit(model: AdamModel, d: np.ndarray, f: np.ndarray, iters: int = 100, tol: float = 1e-10,
             start: np.ndarray | None = None) -> Fit:
    """Non-negative ``c`` with the Adam-scaled prediction closest to ``f``: projected Levenberg-Marquardt
    on the K x K normal equations, from the plain estimate (``start``: it, computed once by a caller that
    fits ``f`` under several powers), until a step gains less than ``tol`` of ``||f||^2``."""
    c = nnls_weights(d, f)[0] if start is None else start
    c = np.maximum(c, 1e-3 * max(c.max(), 1e-3))
    fk = f[model.keep]
    ff = float(f @ f)
    loss, jtj, jtr = model.normal_equations(c, fk)
    damp = 1e-3
    for _ in range(iters):
        free = (c > 0) | (jtr < 0)  # a shard at zero that the gradient pushes below stays there
        step = np.zeros_like(c)
        sub = jtj[np.ix_(free, free)]
        step[free] = np.linalg.solve(sub + damp * np.diag(np.diag(sub) + 1e-12), -jtr[free])
        trial = np.maximum(c + step, 0.0)
        if trial.sum() <= 0:
            damp *= 10
            continue
        new, jtj_new, jtr_new = model.normal_equations(trial, fk)
        if new < loss:
            gain, c, jtj, jtr, loss = loss - new, trial, jtj_new, jtr_new, new
            damp = max(damp / 3, 1e-9)
            if gain < tol * ff:
                break
        else:
            damp *= 4
            if damp > 1e8:
                break
    resid = loss + float(np.sum(f[~model.keep] ** 2))
    return _fit(c, resid / ff)


POWERS = tuple(round(0.05 * i, 2) for i in range(11))  # 0 (the plain model) to 0.5 (Adam's square root)


def _fits(d: np.ndarray, v: np.ndarray, updates: dict, powers: Sequence[float], workers: int = 1):
    """``(power, key, fit)`` for every power and update, in that order: one :class:`AdamModel` in memory at
    a time, each update's plain estimate (the fits' start) computed once for all powers, up to ``workers``
    updates fitted at once, in a kept heap (:mod:`pipeline.lib.heap`: each step's [K, 16k] temporaries
    were mapped and faulted in afresh, in both threads). Against one fit after the other with the
    defaults: ``fits_speedup`` of ``python -m pipeline.bench mixfit``; the same fits (tests/test_mixfit.py)."""
    workers = max(1, min(workers, len(updates)))
    with (progress(total=len(powers) * len(updates), desc="fits", unit="fit") as bar, _one_blas_thread(), kept_heap(),
          ThreadPoolExecutor(workers) as pool):
        starts = {m: nnls_weights(d, f)[0] for m, f in updates.items()}
        for p in powers:
            fit = functools.partial(_fit_one, AdamModel(d, v, p), d, updates, starts)
            for m, result in zip(updates, pool.map(fit, updates)):
                yield p, m, result
                bar.update()


def _fit_one(model: AdamModel, d: np.ndarray, updates: dict, starts: dict, m) -> Fit:
    return adam_fit(model, d, updates[m], start=starts[m])


def calibrate_power(d: np.ndarray, v: np.ndarray, cases: Sequence[tuple[np.ndarray, np.ndarray]],
                    powers: Sequence[float] = POWERS, workers: int = 1) -> tuple[float, dict[float, float]]:
    """The ``power`` whose fit has the smallest mean L1 error on ``cases`` (update, true weights):
    models of known data kept apart from those the estimate is judged on. Returns it and the error by power."""
    l1: dict[float, list[float]] = {p: [] for p in powers}
    for p, i, fit in _fits(d, v, {i: f for i, (f, _) in enumerate(cases)}, powers, workers):
        l1[p].append(float(np.abs(fit.weights - cases[i][1]).sum()))
    errors = {p: float(np.mean(e)) for p, e in l1.items()}
    return min(errors, key=lambda p: (errors[p], -p)), errors


def fit_power(d: np.ndarray, v: np.ndarray, updates: dict[str, np.ndarray],
              powers: Sequence[float] = POWERS, workers: int = 1) -> dict[str, tuple[float, Fit]]:
    """Per update: the ``power`` whose Adam fit leaves the least unexplained share, and that fit. The power
    is then a parameter of the update model fitted with the weights by least squares, model by model,
    from the weights alone (no model of known data needed). On the default run the updates chose 0.1-0.2
    for the unequal mixtures (a 10% shard's coordinates moved about linearly) and 0.15-0.5 for the
    by-token truths, which one calibrated power could not serve both."""
    best: dict[str, tuple[float, Fit]] = {}
    for p, m, fit in _fits(d, v, updates, powers, workers):
        if m not in best or fit.unexplained < best[m][1].unexplained:
            best[m] = (p, fit)
    return best


def model_update(model_dir: Path, seed_flat: np.ndarray, coords: Coords) -> np.ndarray:
    """``theta_model - theta_seed`` at ``coords``; a StageError when the model is the seed itself."""
    f = read_flat(model_dir, coords) - seed_flat
    if not np.any(f):
        raise StageError(f"{model_dir}: its weights equal the seed's (no update to attribute): give a model fine-tuned from the seed")
    return f
