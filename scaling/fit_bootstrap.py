"""Bootstrap over whole runs (a run's points share a seed and a schedule) for percentile intervals.

Approach 3's refits are one L-BFGS batch: each (resample, restart) pair is a problem whose point
weights count how often its run was drawn.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from chinchax.errors import ScalingError
from scaling.fit_approach12 import fit_envelope, fit_isoflop
from scaling.fit_approach3 import HuberLogObjective, ParametricFit, theta_to_coefficients
from scaling.fit_config import PARAMETER_NAMES, FitConfig, FitWarning
from scaling.laws import ParametricLaw, PowerLawAllocation
from scaling.lbfgs import lbfgs_batched
from scaling.observations import Observations

@dataclass(frozen=True)
class Interval:

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
    return np.asarray(counts)[:, obs.run_codes].astype(np.float64)


def parametric_quantities(law: ParametricLaw, target_flops: float) -> dict[str, float]:
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
    alloc = law.allocate(target_flops)
    return {"a": law.a, "b": law.b, "n_coef": law.n_coef, "d_coef": law.d_coef,
            "n_opt": alloc.n_params, "tokens_opt": alloc.tokens}


def bootstrap_parametric(obs: Observations, fit: ParametricFit, config: FitConfig,
                         target_flops: float, max_batch: int = 20_000) -> Bootstrap:
    """Each resample starts from the full fit's ``bootstrap_starts`` restarts (0: the whole grid),
    in blocks of about ``max_batch``."""
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
        try:  # a degenerate replicate (e.g. B underflowing to 0) is counted, not fatal
            law = fit.law.with_coefficients(coefficients[r])
            samples[r] = list(parametric_quantities(law, target_flops).values())
        except (ArithmeticError, ScalingError):
            failed[r] = True
    return Bootstrap(names=names, samples=samples[~failed], n_resamples=config.bootstrap,
                     n_failed=int(failed.sum()), confidence=config.confidence)


def bootstrap_power(obs: Observations, config: FitConfig, target_flops: float) -> Bootstrap:
    """Refit approach 1 or 2 per resample (each refit is cheap, so a plain loop)."""
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
