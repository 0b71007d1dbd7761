"""Optimisers on the simplex of mixture weights (``w >= 0``, ``sum w = 1``), numpy only.

- :func:`mirror_descent`: exponentiated gradient, ``w <- w * exp(-eta * g) / Z``, the mirror
  descent of the entropy on the simplex. The step is scale-free: ``eta = lr / range(g)`` of the
  first gradient, so ``lr`` is how many nats of log-weight the shard with the worst gradient loses
  against the best in the first step; it is halved whenever the loss rises (back to the best
  point). The best iterate is returned (the loss need not be convex).
- :func:`sparsify`: keep the ``m`` largest weights, renormalised.
- :func:`mixmin`: the weights of the output-space ensemble of shard models that minimise the
  weighted log loss of a target, ``-sum_t a_t log sum_k w_k p_k(t)`` (MixMin, Thudi et al. 2025);
  convex in ``w``, solved by its EM fixed point (monotone, no step size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Descent:
    """The result of :func:`mirror_descent`: the best weights seen, their loss, every step's loss."""

    w: np.ndarray
    loss: float
    history: list[float] = field(default_factory=list)


def normalised(w: np.ndarray) -> np.ndarray:
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    s = w.sum()
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"weights must have a positive sum, got {w.tolist()}")
    return w / s


def mirror_descent(value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], w0: np.ndarray, steps: int,
                   lr: float, floor: float = 1e-12, interior: float = 0.05, patience: int = 4,
                   tol: float = 0.0) -> Descent:
    """Minimise ``value_and_grad(w) -> (loss, dloss/dw)`` over the simplex from ``w0``.

    The start is moved ``interior`` of the way to uniform (a multiplicative update cannot leave a
    vertex or bring back a weight of exactly 0); weights below ``floor`` are held at it. At most
    ``steps`` evaluations; it stops early after ``patience`` steps in a row that do not improve
    the best loss by more than ``tol`` (a step that improves by less is still taken).
    """
    w = normalised((1 - interior) * normalised(w0) + interior / len(w0))
    best = Descent(w.copy(), np.inf)
    eta, best_g, stale = None, None, 0
    for _ in range(steps):
        loss, g = value_and_grad(w)
        g = np.asarray(g, dtype=np.float64)
        if not np.all(np.isfinite(g)) or not np.isfinite(loss):
            raise ValueError(f"the loss or its gradient is not finite: {loss}, {g.tolist()}")
        best.history.append(float(loss))
        if loss < best.loss:
            stale = stale + 1 if loss > best.loss - tol else 0
            best.w, best.loss, best_g = w.copy(), float(loss), g
            if stale >= patience:
                break
        elif eta is not None:
            eta /= 2  # overshot: a shorter step from the best point
            stale += 1
            if stale >= patience:
                break
        spread = float(best_g.max() - best_g.min())
        if spread == 0.0:
            break
        if eta is None:
            eta = lr / spread
        w = normalised(np.maximum(best.w * np.exp(-eta * (best_g - best_g.min())), floor))
    return best


def sparsify(w: np.ndarray, m: int) -> np.ndarray:
    """``w`` with all but its ``m`` largest entries set to 0, renormalised (ties: the lower index)."""
    w = normalised(w)
    if m >= np.count_nonzero(w):
        return w
    keep = np.argsort(-w, kind="stable")[:m]
    out = np.zeros_like(w)
    out[keep] = w[keep]
    return normalised(out)


def mixmin(logp: np.ndarray, token_weights: np.ndarray | None = None, iters: int = 500, tol: float = 1e-12) -> np.ndarray:
    """The ensemble weights minimising ``-sum_t a_t log sum_k w_k exp(logp[k, t])``.

    ``logp``: [K, T] log-probabilities of each target token under each shard model;
    ``token_weights``: [T] non-negative weights ``a_t`` (default: all 1). EM: ``w_k <-
    sum_t a_t r_kt / sum_t a_t`` with responsibilities ``r_kt = w_k p_kt / sum_j w_j p_jt``.
    """
    logp = np.asarray(logp, dtype=np.float64)
    k, t = logp.shape
    a = np.ones(t) if token_weights is None else np.asarray(token_weights, dtype=np.float64)
    a = a / a.sum()
    shift = logp.max(axis=0, keepdims=True)
    p = np.exp(logp - shift)  # per token, a common factor: responsibilities are unchanged
    w = np.full(k, 1.0 / k)
    for _ in range(iters):
        mix = w @ p
        new = w * (p @ (a / mix))
        new /= new.sum()
        if np.abs(new - w).max() < tol:
            w = new
            break
        w = new
    return w


def ensemble_loss(logp: np.ndarray, w: np.ndarray, token_weights: np.ndarray | None = None) -> float:
    """``-sum_t a_t log sum_k w_k p_k(t)`` with ``a`` normalised (the quantity :func:`mixmin` minimises)."""
    logp = np.asarray(logp, dtype=np.float64)
    a = np.ones(logp.shape[1]) if token_weights is None else np.asarray(token_weights, dtype=np.float64)
    a = a / a.sum()
    shift = logp.max(axis=0)
    with np.errstate(divide="ignore"):
        return float(-(a * (np.log(np.asarray(w) @ np.exp(logp - shift)) + shift)).sum())
