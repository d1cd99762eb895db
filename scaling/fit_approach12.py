"""Approaches 1 and 2: ``N_opt(C)`` power laws from the loss envelope or isoFLOP minima (``C = 6 N D``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chinchax.errors import ScalingError
from scaling.fit_config import FitConfig, _emit
from scaling.laws import PowerLawAllocation
from scaling.observations import Observations

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
    exact_flops: float = math.nan  # the budget in the exact counter's FLOPs (the rungs' own)


@dataclass(frozen=True)
class PowerLawFit:
    """``N_opt = n_coef C^a`` through ``(flops, n_opt)`` (isoFLOP minima or envelope points)."""

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
    """Each group is anchored at its smallest member, so non-isoFLOP points cannot chain into one
    wide budget."""
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
    """Approach 2: a parabola in ``ln N`` per budget through each run's final loss (end of schedule)."""
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
            loss_opt=float(np.polyval((c2, c1, c0), x_opt)), inside=inside,
            exact_flops=float(np.exp(np.mean(np.log(final.flops[group]))))))
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
    by_run = dict(zip(obs.run_id, weights))
    return np.array([by_run[run] for run in obs.final_points().run_id], dtype=np.float64)


def _power_law(flops: np.ndarray, n_opt: np.ndarray, name: str, source: str) -> PowerLawAllocation:
    a, log_k = np.polyfit(np.log(flops), np.log(n_opt), 1)
    return PowerLawAllocation(a=float(a), n_coef=float(np.exp(log_k)), name=name, source=source)


def fit_envelope(obs: Observations, config: FitConfig = FitConfig(), *,
                 name: str = "fit-approach1", emit_warnings: bool = True) -> PowerLawFit:
    """Approach 1: the minimum-loss envelope in ``ln C``; points held by the smallest or largest
    model are censored (the optimum may lie beyond the sizes trained) when enough others remain."""
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
    """Chinchilla smooths curves before the envelope, so eval noise does not pick the lowest run."""
    if degree <= 0 or np.unique(log_c).size < degree + 3:
        return loss
    return np.polyval(np.polyfit(log_c, loss, degree), log_c)
