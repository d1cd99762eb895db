"""L-BFGS over a batch of independent problems in NumPy: a few thousand vectorised evaluations
instead of thousands of optimiser runs; only problems still moving are evaluated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

ValueAndGrad = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]

# Termination codes of lbfgs_batched.
CONVERGED_GRADIENT, CONVERGED_FTOL, STALLED_LINESEARCH, MAX_ITER, NOT_FINITE = range(5)


@dataclass(frozen=True)
class BatchResult:

    x: np.ndarray
    f: np.ndarray
    iterations: np.ndarray
    status: np.ndarray
    evaluations: int

    @property
    def converged(self) -> np.ndarray:
        """Stopped by a tolerance or a line search that can no longer decrease ``f``."""
        return self.status <= STALLED_LINESEARCH


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("...p,...p->...", u, v)


@dataclass
class _Active:
    """Problems still moving, in arrays that shrink as they finish; histories share one ring index."""

    ids: np.ndarray
    x: np.ndarray
    f: np.ndarray
    g: np.ndarray
    s_hist: np.ndarray
    y_hist: np.ndarray
    rho: np.ndarray
    scale: np.ndarray  # s.y / y.y of the newest pair: the initial inverse Hessian
    steps: np.ndarray

    @classmethod
    def start(cls, ids: np.ndarray, x: np.ndarray, f: np.ndarray, g: np.ndarray,
              memory: int) -> "_Active":
        k, dim = x.shape
        return cls(ids, x, f, g, np.zeros((k, memory, dim)), np.zeros((k, memory, dim)),
                   np.zeros((k, memory)), np.ones(k), np.zeros(k, dtype=np.int64))

    def keep(self, mask: np.ndarray) -> None:
        for name in ("ids", "x", "f", "g", "s_hist", "y_hist", "rho", "scale", "steps"):
            setattr(self, name, getattr(self, name)[mask])


def lbfgs_batched(value_and_grad: ValueAndGrad, x0: np.ndarray, *, max_iter: int = 1000,
                  memory: int = 10, gtol: float = 1e-10, ftol: float = 1e-12,
                  ftol_floor: float = 0.0, max_linesearch: int = 30, c1: float = 1e-4) -> BatchResult:
    """Minimise many independent problems with L-BFGS at once.

    ``value_and_grad(x, rows)`` returns ``f`` ``(k,)`` and gradient ``(k, p)``, called only for
    active rows. Pairs with ``s.y <= 0`` are dropped, keeping the inverse Hessian positive definite
    without a Wolfe search. A problem stops at ``max|g| <= gtol``, when ``f`` falls by at most
    ``ftol * max(|f|, ftol_floor)`` (scipy's ``factr`` rule), when no step lowers ``f``, or at
    ``max_iter``.
    """
    x_out = np.array(x0, dtype=np.float64, copy=True)
    size = x_out.shape[0]
    f_out = np.full(size, np.inf)
    iterations_out = np.zeros(size, dtype=np.int64)
    with np.errstate(all="ignore"):
        f, g = value_and_grad(x_out, np.arange(size))
    f, g = np.array(f, dtype=np.float64), np.array(g, dtype=np.float64)
    evaluations = 1
    finite = np.isfinite(f) & np.isfinite(g).all(axis=1)
    status_out = np.where(finite, MAX_ITER, NOT_FINITE).astype(np.int64)
    status_out[finite & (np.abs(g).max(axis=1) <= gtol)] = CONVERGED_GRADIENT
    f_out[finite] = f[finite]
    live = status_out == MAX_ITER
    act = _Active.start(np.flatnonzero(live), x_out[live], f[live], g[live], memory)
    for iteration in range(max_iter):
        if act.ids.size == 0:
            break
        direction, slope = _direction(act, iteration, memory)
        x_new, f_new, g_new, accepted, calls = _line_search(
            value_and_grad, act, direction, slope, max_linesearch, c1)
        evaluations += calls
        _remember(act, x_new - act.x, g_new - act.g, accepted, iteration % memory)
        threshold = ftol * np.maximum(np.maximum(np.abs(act.f), np.abs(f_new)), ftol_floor)
        new_status = np.full(act.ids.size, MAX_ITER)
        new_status[accepted & ((act.f - f_new) <= threshold)] = CONVERGED_FTOL
        new_status[accepted & (np.abs(g_new).max(axis=1) <= gtol)] = CONVERGED_GRADIENT
        new_status[~accepted] = STALLED_LINESEARCH
        act.x, act.f, act.g = x_new, f_new, g_new
        act.steps += 1
        finished = new_status != MAX_ITER
        if finished.any():
            done = act.ids[finished]
            x_out[done], f_out[done] = act.x[finished], act.f[finished]
            iterations_out[done], status_out[done] = act.steps[finished], new_status[finished]
            act.keep(~finished)
    x_out[act.ids], f_out[act.ids], iterations_out[act.ids] = act.x, act.f, act.steps
    return BatchResult(x=x_out, f=f_out, iterations=iterations_out, status=status_out,
                       evaluations=evaluations)


def _direction(act: _Active, iteration: int, memory: int) -> tuple[np.ndarray, np.ndarray]:
    """Steepest descent where the history is stale."""
    order = [(iteration - 1 - j) % memory for j in range(min(iteration, memory))]
    direction = -_two_loop(act.g, act.s_hist, act.y_hist, act.rho, act.scale, order)
    slope = _dot(act.g, direction)
    uphill = ~(slope < 0)
    if uphill.any():
        direction[uphill] = -act.g[uphill]
        slope[uphill] = -_dot(act.g[uphill], act.g[uphill])
        act.rho[uphill] = 0.0
    return direction, slope


def _line_search(value_and_grad: ValueAndGrad, act: _Active, direction: np.ndarray,
                 slope: np.ndarray, max_linesearch: int, c1: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Backtracking Armijo per problem; without a curvature pair yet, a unit-length first step."""
    x, f, ids = act.x, act.f, act.ids
    fresh = ~(act.rho > 0).any(axis=1)
    step = np.where(fresh, 1.0 / np.maximum(np.linalg.norm(direction, axis=1), 1e-300), 1.0)
    x_new, f_new, g_new = x.copy(), f.copy(), act.g.copy()
    accepted = np.zeros(ids.size, dtype=bool)
    pending = np.arange(ids.size)
    calls = 0
    for _ in range(max_linesearch):
        trial = x[pending] + step[pending, None] * direction[pending]
        with np.errstate(all="ignore"):
            f_t, g_t = value_and_grad(trial, ids[pending])
        calls += 1
        ok = (f_t <= f[pending] + c1 * step[pending] * slope[pending]) & np.isfinite(g_t).all(axis=1)
        done = pending[ok]
        x_new[done], f_new[done], g_new[done] = trial[ok], f_t[ok], g_t[ok]
        accepted[done] = True
        pending = pending[~ok]
        if pending.size == 0:
            break
        step[pending] *= 0.5
    return x_new, f_new, g_new, accepted, calls


def _remember(act: _Active, s: np.ndarray, y: np.ndarray, accepted: np.ndarray, slot: int) -> None:
    sy, yy = _dot(s, y), _dot(y, y)
    store = accepted & (sy > 1e-12 * np.maximum(yy, 1e-300))
    act.s_hist[:, slot] = np.where(store[:, None], s, 0.0)
    act.y_hist[:, slot] = np.where(store[:, None], y, 0.0)
    act.rho[:, slot] = np.where(store, 1.0 / np.where(store, sy, 1.0), 0.0)
    act.scale = np.where(store, sy / np.where(store, yy, 1.0), act.scale)


def _two_loop(g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray, scale: np.ndarray,
              order: Sequence[int]) -> np.ndarray:
    """Slots ``order`` newest first; empty slots have rho 0."""
    q = g.copy()
    alphas = []
    for j in order:
        alpha = rho[:, j] * _dot(s[:, j], q)
        q -= alpha[:, None] * y[:, j]
        alphas.append(alpha)
    q *= scale[:, None]
    for j, alpha in zip(reversed(order), reversed(alphas)):
        beta = rho[:, j] * _dot(y[:, j], q)
        q += s[:, j] * (alpha - beta)[:, None]
    return q
