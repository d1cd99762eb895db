"""Fitting the loss-curve law (:mod:`scaling.curve_law`) with the approach-3 machinery.

``C`` is optimised as ``c = log(C * S2_max)`` so its start values read as the annealing bonus of
the most-annealed point, in loss units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from chinchax.errors import ScalingError
from scaling.curve_law import CURVE_NAMES, CurveLaw, CurvePoints
from scaling.fit_approach3 import polish
from scaling.fit_bootstrap import point_weights, resample_runs
from scaling.fit_config import FitConfig
from scaling.lbfgs import lbfgs_batched

C_AXIS = (-5.0, -3.0, -1.0)  # annealing bonus of the most-annealed point: 0.7%, 5%, 37% of a nat
LOG_SCALED = ("E", "A", "B", "C")


class CurveObjective:
    """Weighted mean Huber loss of ``log L_hat - log L``; ``L_hat <= 0`` gives ``inf``."""

    def __init__(self, points: CurvePoints, delta: float, fixed: Mapping[str, float], *,
                 weights: np.ndarray | None = None, weight_rows: np.ndarray | None = None,
                 dtype: type = np.float64) -> None:
        self.dtype = dtype
        self.s2_scale = float(points.s2.max()) if points.s2.max() > 0 else 1.0
        self.log_n = np.log(points.obs.n_params).astype(dtype)
        self.log_s1 = np.log(points.s1).astype(dtype)
        self.s2 = (points.s2 / self.s2_scale).astype(dtype)
        self.log_l = np.log(points.obs.loss).astype(dtype)
        self.delta = float(delta)
        self.free = [i for i, n in enumerate(CURVE_NAMES) if n not in fixed]
        self.theta_fixed = np.array([self.to_theta(n, fixed[n]) if n in fixed else 0.0
                                     for n in CURVE_NAMES])
        self.weights = (np.ones((1, self.log_n.size)) if weights is None else weights).astype(dtype)
        self.weight_rows = weight_rows

    def to_theta(self, name: str, value: float) -> float:
        scale = self.s2_scale if name == "C" else 1.0
        return math.log(value * scale) if name in LOG_SCALED else float(value)

    def theta(self, x: np.ndarray) -> np.ndarray:
        theta = np.broadcast_to(self.theta_fixed, (x.shape[0], 6)).copy()
        theta[:, self.free] = x
        return theta

    def coefficients(self, theta: np.ndarray) -> np.ndarray:
        out = np.array(theta, dtype=np.float64, copy=True)
        out[..., [0, 1, 2, 5]] = np.exp(out[..., [0, 1, 2, 5]])
        out[..., 5] /= self.s2_scale
        return out

    def __call__(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e, a, b, alpha, beta, c = self.theta(x).astype(self.dtype).T
        term_a = np.exp(a[:, None] - np.multiply.outer(alpha, self.log_n))
        term_b = np.exp(b[:, None] - np.multiply.outer(beta, self.log_s1))
        term_c = np.multiply.outer(np.exp(c), self.s2)
        total = np.exp(e)[:, None] + term_a + term_b - term_c
        bad = ~(total > 0).all(axis=1)
        residual = np.log(np.where(total > 0, total, 1.0)) - self.log_l
        clipped = np.clip(residual, -self.delta, self.delta)
        huber = clipped * (residual - 0.5 * clipped)
        w = self.weights[0][None, :] if self.weight_rows is None else self.weights[self.weight_rows[rows]]
        norm = 1.0 / (self.delta * w.sum(axis=1))
        value = np.einsum("kn,kn->k", huber, w) * norm
        coef = clipped / np.where(total > 0, total, 1.0) * w * norm[:, None]
        grad = np.stack([coef.sum(axis=1) * np.exp(e), (term_a * coef).sum(axis=1),
                         (term_b * coef).sum(axis=1), -(term_a * coef) @ self.log_n,
                         -(term_b * coef) @ self.log_s1, -(term_c * coef).sum(axis=1)], axis=1)
        value = np.where(bad, np.inf, value)
        return value.astype(np.float64), grad[:, self.free].astype(np.float64)


@dataclass(frozen=True)
class CurveFit:
    """The best curve-law fit, the restarts that seed its bootstrap, and how many starts converged."""

    law: CurveLaw
    objective: float
    n_starts: int
    n_converged: int
    restarts: np.ndarray
    n_failed: int = 0
    warnings: tuple[str, ...] = ()


def curve_starts(config: FitConfig, free: tuple[str, ...]) -> np.ndarray:
    grid = config.grid
    axes = {"E": grid.e, "A": grid.a, "B": grid.b, "alpha": grid.alpha, "beta": grid.beta, "C": C_AXIS}
    mesh = np.meshgrid(*(np.asarray(axes[n], dtype=np.float64) for n in free), indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def fit_curve(points: CurvePoints, config: FitConfig = FitConfig()) -> CurveFit:
    """``config.fixed`` may pin ``E`` (or others)."""
    fixed = {k: float(v) for k, v in config.fixed.items() if k in CURVE_NAMES}
    free = tuple(n for n in CURVE_NAMES if n not in fixed)
    if points.obs.n_runs < 3 or len(points) <= len(free):
        raise ScalingError(f"a curve fit of {len(free)} coefficients needs 3 or more runs and more "
                           f"than {len(free)} evals, got {points.obs.n_runs} runs and {len(points)} evals",
                           hint="add runs, or keep more evals (lower --drop-early)")
    starts = curve_starts(config, free)
    screen = CurveObjective(points, config.huber_delta, fixed, dtype=np.dtype(config.search_dtype).type)
    eps = float(np.finfo(config.search_dtype).eps)
    search = lbfgs_batched(screen, starts, max_iter=config.max_iter, memory=config.memory,
                           gtol=max(config.gtol, 10 * eps), ftol=max(config.ftol, 10 * eps))
    if not np.isfinite(search.f).any():
        raise ScalingError("no start of the grid gave a finite curve objective",
                           hint="check the runs' losses and schedules, or pin E (--fix E=...)")
    objective = CurveObjective(points, config.huber_delta, fixed)
    theta, result, best, restarts = polish(objective, search, config)
    law = CurveLaw(*map(float, objective.coefficients(theta[best])), lam=points.lam)
    return CurveFit(law=law, objective=float(result.f[best]), n_starts=len(starts),
                    n_converged=int(search.converged.sum()), restarts=restarts)


def bootstrap_curve(points: CurvePoints, fit: CurveFit, config: FitConfig) -> CurveFit:
    """A replicate that does not converge to a finite objective counts in ``n_failed``."""
    fixed = {k: float(v) for k, v in config.fixed.items() if k in CURVE_NAMES}
    free_cols = [i for i, n in enumerate(CURVE_NAMES) if n not in fixed]
    starts = fit.restarts[: max(config.bootstrap_starts, 1)][:, free_cols]
    count, n_starts = config.bootstrap, starts.shape[0]
    weights = point_weights(points.obs, resample_runs(points.obs.n_runs, count, config.seed))
    objective = CurveObjective(points, config.huber_delta, fixed, weights=weights,
                               weight_rows=np.repeat(np.arange(count), n_starts))
    result = lbfgs_batched(objective, np.tile(starts, (count, 1)), max_iter=config.max_iter,
                           memory=config.memory, gtol=config.gtol, ftol=config.ftol)
    f = result.f.reshape(count, n_starts)
    theta = objective.theta(result.x).reshape(count, n_starts, 6)
    best = theta[np.arange(count), np.argmin(f, axis=1)]
    rows = objective.coefficients(best)
    ok = np.isfinite(f.min(axis=1)) & np.isfinite(rows).all(axis=1)
    law = CurveLaw(**fit.law.coefficients, lam=fit.law.lam,
                   samples=tuple(tuple(map(float, r)) for r in rows[ok]))
    return CurveFit(law=law, objective=fit.objective, n_starts=fit.n_starts,
                    n_converged=fit.n_converged, restarts=fit.restarts, n_failed=int((~ok).sum()),
                    warnings=fit.warnings)
