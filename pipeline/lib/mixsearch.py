"""The mixture to train on for a target: rivals, and mirror descent through the differentiable merge.

Everything here is the merged proxy on the target's dev part (the optimiser never sees the test
part; the test scores it records are the proxy's predictions, for the judge to compare with). The
proxy of weights ``w`` is ``seed + scale x (sum_k w_k theta_k - seed)`` (``SearchConfig.scale``: 1,
the plain weighted average; more, the size of a model trained for several shard budgets, with the
seed as the pool's last checkpoint), and its gradient with respect to ``w`` is ``scale`` times the
multi-dot's:

- the lattice: every shard alone and every pair at 1/2 : 1/2, merged and scored; it fixes the
  quadratic surrogate (:mod:`pipeline.lib.surrogate`), and the shards' per-token probabilities give
  MixMin's ensemble;
- the rivals: ``uniform`` over all shards, ``natural`` (proportional to the shards' training tokens),
  ``best_single`` (the shard with the lowest dev loss), ``best_candidate`` (the lowest of the
  proxy stage's candidate mixtures on dev: the surrogate ranks them all, its best few are merged
  and scored), ``mixmin`` (the convex optimum of the
  output-space ensemble of the shard models themselves, at scale 1 whatever the proxy's, Thudi et
  al. 2025) and ``surrogate`` (the quadratic's minimum on the simplex);
- ``recommended``: exponentiated-gradient descent (:func:`pipeline.lib.simplex.mirror_descent`) on the
  merged model's dev loss, the gradient with respect to the weights from one backward pass and the
  multi-dot (:func:`pipeline.lib.adjoint.merge_grad`), started from the surrogate's minimum, from
  uniform and from seeded random points; the best point by dev loss wins; with ``max_shards``, its
  largest weights are kept and the descent rerun on them. Should a rival score lower on dev than
  where the descent stopped (and respect ``max_shards``), the rival is the answer, and
  ``recommended.from`` says so.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.lib import simplex, surrogate
from pipeline.lib.adjoint import merge_grad
from pipeline.lib.device import CPU, Placement
from pipeline.lib.heap import kept_heap
from pipeline.lib.merging import merge_into
from pipeline.lib.targets import Target, loss, loss_backward

log = logging.getLogger(__name__)

RIVALS = ("uniform", "natural", "best_single", "best_candidate", "mixmin", "surrogate")
SCREEN = 5  # proxy candidates merged and scored on dev: the surrogate's best few (it ranks the rest for free)


@dataclass
class SearchConfig:
    steps: int
    lr: float
    tol: float
    restarts: int
    max_shards: int | None
    seed: int
    batch_size: int
    scale: float = 1.0  # the merged proxy of weights w: seed + scale x (sum_k w_k theta_k - seed)


@dataclass
class Search:
    """The merged proxy of one target, over a pool of K shards, on one resident model."""

    pool: object
    model: object
    target: Target
    names: list[str]
    cfg: SearchConfig
    place: Placement = CPU
    scored: dict[tuple, float] = field(default_factory=dict)  # rounded weights -> merged dev loss
    gradient_steps: int = 0  # forward+backward passes on dev, each with a multi-dot

    def row(self, w: np.ndarray, scale: float | None = None) -> list[float]:
        """The merge's weights over the pool for mixture ``w``: ``w`` itself, or with ``scale`` != 1
        ``scale x w`` and ``1 - scale`` on the seed (the pool's last checkpoint)."""
        scale = self.cfg.scale if scale is None else scale
        if len(self.pool) == len(self.names):
            if scale != 1.0:
                raise ValueError("a scaled merge needs the seed as the pool's last checkpoint")
            return w.tolist()
        return [*(scale * w).tolist(), 1.0 - scale]

    def merged(self, w: np.ndarray, part: str = "dev", per_token: dict | None = None, scale: float | None = None) -> float:
        """The target loss of the merge with weights ``w`` on ``part`` (dev scores of the search's
        own scale are remembered)."""
        w = simplex.normalised(w)
        key = tuple(np.round(w, 9))
        mine = scale is None or scale == self.cfg.scale
        if part == "dev" and per_token is None and mine and key in self.scored:
            return self.scored[key]
        merge_into(self.model, self.row(w, scale), self.pool)
        value = loss(self.model, self.target, part, self.cfg.batch_size, self.place, per_token)[0]
        if part == "dev" and mine:
            self.scored[key] = value
        return value

    def value_and_grad(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        merge_into(self.model, self.row(simplex.normalised(w)), self.pool)
        self.model.zero_grad(set_to_none=True)
        value = loss_backward(self.model, self.target, "dev", self.cfg.batch_size, self.place)
        return value, self.cfg.scale * merge_grad(self.model, self.pool).numpy()[: len(self.names)]

    def lattice(self) -> tuple[surrogate.Quadratic, np.ndarray, np.ndarray]:
        """The surrogate fitted on every shard alone and every pair; the shards' per-token
        log-probabilities on dev ([K, T]) and each token's weight (alpha_d / tokens of d)."""
        k = len(self.names)
        singles, logp = {}, []
        for i, s in enumerate(self.names):
            per_token: dict = {}
            singles[s] = self.merged(np.eye(k)[i], per_token=per_token)
            self.scored[tuple(np.round(np.eye(k)[i], 9))] = singles[s]
            if self.cfg.scale != 1.0:  # MixMin's ensemble is of the shard models themselves
                per_token = {}
                self.merged(np.eye(k)[i], per_token=per_token, scale=1.0)
            logp.append(np.concatenate([-per_token[e.domain] for e in self.target.sets["dev"]]))
        token_w = np.concatenate([np.full(e.predicted, self.target.weights[e.domain] / e.predicted) for e in self.target.sets["dev"]])
        pairs = []
        for j, l in itertools.combinations(range(k), 2):
            w = np.zeros(k)
            w[[j, l]] = 0.5
            pairs.append((w, self.merged(w)))
        return surrogate.fit(self.names, singles, pairs), np.stack(logp), token_w

    @kept_heap()
    def descend(self, starts: list[np.ndarray], support: list[int] | None = None) -> simplex.Descent:
        """Mirror descent from each start (on the face of ``support`` when given); the best by dev loss."""
        k = len(self.names)
        idx = list(range(k)) if support is None else support

        def on_face(v: np.ndarray) -> np.ndarray:
            w = np.zeros(k)
            w[idx] = v
            return w

        def vg(v: np.ndarray) -> tuple[float, np.ndarray]:
            value, g = self.value_and_grad(on_face(v))
            return value, g[idx]

        best = None
        for s in starts:
            res = simplex.mirror_descent(vg, simplex.normalised(s[idx]), self.cfg.steps, self.cfg.lr, tol=self.cfg.tol)
            self.gradient_steps += len(res.history)
            log.info("%s: descent from %s: dev loss %.5f -> %.5f in %d steps", self.target.name, np.round(s, 3).tolist(),
                     res.history[0], res.loss, len(res.history))
            if best is None or res.loss < best.loss:
                best = simplex.Descent(on_face(res.w), res.loss, res.history)
        return best

    def run(self, natural: np.ndarray, candidates: dict[str, np.ndarray]) -> dict:
        """Every method's weights, merged dev and test losses and surrogate prediction; the descent's
        own optimum; the surrogate's held-out error; the cost in passes (``cost``, reproducible) and
        in seconds (``seconds``, this machine's)."""
        k, t0 = len(self.names), time.perf_counter()
        quad, logp, token_w = self.lattice()
        t_lattice = time.perf_counter() - t0
        singles = np.array([self.scored[tuple(np.round(np.eye(k)[i], 9))] for i in range(k)])
        # the candidates ranked by the surrogate (free), the best SCREEN of them merged and scored
        screened = sorted(candidates, key=lambda n: quad.predict(candidates[n]))[:SCREEN]
        cand = {n: self.merged(candidates[n]) for n in screened}
        best_cand = min(cand, key=cand.get) if cand else None
        qp_w, _ = quad.minimize(seed=self.cfg.seed)
        weights = {"uniform": np.full(k, 1 / k), "natural": simplex.normalised(natural),
                   "best_single": np.eye(k)[int(np.argmin(singles))],
                   "best_candidate": candidates[best_cand] if best_cand else np.full(k, 1 / k),
                   "mixmin": simplex.mixmin(logp, token_w), "surrogate": qp_w}
        t1 = time.perf_counter()
        rng = np.random.default_rng(self.cfg.seed)
        starts = [qp_w, np.full(k, 1 / k)] + [rng.dirichlet(np.ones(k)) for _ in range(self.cfg.restarts)]
        best = self.descend(starts)
        if self.cfg.max_shards is not None and np.count_nonzero(best.w > 1e-6) > self.cfg.max_shards:
            support = sorted(np.argsort(-best.w)[: self.cfg.max_shards].tolist())
            best = self.descend([simplex.sparsify(best.w, self.cfg.max_shards)], support)
        t_descent = time.perf_counter() - t1
        # the answer is the lowest dev loss of all: the descent's, or a rival's it did not reach
        # (the descent starts slightly inside the simplex and stops on a stall); within max_shards
        weights["recommended"], origin = best.w, "descent"
        for name in RIVALS:
            w = weights[name]
            sparse_enough = self.cfg.max_shards is None or np.count_nonzero(w > 1e-6) <= self.cfg.max_shards
            if sparse_enough and self.merged(w) < self.merged(weights["recommended"]):
                weights["recommended"], origin = w, name
        methods = {}
        for name, w in weights.items():
            w = simplex.normalised(w)
            methods[name] = {"weights": dict(zip(self.names, np.round(w, 6).tolist())), "dev": self.merged(w),
                             "test": self.merged(w, "test"), "surrogate_dev": quad.predict(w)}
        methods["best_candidate"]["candidate"] = best_cand
        methods["recommended"]["from"] = origin
        held_out = [(quad.predict(np.array(key)), v) for key, v in self.scored.items() if np.count_nonzero(np.array(key) > 0) > 2]
        errors = [abs(p - v) for p, v in held_out]
        descent = {"weights": dict(zip(self.names, np.round(best.w, 6).tolist())), "dev": best.loss,
                   "history": best.history, "steps": self.cfg.steps, "starts": len(starts)}
        return {"methods": methods, "descent": descent,
                "surrogate": {"held_out_merges": len(errors), "max_abs_error": max(errors, default=None),
                              "mean_abs_error": float(np.mean(errors)) if errors else None,
                              "dev_spread": float(max(self.scored.values()) - min(self.scored.values()))},
                "cost": {"merges_scored": len(self.scored), "gradient_steps": self.gradient_steps},
                "seconds": {"lattice": round(t_lattice, 2), "descent": round(t_descent, 2),
                            "total": round(time.perf_counter() - t0, 2)}}
