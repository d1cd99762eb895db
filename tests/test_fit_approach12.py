"""Approaches 1 (envelope) and 2 (isoFLOP parabolas), and their agreement with approach 3."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chinchax.errors import ScalingError
from scaling.fit import (FitConfig, FitWarning, coarse_grid, fit, fit_envelope, fit_isoflop, group_budgets)
from scaling.laws import PUBLISHED_LAWS
from fixtures import isoflop_design, simulate_runs

LAW = PUBLISHED_LAWS["chinchilla"]
TRUE_A = LAW.params_exponent  # beta / (alpha + beta)
BUDGETS = np.geomspace(1e18, 1e21, 6)
SIZES = np.geomspace(2e7, 2e9, 12)


def _sweep(noise: float = 0.0, seed: int = 0, evals_per_run: int = 1, spread: float = 4.0):
    return simulate_runs(
        LAW,
        isoflop_design(LAW, BUDGETS, 9, spread),
        evals_per_run=evals_per_run,
        noise=noise,
        seed=seed,
    )


def _curves(noise: float = 0.0, seed: int = 0, sizes: np.ndarray = SIZES):
    """Each size trained to 160 tokens per parameter, evaluated 40 times; first 10% dropped."""
    return simulate_runs(
        LAW, [(n, 160.0 * n) for n in sizes], evals_per_run=40, noise=noise, seed=seed
    ).drop_early(0.1)


def test_isoflop_parabolas_recover_the_exponent_of_noise_free_data() -> None:
    result = fit_isoflop(_sweep())
    # along an isoFLOP curve the law has one shape in ln(N / N_opt) at every budget, so the
    # parabola's vertex is off by the same factor everywhere: a is exact, the coefficient is not
    assert result.a == pytest.approx(TRUE_A, abs=1e-6)
    assert result.b == pytest.approx(1.0 - TRUE_A, abs=1e-6)
    assert result.law.n_coef == pytest.approx(LAW.optimal_params(1.0), rel=0.03)
    assert len(result.profiles) == len(BUDGETS)
    assert all(p.inside for p in result.profiles)
    for profile, budget in zip(result.profiles, BUDGETS):
        assert profile.flops == pytest.approx(budget, rel=1e-9)
        assert profile.n_opt == pytest.approx(LAW.optimal_params(budget), rel=0.03)


def test_isoflop_uses_each_runs_final_point_only() -> None:
    result = fit_isoflop(_sweep(evals_per_run=5))
    assert result.a == pytest.approx(TRUE_A, abs=1e-6)  # intermediate points did not enter
    assert [p.n_params.size for p in result.profiles] == [9] * len(BUDGETS)


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_sweeps_give_intervals_that_hold_the_truth_and_approaches_2_3_agree(
    seed: int,
) -> None:
    obs = _sweep(noise=0.003, seed=seed)
    two = fit(obs, FitConfig(approach=2, bootstrap=100, seed=seed))
    three = fit(
        obs, FitConfig(approach=3, bootstrap=60, grid=coarse_grid(), bootstrap_starts=2, seed=seed)
    )
    for report in (two, three):
        assert report.intervals["a"].contains(TRUE_A)
        assert report.intervals["b"].contains(1.0 - TRUE_A)
    for name in ("a", "b"):
        assert two.intervals[name].contains(three.estimates[name])
        assert three.intervals[name].contains(two.estimates[name])
    for name in ("E", "A", "B", "alpha", "beta"):
        assert three.intervals[name].contains(getattr(LAW, name)), name


def test_isoflop_minimum_outside_the_sizes_trained_warns() -> None:
    shapes = [
        (LAW.optimal_params(c) * f, c / (6 * LAW.optimal_params(c) * f))
        for c in BUDGETS
        for f in np.geomspace(1 / 32, 1 / 4, 5)
    ]
    with pytest.warns(FitWarning, match="grid edge"):
        result = fit_isoflop(simulate_runs(LAW, shapes))
    assert not any(p.inside for p in result.profiles)


def test_budgets_without_enough_sizes_are_skipped_or_refused() -> None:
    obs = simulate_runs(LAW, isoflop_design(LAW, BUDGETS[:2], 5) + isoflop_design(LAW, [1e20], 2))
    with pytest.warns(FitWarning, match="2 model size"):
        result = fit_isoflop(obs)
    assert len(result.profiles) == 2
    with pytest.raises(ScalingError, match="at least 2 isoFLOP budgets") as info:
        fit_isoflop(simulate_runs(LAW, isoflop_design(LAW, [1e19], 7)))
    assert info.value.hint


@settings(max_examples=60, deadline=None)
@given(
    log_c=st.lists(st.floats(15.0, 25.0), min_size=1, max_size=40), tolerance=st.floats(0.01, 0.5)
)
def test_budget_groups_never_span_more_than_the_tolerance(
    log_c: list[float], tolerance: float
) -> None:
    values = np.array(log_c)
    labels = group_budgets(10.0**values, tolerance)
    for label in np.unique(labels):
        members = values[labels == label]
        assert members.max() - members.min() <= tolerance + 1e-9
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(labels[order]) >= 0)  # groups are contiguous runs of sorted budgets


def test_envelope_of_noise_free_curves_recovers_the_exponent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)  # sizes span the optimum: nothing to flag
        result = fit_envelope(_curves())
    assert result.a == pytest.approx(TRUE_A, abs=0.01)  # sizes are discrete: a small step bias
    assert result.law.b == pytest.approx(1.0 - result.a)
    assert set(np.unique(result.n_opt)) <= set(SIZES)


@pytest.mark.parametrize("seed", [0, 1])
def test_envelope_bootstrap_interval_holds_the_truth(seed: int) -> None:
    report = fit(_curves(noise=0.003, seed=seed), FitConfig(approach=1, bootstrap=100, seed=seed))
    assert report.intervals["a"].contains(TRUE_A)
    assert (
        report.intervals["n_opt"].low < report.estimates["n_opt"] < report.intervals["n_opt"].high
    )


def test_envelope_needs_curves_and_flags_sizes_that_miss_the_optimum() -> None:
    with pytest.raises(ScalingError, match="loss curves"):
        fit_envelope(_sweep())  # final points only: no curves
    too_small = np.geomspace(1e6, 1e7, 6)  # every size far below N_opt at these budgets
    long_runs = simulate_runs(LAW, [(n, 20000.0 * n) for n in too_small], evals_per_run=40)
    with pytest.warns(FitWarning, match="grid edge"):
        result = fit_envelope(long_runs.drop_early(0.1))
    assert too_small.max() not in result.n_opt  # censored: the optimum may lie beyond it
