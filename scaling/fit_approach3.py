"""Approach 3: ``L(N, D) = E + A/N**alpha + B/(D**beta N**gamma)`` by multi-start L-BFGS.

Huber loss of log residuals from every start at once, screened in float32 (NumPy vectorises
float32 exponentials on AVX2), the best distinct end points polished in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from chinchax.errors import ScalingError
from scaling.fit_config import (GRID_AXIS, LOG_SCALED, PARAMETER_NAMES, FitConfig, StartGrid, _emit)
from scaling.laws import ParametricLaw
from scaling.lbfgs import BatchResult, lbfgs_batched
from scaling.observations import Observations, require_runs

class HuberLogObjective:
    """Weighted mean Huber loss of log residuals, divided by ``delta`` and total weight.

    ``f`` then reads as a mean absolute log-residual, so tolerances hold for any data size;
    ``weight_rows[problem]`` picks a bootstrap resample's weights.
    """

    def __init__(self, obs: Observations, delta: float, fixed: Mapping[str, float],
                 weights: np.ndarray | None = None, weight_rows: np.ndarray | None = None,
                 dtype: Any = np.float64, chunk_elements: int = 1 << 17) -> None:
        self.dtype = np.dtype(dtype)
        self.log_n = np.log(obs.n_params).astype(self.dtype)
        self.log_d = np.log(obs.tokens).astype(self.dtype)
        self.log_l = np.log(obs.loss).astype(self.dtype)
        self.delta = float(delta)
        self.free = [i for i, n in enumerate(PARAMETER_NAMES) if n not in fixed]
        self.theta_fixed = np.array([_to_theta(n, fixed[n]) if n in fixed else 0.0
                                     for n in PARAMETER_NAMES])
        self.uses_gamma = "gamma" not in fixed or fixed["gamma"] != 0.0
        self.weights = (np.ones((1, self.log_n.size)) if weights is None
                        else np.asarray(weights)).astype(self.dtype)
        self.weight_rows = weight_rows
        self.rows_per_chunk = max(1, chunk_elements // max(1, self.log_n.size))
        self.basis_a = np.stack([np.ones_like(self.log_n), -self.log_n], axis=1)
        self.basis_b = np.stack([np.ones_like(self.log_n), -self.log_d, -self.log_n], axis=1)

    def theta(self, x: np.ndarray) -> np.ndarray:
        theta = np.broadcast_to(self.theta_fixed, (x.shape[0], 6)).copy()
        theta[:, self.free] = x
        return theta

    def __call__(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.empty(x.shape[0])
        g = np.empty((x.shape[0], len(self.free)))
        step = self.rows_per_chunk
        for start in range(0, x.shape[0], step):
            part = slice(start, start + step)
            f[part], g[part] = self._evaluate(x[part], rows[part])
        return f, g

    def _evaluate(self, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = self.theta(x).astype(self.dtype)
        e, a, b, alpha, beta, gamma = theta.T
        big_e = np.exp(e)
        term_a = np.multiply.outer(-alpha, self.log_n)
        term_a += a[:, None]
        np.exp(term_a, out=term_a)
        term_b = np.multiply.outer(-beta, self.log_d)
        if self.uses_gamma:
            term_b -= np.multiply.outer(gamma, self.log_n)
        term_b += b[:, None]
        np.exp(term_b, out=term_b)
        total = term_a + term_b
        total += big_e[:, None]
        residual = np.log(total)
        residual -= self.log_l
        clipped = np.clip(residual, -self.delta, self.delta)  # huber'(r)
        residual -= 0.5 * clipped
        residual *= clipped  # huber(r) = huber'(r) * (r - huber'(r) / 2)
        if self.weight_rows is None:
            w = self.weights[0]
            norm = 1.0 / (self.delta * w.sum())
            value = (residual @ w) * norm
            coef = clipped / total
            coef *= w * norm
        else:
            w = self.weights[self.weight_rows[rows]]
            norm = 1.0 / (self.delta * w.sum(axis=1))
            value = np.einsum("kn,kn->k", residual, w) * norm
            coef = clipped / total
            coef *= w
            coef *= norm[:, None]
        grad = np.empty((x.shape[0], 6), dtype=self.dtype)
        grad[:, 0] = coef.sum(axis=1) * big_e
        term_a *= coef
        term_b *= coef
        grad[:, [1, 3]] = term_a @ self.basis_a
        grad[:, [2, 4, 5]] = term_b @ self.basis_b
        return value, grad[:, self.free]


def _to_theta(name: str, value: float) -> float:
    return math.log(value) if name in LOG_SCALED else float(value)


def theta_to_coefficients(theta: np.ndarray, fixed: Mapping[str, float] | None = None) -> np.ndarray:
    """``fixed`` coefficients are written back exactly (a log/exp round trip would perturb them)."""
    out = np.array(theta, dtype=np.float64, copy=True)
    out[..., :3] = np.exp(out[..., :3])
    for name, value in (fixed or {}).items():
        out[..., PARAMETER_NAMES.index(name)] = value
    return out


@dataclass(frozen=True)
class ParametricFit:
    """Best approach-3 fit; ``restarts`` (optimiser scale, optimum first) seed the bootstrap."""

    law: ParametricLaw
    objective: float
    free: tuple[str, ...]
    n_starts: int
    n_converged: int
    restarts: np.ndarray
    warnings: tuple[str, ...] = ()

    @property
    def coefficients(self) -> dict[str, float]:
        law = self.law
        return {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
                "gamma": law.gamma}


def _check_parametric_data(obs: Observations, config: FitConfig) -> None:
    free = config.free_parameters
    require_runs(obs, 3, "an approach-3 fit")
    if len(obs) <= len(free):
        raise ScalingError(f"an approach-3 fit of {len(free)} coefficients needs more than "
                       f"{len(free)} points, got {len(obs)}",
                       hint="add runs or intermediate evals, or fix some coefficients")
    if ("alpha" in free or "gamma" in free) and np.unique(obs.n_params).size < 2:
        raise ScalingError("all points share one model size, so alpha (and gamma) cannot be fitted",
                       hint="add runs of other model sizes, or fix alpha")
    if "beta" in free and np.unique(obs.tokens).size < 2:
        raise ScalingError("all points share one token count, so beta cannot be fitted",
                       hint="add runs of other lengths or intermediate evals, or fix beta")


def fit_parametric(obs: Observations, config: FitConfig = FitConfig(), *, name: str = "fit-approach3",
                   emit_warnings: bool = True) -> ParametricFit:
    """Warns on a grid-edge optimum, < 5 runs, or no compute optimum."""
    _check_parametric_data(obs, config)
    fixed = config.fixed_values
    free = config.free_parameters
    starts = config.grid.points(free)
    objective = HuberLogObjective(obs, config.huber_delta, fixed)
    search = _search(obs, config, starts)
    if not np.isfinite(search.f).any():
        raise ScalingError("no start of the grid gave a finite objective",
                       hint="check the data for extreme values, or change the start grid")
    theta, result, best, restarts = polish(objective, search, config)
    coefficients = theta_to_coefficients(theta[best], fixed)
    law = ParametricLaw(*map(float, coefficients), name=name,
                        source=f"chinchax fit, approach 3 (Huber delta={config.huber_delta:g}, "
                        f"{len(starts)} L-BFGS starts) on {len(obs)} points from {obs.n_runs} runs")
    notes = _grid_edge_notes(theta[best], free, config.grid)
    if obs.n_runs < 5:
        notes.append(f"only {obs.n_runs} runs: fewer than 5 models make unreliable fits "
                     "(Choshen et al. 2024)")
    if law.beta <= law.gamma:
        notes.append(f"beta={law.beta:.3g} <= gamma={law.gamma:.3g}: the law has no compute optimum")
    fit = ParametricFit(
        law=law, objective=float(result.f[best]), free=free, n_starts=len(starts),
        n_converged=int(search.converged.sum()), restarts=restarts, warnings=tuple(notes),
    )
    if emit_warnings:
        _emit(notes)
    return fit


def polish(objective: Any, search: BatchResult, config: FitConfig
           ) -> tuple[np.ndarray, BatchResult, int, np.ndarray]:
    """Returns polished points (optimiser scale), their result, the best index, bootstrap restarts."""
    candidates = _distinct(objective.theta(search.x), search.f, limit=config.polish_starts)
    result = lbfgs_batched(objective, search.x[candidates], max_iter=config.max_iter,
                           memory=config.memory, gtol=config.gtol, ftol=config.ftol)
    theta = objective.theta(result.x)
    restarts = _restarts(theta, result.f, objective.theta(search.x), search.f,
                         limit=max(config.bootstrap_starts, 1))
    return theta, result, int(np.argmin(result.f)), restarts


def _search(obs: Observations, config: FitConfig, starts: np.ndarray) -> BatchResult:
    dtype = np.dtype(config.search_dtype)
    objective = HuberLogObjective(obs, config.huber_delta, config.fixed_values, dtype=dtype)
    resolution = float(np.finfo(dtype).eps)
    return lbfgs_batched(objective, starts, max_iter=config.max_iter, memory=config.memory,
                         gtol=max(config.gtol, 10 * resolution),
                         ftol=max(config.ftol, 10 * resolution), ftol_floor=0.0)


def fit_continual(obs: Observations, base: ParametricLaw, config: FitConfig = FitConfig(), *,
                  name: str = "fit-continual") -> ParametricFit:
    """Zheng et al. (2024): ``L = E + A/N^alpha + B'/(D^beta' N^gamma)``, E, A, alpha from ``base``."""
    fixed = {"E": base.E, "A": base.A, "alpha": base.alpha}
    return fit_parametric(obs, replace(config, fixed=fixed, free_gamma=True), name=name)


def _restarts(polished: np.ndarray, polished_f: np.ndarray, screened: np.ndarray,
              screened_f: np.ndarray, limit: int) -> np.ndarray:
    """Distinct polished optima, then spread-out screened points: a resample whose optimum moved is
    still approached from several sides."""
    chosen = [polished[i] for i in _distinct(polished, polished_f, limit)]
    for i in _distinct(screened, screened_f, 4 * limit, tol=1e-2):
        if len(chosen) == limit:
            break
        if all(np.max(np.abs(screened[i] - c)) > 1e-2 * (1 + np.max(np.abs(c))) for c in chosen):
            chosen.append(screened[i])
    return np.array(chosen)


def _distinct(theta: np.ndarray, f: np.ndarray, limit: int, tol: float = 1e-3) -> np.ndarray:
    """Indices of up to ``limit`` distinct optima, best first (max-norm distance > tol)."""
    chosen: list[int] = []
    for i in np.argsort(f):
        if not np.isfinite(f[i]) or len(chosen) == limit:
            break
        if all(np.max(np.abs(theta[i] - theta[j])) > tol * (1 + np.max(np.abs(theta[j])))
               for j in chosen):
            chosen.append(int(i))
    return np.array(chosen, dtype=np.int64)


def _grid_edge_notes(theta: np.ndarray, free: Sequence[str], grid: StartGrid) -> list[str]:
    notes = []
    for name in free:
        value = theta[PARAMETER_NAMES.index(name)]
        axis = grid.axis(name)
        low, high = float(axis.min()), float(axis.max())
        if value < low or value > high:
            scale = f"log {name}" if name in LOG_SCALED else name
            notes.append(f"fit hit the grid edge: {scale} = {value:.4g} lies outside the start "
                         f"grid [{low:g}, {high:g}]; widen grid.{GRID_AXIS[name]} and refit")
    return notes
