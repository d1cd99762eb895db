"""Fitting scaling laws to observations: Chinchilla's approaches 1, 2 and 3, with a bootstrap.

* **Approach 3** fits ``L(N, D) = E + A/N**alpha + B/(D**beta N**gamma)`` by minimising the
  Huber loss of log-space residuals ``LSE(a - alpha log N, b - beta log D - gamma log N, e)
  - log L`` (``A = exp a``, ``B = exp b``, ``E = exp e``) with L-BFGS from every point of a
  start grid, keeping the best.  ``gamma`` is 0 (Chinchilla) unless freed; any coefficient can
  be held fixed, which is how the continual pre-training law of Zheng et al. (2024) is fitted
  (``E``, ``A``, ``alpha`` from a base fit; ``B'``, ``beta'``, ``gamma`` free).
* **Approach 2** fits a parabola in ``log N`` to the final losses of each isoFLOP budget; the
  minima give ``N_opt(C)`` and ``D_opt(C) = C / (6 N_opt)`` power laws.
* **Approach 1** takes the minimum-loss envelope of the runs' loss-vs-compute curves and fits
  the same power laws to the envelope's model sizes.
* The **bootstrap** resamples runs (never rows of one run: a run's points share a seed and a
  schedule) and refits, giving percentile intervals for every coefficient, the exponents
  ``a`` and ``b``, and the allocation at a target budget.
* :func:`evaluate` measures the average relative error (ARE) of a fit on held-out points, the
  figure of merit of Choshen et al. (2024).

Speed comes from fitting all starts at once: :func:`lbfgs_batched` runs L-BFGS over a batch of
independent problems in NumPy, evaluating only the problems still moving, so the 4,500-start
Chinchilla grid costs a few thousand vectorised evaluations instead of 4,500 optimiser runs.
The search over the grid runs in single precision (NumPy vectorises float32 exponentials, not
float64 ones, on AVX2 machines); the best distinct end points are then polished in double
precision, which is where the reported optimum comes from.  The bootstrap reuses the batched
optimiser: every (resample, restart) pair is one problem of one batch, each with its own
per-point weights (a resample is a weighting of the points by how often their run was drawn).
Compute follows the papers' ``C = 6 N D`` convention, as in ``scaling/laws.py``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from chinchax.errors import ScalingError
from scaling.laws import Law, ParametricLaw, PowerLawAllocation
from scaling.observations import Observations, require_runs

PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta", "gamma")
# E, A and B are optimised as their logarithms e, a, b (positive by construction, and the
# scale on which Chinchilla's start grid is written).
LOG_SCALED = ("E", "A", "B")
GRID_AXIS = {"E": "e", "A": "a", "B": "b", "alpha": "alpha", "beta": "beta", "gamma": "gamma"}
APPROACHES = (1, 2, 3)
# Every quantity a report may hold, in the order tables show them.
LABEL_ORDER = ("E", "A", "B", "alpha", "beta", "gamma", "a", "b", "n_coef", "d_coef", "n_opt",
               "tokens_opt", "loss_opt")


class FitWarning(UserWarning):
    """A fit that worked but deserves a look (an optimum at a grid edge, a skipped budget)."""


# ===================================================================================== config
@dataclass(frozen=True)
class StartGrid:
    """Start values of the multi-start search, per coordinate (E, A, B as e, a, b = their logs).

    The defaults are Chinchilla's appendix D.2 grid: 5 x 6 x 6 x 5 x 5 = 4,500 starts for the
    five coefficients; ``gamma`` values are used only when gamma is free.
    """

    e: List[float] = field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0])
    a: List[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    b: List[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    alpha: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])
    beta: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])
    gamma: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])

    def __post_init__(self) -> None:
        for axis in GRID_AXIS.values():
            values = getattr(self, axis)
            if not values or not all(math.isfinite(float(v)) for v in values):
                raise ScalingError(f"start grid axis {axis!r} must hold finite values, got {values!r}",
                               hint="give every axis at least one start value")

    def axis(self, name: str) -> np.ndarray:
        """Start values of coefficient ``name`` on the optimiser's scale (log for E, A, B)."""
        return np.asarray(getattr(self, GRID_AXIS[name]), dtype=np.float64)

    def points(self, free: Sequence[str]) -> np.ndarray:
        """Cartesian product of the free coordinates' axes, shape ``(starts, len(free))``."""
        return np.array(list(itertools.product(*(self.axis(n) for n in free))), dtype=np.float64)


def coarse_grid() -> StartGrid:
    """A 2 x 3 x 3 x 3 x 3 = 162-start grid spanning the default ranges, for quick fits and tests."""
    return StartGrid(e=[-1.0, 1.0], a=[0.0, 12.5, 25.0], b=[0.0, 12.5, 25.0],
                     alpha=[0.0, 1.0, 2.0], beta=[0.0, 1.0, 2.0], gamma=[0.0, 0.5])


@dataclass(frozen=True)
class FitConfig:
    """How to fit: the approach, the approach-3 objective and optimiser, and the bootstrap.

    ``fixed`` holds coefficients kept at given values (natural units: ``{"E": 1.55}``);
    ``gamma`` is held at 0 unless ``free_gamma``.  ``bootstrap_starts`` is how many distinct
    optima of the full-data fit seed each resample's refit (0: the whole start grid, which is
    faithful but costs a full multi-start per resample).  ``target_flops`` is the budget whose
    allocation gets an interval (default: ten times the largest budget in the data).
    ``budget_tolerance`` (decades) groups approach-2 runs into isoFLOP budgets;
    ``envelope_smoothing`` is the degree of the polynomial in ``ln C`` that smooths each loss
    curve before approach 1 takes the envelope (0: raw curves).
    """

    approach: int = 3
    huber_delta: float = 1e-3
    grid: StartGrid = field(default_factory=StartGrid)
    fixed: Dict[str, float] = field(default_factory=dict)
    free_gamma: bool = False
    max_iter: int = 1000
    memory: int = 10
    gtol: float = 1e-10
    ftol: float = 1e-12
    search_dtype: str = "float32"
    polish_starts: int = 32
    bootstrap: int = 0
    bootstrap_starts: int = 8
    confidence: float = 0.95
    seed: int = 0
    target_flops: Optional[float] = None
    budget_tolerance: float = 0.1
    envelope_points: int = 1500
    envelope_smoothing: int = 3

    def __post_init__(self) -> None:
        if self.approach not in APPROACHES:
            raise ScalingError(f"approach must be 1, 2 or 3, got {self.approach}",
                           hint="1: envelope, 2: isoFLOP parabolas, 3: parametric Huber fit")
        positive = {"huber_delta": self.huber_delta, "max_iter": self.max_iter,
                    "memory": self.memory, "budget_tolerance": self.budget_tolerance,
                    "envelope_points": self.envelope_points}
        for name, value in positive.items():
            if not value > 0:
                raise ScalingError(f"fit.{name} must be positive, got {value}",
                               hint=f"use the default {getattr(FitConfig, name, '')}".rstrip())
        if self.search_dtype not in ("float32", "float64"):
            raise ScalingError(f"search_dtype must be 'float32' or 'float64', got {self.search_dtype!r}",
                           hint="float32 screens the start grid fast; the best starts are "
                           "always polished in float64")
        if self.polish_starts < 1:
            raise ScalingError(f"polish_starts must be at least 1, got {self.polish_starts}",
                           hint="use the default 32")
        if self.envelope_smoothing < 0:
            raise ScalingError(f"envelope_smoothing must be 0 or more, got {self.envelope_smoothing}",
                           hint="0 keeps the raw curves; 3 fits a cubic in ln C per run")
        if self.bootstrap < 0 or self.bootstrap_starts < 0:
            raise ScalingError("bootstrap and bootstrap_starts must be non-negative",
                           hint="use 0 to skip the bootstrap, e.g. 1000 for intervals")
        if not 0.0 < self.confidence < 1.0:
            raise ScalingError(f"confidence must lie in (0, 1), got {self.confidence}",
                           hint="use 0.95 for 95% intervals")
        if self.target_flops is not None and not self.target_flops > 0:
            raise ScalingError(f"target_flops must be positive, got {self.target_flops}",
                           hint="give the budget in FLOPs, e.g. 1e21")
        for name, value in self.fixed.items():
            if name not in PARAMETER_NAMES:
                raise ScalingError(f"cannot fix unknown coefficient {name!r}",
                               hint="fixable coefficients: " + ", ".join(PARAMETER_NAMES))
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number) or (name in LOG_SCALED and number <= 0):
                raise ScalingError(f"fixed {name}={value} is not usable",
                               hint="E, A and B must be positive; all values finite")

    @property
    def free_parameters(self) -> tuple[str, ...]:
        """Coefficients the optimiser moves, in ``PARAMETER_NAMES`` order."""
        return tuple(n for n in PARAMETER_NAMES if n not in self.fixed_values)

    @property
    def fixed_values(self) -> dict[str, float]:
        """Fixed coefficients, gamma = 0 included unless it is free or fixed elsewhere."""
        values = {k: float(v) for k, v in self.fixed.items()}
        if not self.free_gamma:
            values.setdefault("gamma", 0.0)
        return values


def config_dict(config: FitConfig) -> dict[str, Any]:
    """A JSON-ready copy of the settings (the ``settings`` section of a law file)."""
    return asdict(config)


# ============================================================================ batched L-BFGS
ValueAndGrad = Callable[[np.ndarray, np.ndarray], "tuple[np.ndarray, np.ndarray]"]

# Termination codes of lbfgs_batched.
CONVERGED_GRADIENT, CONVERGED_FTOL, STALLED_LINESEARCH, MAX_ITER, NOT_FINITE = range(5)


@dataclass(frozen=True)
class BatchResult:
    """Per-problem outcome of :func:`lbfgs_batched`."""

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


def lbfgs_batched(
    value_and_grad: ValueAndGrad,
    x0: np.ndarray,
    *,
    max_iter: int = 1000,
    memory: int = 10,
    gtol: float = 1e-10,
    ftol: float = 1e-12,
    ftol_floor: float = 0.0,
    max_linesearch: int = 30,
    c1: float = 1e-4,
) -> BatchResult:
    """Minimise many independent problems with L-BFGS at once.

    ``value_and_grad(x, rows)`` returns ``f`` of shape ``(k,)`` and its gradient ``(k, p)`` for
    the problems ``rows`` at points ``x`` (``(k, p)``); it is only ever called for the problems
    still active, so stragglers cost little.  Each problem keeps its own history (two-loop
    recursion over ``memory`` pairs) and its own backtracking Armijo line search; a pair with
    ``s.y <= 0`` is not stored, which keeps the inverse-Hessian estimate positive definite
    without a Wolfe search.  A problem stops when ``max|g| <= gtol``, when an iteration lowers
    ``f`` by at most ``ftol * max(|f|, ftol_floor)`` (with floor 1 this is scipy's ``factr``
    rule; floor 0 makes it purely relative), when no step length lowers ``f`` (precision
    exhausted), or after ``max_iter`` iterations.

    The state of the active problems lives in compact working arrays that shrink as problems
    finish, and the histories share one ring index, so an iteration costs a few dozen NumPy
    calls on the active problems only.
    """
    x_out = np.array(x0, dtype=np.float64, copy=True)
    size, dim = x_out.shape
    f_out = np.full(size, np.inf)
    iterations_out = np.zeros(size, dtype=np.int64)
    status_out = np.full(size, MAX_ITER, dtype=np.int64)
    with np.errstate(all="ignore"):
        f, g = value_and_grad(x_out, np.arange(size))
    f, g = np.array(f, dtype=np.float64), np.array(g, dtype=np.float64)
    evaluations = 1
    finite = np.isfinite(f) & np.isfinite(g).all(axis=1)
    status = np.where(finite, MAX_ITER, NOT_FINITE)
    status[finite & (np.abs(g).max(axis=1) <= gtol)] = CONVERGED_GRADIENT
    f_out[finite] = f[finite]
    status_out[:] = status
    live = status == MAX_ITER
    ids, x, f, g = np.flatnonzero(live), x_out[live], f[live], g[live]
    s_hist = np.zeros((ids.size, memory, dim))
    y_hist = np.zeros((ids.size, memory, dim))
    rho = np.zeros((ids.size, memory))
    scale = np.ones(ids.size)  # s.y / y.y of the newest pair: the initial inverse Hessian
    steps = np.zeros(ids.size, dtype=np.int64)
    for iteration in range(max_iter):
        if ids.size == 0:
            break
        order = [(iteration - 1 - j) % memory for j in range(min(iteration, memory))]
        direction = -_two_loop(g, s_hist, y_hist, rho, scale, order)
        slope = _dot(g, direction)
        uphill = ~(slope < 0)
        if uphill.any():  # a stale history: restart from steepest descent
            direction[uphill] = -g[uphill]
            slope[uphill] = -_dot(g[uphill], g[uphill])
            rho[uphill] = 0.0
        fresh = ~(rho > 0).any(axis=1)  # no curvature pair yet: a unit-length first step
        step = np.where(fresh, 1.0 / np.maximum(np.linalg.norm(direction, axis=1), 1e-300), 1.0)
        x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
        accepted = np.zeros(ids.size, dtype=bool)
        pending = np.arange(ids.size)
        for _ in range(max_linesearch):
            trial = x[pending] + step[pending, None] * direction[pending]
            with np.errstate(all="ignore"):
                f_t, g_t = value_and_grad(trial, ids[pending])
            evaluations += 1
            ok = (f_t <= f[pending] + c1 * step[pending] * slope[pending]) & np.isfinite(g_t).all(axis=1)
            done = pending[ok]
            x_new[done], f_new[done], g_new[done] = trial[ok], f_t[ok], g_t[ok]
            accepted[done] = True
            pending = pending[~ok]
            if pending.size == 0:
                break
            step[pending] *= 0.5
        s, y = x_new - x, g_new - g
        sy, yy = _dot(s, y), _dot(y, y)
        store = accepted & (sy > 1e-12 * np.maximum(yy, 1e-300))
        slot = iteration % memory
        s_hist[:, slot] = np.where(store[:, None], s, 0.0)
        y_hist[:, slot] = np.where(store[:, None], y, 0.0)
        rho[:, slot] = np.where(store, 1.0 / np.where(store, sy, 1.0), 0.0)
        scale = np.where(store, sy / np.where(store, yy, 1.0), scale)
        threshold = ftol * np.maximum(np.maximum(np.abs(f), np.abs(f_new)), ftol_floor)
        new_status = np.full(ids.size, MAX_ITER)
        new_status[accepted & ((f - f_new) <= threshold)] = CONVERGED_FTOL
        new_status[accepted & (np.abs(g_new).max(axis=1) <= gtol)] = CONVERGED_GRADIENT
        new_status[~accepted] = STALLED_LINESEARCH
        x, f, g = x_new, f_new, g_new
        steps += 1
        finished = new_status != MAX_ITER
        if finished.any():
            done_ids = ids[finished]
            x_out[done_ids], f_out[done_ids] = x[finished], f[finished]
            iterations_out[done_ids], status_out[done_ids] = steps[finished], new_status[finished]
            keep = ~finished
            ids, x, f, g, steps, scale = ids[keep], x[keep], f[keep], g[keep], steps[keep], scale[keep]
            s_hist, y_hist, rho = s_hist[keep], y_hist[keep], rho[keep]
    x_out[ids], f_out[ids], iterations_out[ids] = x, f, steps
    return BatchResult(x=x_out, f=f_out, iterations=iterations_out, status=status_out,
                       evaluations=evaluations)


def _two_loop(g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray, scale: np.ndarray,
              order: Sequence[int]) -> np.ndarray:
    """``H g`` per problem from the history slots ``order`` (newest first); empty slots have rho 0."""
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


# ======================================================================= approach-3 objective
class HuberLogObjective:
    """Value and gradient of the (weighted, mean) Huber loss of log-space residuals.

    ``f = sum_i w_i huber_delta(log L_hat_i - log L_i) / (delta * sum_i w_i)``: dividing by
    ``delta`` and the total weight leaves the minimiser unchanged but makes ``f`` read as a
    mean absolute log-residual, so the tolerances mean the same for any data size or delta.
    ``L_hat = E + A N^-alpha + B D^-beta N^-gamma`` is evaluated as ``E + exp(.) + exp(.)``
    (two exponentials per point; E is one per problem), its log giving the LSE of the papers.
    Problems may carry their own point weights (bootstrap resamples): ``weight_rows[problem]``
    picks the row of ``weights`` it uses.  Work is chunked to stay in cache.
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
        """Full ``(k, 6)`` optimiser-scale coefficients from the free coordinates ``x``."""
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
    """Optimiser scale ``(e, a, b, alpha, beta, gamma)`` to ``(E, A, B, alpha, beta, gamma)``.

    ``fixed`` coefficients are written back exactly (a log/exp round trip would perturb them).
    """
    out = np.array(theta, dtype=np.float64, copy=True)
    out[..., :3] = np.exp(out[..., :3])
    for name, value in (fixed or {}).items():
        out[..., PARAMETER_NAMES.index(name)] = value
    return out


# ================================================================================ approach 3
@dataclass(frozen=True)
class ParametricFit:
    """Best approach-3 fit, with the diagnostics of the multi-start search.

    ``restarts`` (optimiser scale, all 6 columns, the optimum first) are where the bootstrap
    restarts each resample: distinct optima of the search, then spread-out end points.
    ``n_converged`` counts the starts whose search stopped on a tolerance.
    """

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
    """Approach 3: multi-start L-BFGS on the Huber objective, every start at once.

    All starts of ``config.grid`` are optimised together at ``config.search_dtype``; the
    ``config.polish_starts`` best distinct end points are refined in float64 and the best of
    them is the fit.  Warns (:class:`FitWarning`) when the optimum lies outside the grid's
    span, when there are fewer than 5 runs, and when the law has no compute optimum.
    """
    _check_parametric_data(obs, config)
    fixed = config.fixed_values
    free = config.free_parameters
    starts = config.grid.points(free)
    objective = HuberLogObjective(obs, config.huber_delta, fixed)
    search = _search(obs, config, starts)
    if not np.isfinite(search.f).any():
        raise ScalingError("no start of the grid gave a finite objective",
                       hint="check the data for extreme values, or change the start grid")
    candidates = _distinct(objective.theta(search.x), search.f, limit=config.polish_starts)
    result = lbfgs_batched(objective, search.x[candidates], max_iter=config.max_iter,
                           memory=config.memory, gtol=config.gtol, ftol=config.ftol)
    best = int(np.argmin(result.f))
    theta = objective.theta(result.x)
    restarts = _restarts(theta, result.f, objective.theta(search.x), search.f,
                         limit=max(config.bootstrap_starts, 1))
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


def _search(obs: Observations, config: FitConfig, starts: np.ndarray) -> BatchResult:
    """L-BFGS from every start at ``config.search_dtype`` precision.

    Single precision makes the exponentials several times cheaper (NumPy vectorises them only
    for float32 on AVX2 machines) and is ample to bring each start into its basin; the best
    distinct end points are then polished in double precision by the caller.
    """
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
    settings = {**asdict(config), "fixed": fixed, "free_gamma": True, "grid": config.grid}
    return fit_parametric(obs, FitConfig(**settings), name=name)


def _restarts(polished: np.ndarray, polished_f: np.ndarray, screened: np.ndarray,
              screened_f: np.ndarray, limit: int) -> np.ndarray:
    """Start points for refits: distinct polished optima, best first, then screened end points.

    When every polished candidate fell into one basin, the spread of the screening stage's end
    points along that basin's valley (and in other basins) supplies the other restarts, so a
    resample whose optimum moved is still approached from several sides.
    """
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


def _emit(notes: Sequence[str]) -> None:
    for note in notes:
        warnings.warn(note, FitWarning, stacklevel=3)


# ================================================================================ approach 2
@dataclass(frozen=True)
class IsoFlopProfile:
    """One isoFLOP budget: its runs and the parabola ``loss = c2 x^2 + c1 x + c0``, ``x = ln N``."""

    flops: float
    n_params: np.ndarray
    loss: np.ndarray
    coefficients: tuple[float, float, float]
    n_opt: float
    tokens_opt: float
    loss_opt: float
    inside: bool


@dataclass(frozen=True)
class PowerLawFit:
    """Approaches 1 and 2: ``N_opt = n_coef C^a``, ``D_opt = C / (6 N_opt) = d_coef C^b``.

    ``flops`` and ``n_opt`` are the points the power law went through (isoFLOP minima or
    envelope points); ``profiles`` holds the approach-2 parabolas.
    """

    law: PowerLawAllocation
    approach: int
    flops: np.ndarray
    n_opt: np.ndarray
    profiles: tuple[IsoFlopProfile, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def a(self) -> float:
        return self.law.a

    @property
    def b(self) -> float:
        return self.law.b


def group_budgets(flops: np.ndarray, tolerance: float) -> np.ndarray:
    """Budget label per point: sorted in log10, a new budget starts ``tolerance`` decades on.

    Anchoring each group at its smallest member (rather than chaining small gaps) keeps every
    group within ``tolerance`` decades, so data that are not isoFLOP sweeps cannot merge into
    one wide "budget".
    """
    log_c = np.log10(flops)
    order = np.argsort(log_c)
    labels = np.empty(flops.size, dtype=np.int64)
    label, anchor = -1, -np.inf
    for i in order:
        if log_c[i] > anchor + tolerance:
            label, anchor = label + 1, log_c[i]
        labels[i] = label
    return labels


def fit_isoflop(obs: Observations, config: FitConfig = FitConfig(), *,
                weights: np.ndarray | None = None, name: str = "fit-approach2",
                emit_warnings: bool = True) -> PowerLawFit:
    """Approach 2: a parabola in ``ln N`` per budget through the runs' final losses.

    ``weights`` (per point of ``obs``) let the bootstrap reweight runs; only each run's final
    point is used, as an isoFLOP run is compared at the end of its schedule.
    """
    final = obs.final_points()
    w = np.ones(len(obs)) if weights is None else np.asarray(weights, float)
    w = _final_weights(obs, w)
    labels = group_budgets(final.flops, config.budget_tolerance)
    notes: list[str] = []
    profiles: list[IsoFlopProfile] = []
    for label in np.unique(labels):
        group = labels == label
        rows = np.flatnonzero(group & (w > 0))
        if rows.size == 0:
            continue
        # the budget belongs to the sweep's design, so a resample leaves it where it is
        budget = float(np.exp(np.mean(np.log(final.compute[group]))))
        sizes = np.unique(final.n_params[rows])
        if sizes.size < 3:
            notes.append(f"budget {budget:.3g} FLOPs has {sizes.size} model size(s); a parabola "
                         "needs 3, so it was skipped")
            continue
        x, y = np.log(final.n_params[rows]), final.loss[rows]
        c2, c1, c0 = np.polyfit(x, y, 2, w=np.sqrt(w[rows]))
        if not c2 > 0:
            notes.append(f"budget {budget:.3g} FLOPs: the loss has no minimum over model size "
                         "(concave parabola); skipped")
            continue
        x_opt = -c1 / (2.0 * c2)
        inside = bool(x.min() <= x_opt <= x.max())
        n_opt = float(np.exp(x_opt))
        if not inside:
            notes.append(f"isoFLOP minimum at the grid edge: budget {budget:.3g} puts N_opt = "
                         f"{n_opt:.3g} outside the sizes trained [{np.exp(x.min()):.3g}, "
                         f"{np.exp(x.max()):.3g}]; add runs beyond that edge")
        profiles.append(IsoFlopProfile(
            flops=budget, n_params=final.n_params[rows], loss=y, coefficients=(c2, c1, c0),
            n_opt=n_opt, tokens_opt=budget / (6.0 * n_opt),
            loss_opt=float(np.polyval((c2, c1, c0), x_opt)), inside=inside))
    if len(profiles) < 2:
        raise ScalingError(f"approach 2 needs at least 2 isoFLOP budgets with 3 or more model sizes "
                       f"each, found {len(profiles)}",
                       hint="run an isoFLOP sweep (several sizes per budget) or use approach 3")
    flops = np.array([p.flops for p in profiles])
    n_opt = np.array([p.n_opt for p in profiles])
    law = _power_law(flops, n_opt, name, f"chinchax fit, approach 2 ({len(profiles)} isoFLOP "
                     f"budgets, {final.n_runs} runs)")
    if emit_warnings:
        _emit(notes)
    return PowerLawFit(law=law, approach=2, flops=flops, n_opt=n_opt, profiles=tuple(profiles),
                       warnings=tuple(notes))


def _final_weights(obs: Observations, weights: np.ndarray) -> np.ndarray:
    """The weight of each run's final point, in ``final_points`` order (one weight per run)."""
    by_run = dict(zip(obs.run_id, weights))
    return np.array([by_run[run] for run in obs.final_points().run_id], dtype=np.float64)


def _power_law(flops: np.ndarray, n_opt: np.ndarray, name: str, source: str) -> PowerLawAllocation:
    a, log_k = np.polyfit(np.log(flops), np.log(n_opt), 1)
    return PowerLawAllocation(a=float(a), n_coef=float(np.exp(log_k)), name=name, source=source)


# ================================================================================ approach 1
def fit_envelope(obs: Observations, config: FitConfig = FitConfig(), *,
                 name: str = "fit-approach1", emit_warnings: bool = True) -> PowerLawFit:
    """Approach 1: the minimum-loss envelope of the loss-vs-compute curves, then power laws.

    Each run's curve is interpolated in ``ln C`` (``C = 6 N D``) on a log grid of
    ``envelope_points`` budgets; a budget counts when at least two curves reach it.  Envelope
    points held by the smallest or largest model are censored (the optimum may lie beyond the
    sizes trained) and left out of the power-law fit when enough remain; a warning says so
    when they are a quarter of the envelope or more.
    """
    curves = []
    notes: list[str] = []
    for run in obs.runs:
        rows = np.flatnonzero(obs.run_id == run)
        rows = rows[np.argsort(obs.compute[rows])]
        if rows.size >= 2:
            log_c, loss = np.log(obs.compute[rows]), obs.loss[rows]
            curves.append((float(obs.n_params[rows[0]]), log_c,
                           _smoothed(log_c, loss, config.envelope_smoothing)))
    if len(curves) < 3 or len({n for n, _, _ in curves}) < 3:
        raise ScalingError(f"approach 1 needs loss curves (2+ evals each) of at least 3 model sizes, "
                       f"found {len({n for n, _, _ in curves})}",
                       hint="use run directories with intermediate evals, or approach 2 or 3")
    low = min(c[1][0] for c in curves)
    high = max(c[1][-1] for c in curves)
    grid = np.linspace(low, high, config.envelope_points)
    losses = np.full((len(curves), grid.size), np.inf)
    for i, (_, log_c, loss) in enumerate(curves):
        reach = (grid >= log_c[0]) & (grid <= log_c[-1])
        losses[i, reach] = np.interp(grid[reach], log_c, loss)
    covered = np.isfinite(losses).sum(axis=0) >= 2
    sizes = np.array([n for n, _, _ in curves])
    winner = sizes[np.argmin(losses, axis=0)]
    edge = (winner == sizes.min()) | (winner == sizes.max())
    use = covered & ~edge
    if np.unique(winner[use]).size < 2:
        use = covered
        notes.append("the envelope is held mostly by the smallest or largest model: the optimum "
                     "may lie beyond the sizes trained (grid edge); add smaller/larger runs")
    elif (covered & edge).sum() >= 0.25 * covered.sum():
        share = (covered & edge).sum() / covered.sum()
        notes.append(f"{share:.0%} of the envelope was held by the smallest or largest model "
                     "(grid edge) and left out of the power-law fit; add runs beyond that edge")
    if np.unique(winner[use]).size < 2:
        raise ScalingError("the envelope is held by a single model size; no power law can be fitted",
                       hint="add runs of more model sizes, spanning the optimum")
    flops = np.exp(grid[use])
    n_opt = winner[use]
    law = _power_law(flops, n_opt, name, f"chinchax fit, approach 1 (envelope of {len(curves)} "
                     "loss curves)")
    if emit_warnings:
        _emit(notes)
    return PowerLawFit(law=law, approach=1, flops=flops, n_opt=n_opt, warnings=tuple(notes))


def _smoothed(log_c: np.ndarray, loss: np.ndarray, degree: int) -> np.ndarray:
    """A run's loss curve through a least-squares polynomial in ``ln C`` (Chinchilla smooths
    curves before taking the envelope, so eval noise does not decide which run is lowest)."""
    if degree <= 0 or np.unique(log_c).size < degree + 3:
        return loss
    return np.polyval(np.polyfit(log_c, loss, degree), log_c)


# ================================================================================ bootstrap
@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Bootstrap:
    """Refits on resampled runs: ``samples[:, j]`` are the replicates of ``names[j]``."""

    names: tuple[str, ...]
    samples: np.ndarray
    n_resamples: int
    n_failed: int
    confidence: float

    def column(self, name: str) -> np.ndarray:
        return self.samples[:, self.names.index(name)]

    def interval(self, name: str, estimate: float) -> Interval:
        values = self.column(name)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return Interval(estimate, math.nan, math.nan)
        tail = 50.0 * (1.0 - self.confidence)
        low, high = np.percentile(values, [tail, 100.0 - tail])
        return Interval(float(estimate), float(low), float(high))


def resample_runs(n_runs: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_runs)`` counts: how often each run is drawn (with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=n_resamples)


def point_weights(obs: Observations, counts: np.ndarray) -> np.ndarray:
    """Per-point weights of run resamples: each point weighs as often as its run was drawn."""
    return np.asarray(counts)[:, obs.run_codes].astype(np.float64)


def parametric_quantities(law: ParametricLaw, target_flops: float) -> dict[str, float]:
    """Coefficients, exponents and the allocation at ``target_flops`` of one parametric law."""
    out = {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
           "gamma": law.gamma}
    if law.beta > law.gamma and law.alpha > 0:
        alloc = law.allocate(target_flops)
        out.update(a=law.params_exponent, b=law.tokens_exponent, n_opt=alloc.n_params,
                   tokens_opt=alloc.tokens, loss_opt=float(alloc.loss))
    else:
        out.update(a=math.nan, b=math.nan, n_opt=math.nan, tokens_opt=math.nan, loss_opt=math.nan)
    return out


def power_quantities(law: PowerLawAllocation, target_flops: float) -> dict[str, float]:
    """Exponents, coefficients and the allocation at ``target_flops`` of one power law."""
    alloc = law.allocate(target_flops)
    return {"a": law.a, "b": law.b, "n_coef": law.n_coef, "d_coef": law.d_coef,
            "n_opt": alloc.n_params, "tokens_opt": alloc.tokens}


def bootstrap_parametric(obs: Observations, fit: ParametricFit, config: FitConfig,
                         target_flops: float, max_batch: int = 20_000) -> Bootstrap:
    """Refit approach 3 on ``config.bootstrap`` run resamples, all in one L-BFGS batch.

    Each resample restarts from the ``bootstrap_starts`` restarts of the full-data fit (its
    optimum and points spread along and around its basin: a resample perturbs the landscape,
    it rarely moves the global basin); 0 restarts every resample from the whole grid, in
    float64, which is faithful but costs a full multi-start per resample.  Problems are
    batched in blocks of about ``max_batch`` so memory stays bounded.
    """
    fixed = config.fixed_values
    weights = point_weights(obs, resample_runs(obs.n_runs, config.bootstrap, config.seed))
    free_cols = [PARAMETER_NAMES.index(n) for n in fit.free]
    if config.bootstrap_starts == 0:
        starts = config.grid.points(fit.free)
    else:
        starts = fit.restarts[: config.bootstrap_starts][:, free_cols]
    n_starts = starts.shape[0]
    f = np.empty((config.bootstrap, n_starts))
    theta = np.empty((config.bootstrap, n_starts, 6))
    block = max(1, max_batch // n_starts)
    for first in range(0, config.bootstrap, block):
        count = min(block, config.bootstrap - first)
        objective = HuberLogObjective(obs, config.huber_delta, fixed, weights=weights[first:first + count],
                                      weight_rows=np.repeat(np.arange(count), n_starts))
        result = lbfgs_batched(objective, np.tile(starts, (count, 1)), max_iter=config.max_iter,
                               memory=config.memory, gtol=config.gtol, ftol=config.ftol)
        f[first:first + count] = result.f.reshape(count, n_starts)
        theta[first:first + count] = objective.theta(result.x).reshape(count, n_starts, 6)
    best = np.argmin(f, axis=1)
    coefficients = theta_to_coefficients(theta[np.arange(config.bootstrap), best], fixed)
    failed = ~np.isfinite(f.min(axis=1))
    names = tuple(parametric_quantities(fit.law, target_flops))
    samples = np.full((config.bootstrap, len(names)), np.nan)
    for r in np.flatnonzero(~failed):
        law = fit.law.with_coefficients(coefficients[r])
        samples[r] = list(parametric_quantities(law, target_flops).values())
    return Bootstrap(names=names, samples=samples[~failed], n_resamples=config.bootstrap,
                     n_failed=int(failed.sum()), confidence=config.confidence)


def bootstrap_power(obs: Observations, config: FitConfig, target_flops: float) -> Bootstrap:
    """Refit approach 1 or 2 on run resamples (each refit is cheap, so a plain loop)."""
    weights = point_weights(obs, resample_runs(obs.n_runs, config.bootstrap, config.seed))
    names: tuple[str, ...] = ("a", "b", "n_coef", "d_coef", "n_opt", "tokens_opt")
    samples = np.full((config.bootstrap, len(names)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)
        for r, weight in enumerate(weights):
            try:
                if config.approach == 2:
                    refit = fit_isoflop(obs, config, weights=weight, emit_warnings=False)
                else:  # duplicated curves leave an envelope unchanged: the drawn runs suffice
                    refit = fit_envelope(obs.select(weight > 0), config, emit_warnings=False)
            except ScalingError:
                continue
            samples[r] = list(power_quantities(refit.law, target_flops).values())
    ok = np.isfinite(samples).all(axis=1)
    return Bootstrap(names=names, samples=samples[ok], n_resamples=config.bootstrap,
                     n_failed=int((~ok).sum()), confidence=config.confidence)


# ============================================================================== orchestration
@dataclass(frozen=True)
class FitReport:
    """Everything ``chinchax fit`` shows and writes: the law, estimates, intervals, data."""

    approach: int
    law: Law
    estimates: dict[str, float]
    intervals: dict[str, Interval]
    target_flops: float
    observations: Observations
    config: FitConfig
    detail: ParametricFit | PowerLawFit
    bootstrap: Optional[Bootstrap]
    warnings: tuple[str, ...]

    @property
    def exponents(self) -> dict[str, float]:
        return {"a": self.estimates["a"], "b": self.estimates["b"]}

    def to_dict(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The law file: ``law`` (readable by ``scaling.laws.law_from_dict``) and its context."""
        allocation_keys = [k for k in ("n_opt", "tokens_opt", "loss_opt") if k in self.estimates]
        return {
            "law": self.law.to_dict(),
            "approach": self.approach,
            "exponents": self.exponents,
            "estimates": self.estimates,
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "allocation": {"flops": self.target_flops,
                           **{k: self.intervals[k].to_dict() if k in self.intervals
                              else {"estimate": self.estimates[k]} for k in allocation_keys}},
            "bootstrap": None if self.bootstrap is None else {
                "resamples": self.bootstrap.n_resamples, "failed": self.bootstrap.n_failed,
                "confidence": self.bootstrap.confidence, "unit": "run"},
            "warnings": list(self.warnings),
            "settings": {**config_dict(self.config), **dict(settings or {})},
            "data": self.observations.records(),
        }


def default_target_flops(obs: Observations) -> float:
    """One decade beyond the largest budget in the data: the next run one would plan."""
    return float(10.0 * obs.compute.max())


def fit(obs: Observations, config: FitConfig = FitConfig(), *, name: str | None = None) -> FitReport:
    """Fit with ``config.approach``, bootstrap it if asked, and collect estimates and intervals."""
    target = config.target_flops or default_target_flops(obs)
    law_name = name or f"fit-approach{config.approach}"
    boot: Bootstrap | None = None
    if config.approach == 3:
        detail: ParametricFit | PowerLawFit = fit_parametric(obs, config, name=law_name)
        estimates = parametric_quantities(detail.law, target)
        if config.bootstrap:
            boot = bootstrap_parametric(obs, detail, config, target)
        law: Law = detail.law
        if boot is not None:
            rows = tuple(tuple(float(v) for v in row[:6]) for row in boot.samples)
            law = ParametricLaw(**{**detail.coefficients, "name": law.name, "source": law.source},
                                samples=rows)
        if config.fixed_values.get("gamma") == 0.0:
            estimates.pop("gamma")  # Chinchilla's form: gamma is no coefficient of it
    else:
        detail = (fit_isoflop(obs, config, name=law_name) if config.approach == 2
                  else fit_envelope(obs, config, name=law_name))
        law = detail.law
        estimates = power_quantities(detail.law, target)
        if config.bootstrap:
            boot = bootstrap_power(obs, config, target)
    intervals = {} if boot is None else {
        k: boot.interval(k, v) for k, v in estimates.items() if k in boot.names}
    notes = list(detail.warnings)
    if boot is not None and boot.n_failed:
        notes.append(f"{boot.n_failed} of {boot.n_resamples} bootstrap resamples could not be fitted")
    return FitReport(approach=config.approach, law=law, estimates=estimates, intervals=intervals,
                     target_flops=target, observations=obs, config=config, detail=detail,
                     bootstrap=boot, warnings=tuple(notes))


def write_law_file(report: FitReport, path: str | Path,
                   settings: Mapping[str, Any] | None = None) -> Path:
    """Write the law file (JSON) that ``chinchax allocate --law PATH`` reads."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(settings), indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ============================================================================ ARE evaluation
@dataclass(frozen=True)
class Evaluation:
    """Average relative error of a fit on held-out points (Choshen et al. 2024)."""

    target_run: str
    are: float
    law: ParametricLaw
    heldout: Observations
    predicted: np.ndarray
    n_fit: int


def evaluate(obs: Observations, config: FitConfig = FitConfig(), *, target_run: str | None = None,
             holdout_fraction: float = 0.3) -> Evaluation:
    """Fit approach 3 without the last ``holdout_fraction`` of a target run, then score it there.

    ``ARE = mean |L - L_hat| / L`` over the held-out points.  The target defaults to the largest
    run (most parameters, then most tokens); its earlier points stay in the fit, as a practitioner
    would use a partially trained target.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ScalingError(f"holdout fraction must lie in (0, 1), got {holdout_fraction}",
                       hint="the Hitchhiker's default holds out the last 0.3 of the target run")
    if target_run is None:
        order = np.lexsort((obs.tokens, obs.n_params))
        target_run = str(obs.run_id[order[-1]])
    in_target = obs.run_id == target_run
    if not in_target.any():
        raise ScalingError(f"target run {target_run!r} is not among the observations",
                       hint="choose one of: " + ", ".join(obs.runs[:8]))
    final_tokens = obs.tokens[in_target].max()
    heldout = in_target & (obs.tokens > (1.0 - holdout_fraction) * final_tokens)
    if not heldout.any():
        raise ScalingError(f"target run {target_run!r} has no points in its last {holdout_fraction:.0%}",
                       hint="evaluate on a run with intermediate evals, or raise the fraction")
    training = obs.select(~heldout)
    base = fit_parametric(training, FitConfig(**{**asdict(config), "grid": config.grid,
                                                 "bootstrap": 0}), name="fit-evaluate")
    held = obs.select(heldout)
    predicted = np.asarray(base.law.loss(held.n_params, held.tokens), dtype=np.float64)
    are = float(np.mean(np.abs(held.loss - predicted) / held.loss))
    return Evaluation(target_run=target_run, are=are, law=base.law, heldout=held,
                      predicted=predicted, n_fit=len(training))
