"""Approach 3: the parametric Huber fit, its batched L-BFGS, fixed coefficients, warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from chinchax.errors import ScalingError
from scaling.fit import (FitConfig, FitWarning, HuberLogObjective, StartGrid, coarse_grid, fit, fit_continual, fit_parametric, lbfgs_batched)
from scaling.laws import PUBLISHED_LAWS, ParametricLaw
from fixtures import simulate_runs
from scaling.observations import Observations, read_csv

# A factorial design: every (N, D) pair is a run, spanning three decades of each.
FACTORIAL = [(n, d) for n in np.geomspace(1e6, 1e9, 6) for d in np.geomspace(1e8, 1e11, 6)]
QUICK = FitConfig(grid=coarse_grid())


@pytest.fixture(scope="module")
def epoch(anchors_dir: Path) -> Observations:
    """Epoch's 245 points less the 5 highest-loss ones, as in Besiroglu et al. (2024)."""
    return read_csv(anchors_dir / "svg_extracted_data.csv").drop_highest_loss(5)


def test_epoch_data_lands_inside_epochs_intervals_and_near_their_estimates(
    epoch: Observations,
) -> None:
    assert len(epoch) == 240
    law = fit_parametric(epoch).law  # the full 4,500-start grid
    assert 1.769 <= law.E <= 1.871
    assert 0.317 <= law.alpha <= 0.373
    assert 0.331 <= law.beta <= 0.415
    published = PUBLISHED_LAWS["epoch-2024"]
    assert law.E == pytest.approx(published.E, abs=0.005)
    assert law.alpha == pytest.approx(published.alpha, abs=0.003)
    assert law.beta == pytest.approx(published.beta, abs=0.003)
    assert law.A == pytest.approx(published.A, rel=0.03)
    assert law.B == pytest.approx(published.B, rel=0.05)


@settings(max_examples=4, deadline=None)
@given(
    e=st.floats(1.0, 2.5),
    log_a=st.floats(np.log(50), np.log(2000)),
    log_b=st.floats(np.log(50), np.log(5000)),
    alpha=st.floats(0.2, 0.5),
    beta=st.floats(0.2, 0.5),
)
def test_noise_free_data_give_back_the_law(
    e: float, log_a: float, log_b: float, alpha: float, beta: float
) -> None:
    truth = ParametricLaw(
        E=e, A=float(np.exp(log_a)), B=float(np.exp(log_b)), alpha=alpha, beta=beta
    )
    got = fit_parametric(simulate_runs(truth, FACTORIAL), QUICK).law
    np.testing.assert_allclose(
        [got.E, got.A, got.B, got.alpha, got.beta],
        [truth.E, truth.A, truth.B, truth.alpha, truth.beta],
        rtol=1e-4,
    )


def test_continual_pretraining_law_with_e_a_alpha_fixed() -> None:
    zheng = ParametricLaw(E=1.55, A=420.0, B=433.3, alpha=0.40, beta=0.20, gamma=0.08)
    shapes = [(n, 2e10) for n in np.geomspace(1e8, 1e10, 6)]
    obs = simulate_runs(zheng, shapes, evals_per_run=20, noise=0.003, seed=3).drop_early(0.1)
    base = ParametricLaw(E=1.55, A=420.0, B=900.0, alpha=0.40, beta=0.31)  # a from-scratch fit
    fitted = fit_continual(obs, base)
    assert fitted.free == ("B", "beta", "gamma")
    assert (fitted.law.E, fitted.law.A, fitted.law.alpha) == (1.55, 420.0, 0.40)
    config = FitConfig(
        fixed={"E": 1.55, "A": 420.0, "alpha": 0.40},
        free_gamma=True,
        bootstrap=60,
        grid=coarse_grid(),
    )
    report = fit(obs, config)
    assert report.law.B == pytest.approx(fitted.law.B, rel=1e-6)
    for name, value in (("B", 433.3), ("beta", 0.20), ("gamma", 0.08)):
        assert report.intervals[name].contains(value), (name, report.intervals[name])
    assert report.law.gamma == pytest.approx(0.08, abs=0.005)
    assert report.law.beta == pytest.approx(0.20, abs=0.005)


def test_any_coefficient_can_be_fixed() -> None:
    truth = PUBLISHED_LAWS["chinchilla"]
    obs = simulate_runs(truth, FACTORIAL, noise=0.002, seed=5)
    config = FitConfig(fixed={"beta": 0.28, "A": 406.4}, grid=coarse_grid())
    fitted = fit_parametric(obs, config)
    assert fitted.free == ("E", "B", "alpha")
    assert fitted.law.beta == 0.28 and fitted.law.A == 406.4 and fitted.law.gamma == 0.0
    assert fitted.law.E == pytest.approx(truth.E, rel=0.01)
    assert fitted.law.alpha == pytest.approx(truth.alpha, rel=0.02)


def test_warns_when_the_optimum_lies_beyond_the_start_grid() -> None:
    obs = simulate_runs(ParametricLaw(E=5.0, A=400.0, B=400.0, alpha=0.3, beta=0.3), FACTORIAL)
    with pytest.warns(FitWarning, match="grid edge: log E"):
        fitted = fit_parametric(obs, QUICK)
    assert fitted.law.E == pytest.approx(5.0, rel=1e-4)  # found anyway, but flagged
    wide = FitConfig(
        grid=StartGrid(
            e=[-1.0, 2.0],
            a=[0.0, 12.5, 25.0],
            b=[0.0, 12.5, 25.0],
            alpha=[0.0, 1.0],
            beta=[0.0, 1.0],
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        fit_parametric(obs, wide)


def test_objective_gradient_matches_finite_differences() -> None:
    obs = simulate_runs(
        ParametricLaw(E=1.7, A=300.0, B=500.0, alpha=0.35, beta=0.3, gamma=0.05),
        FACTORIAL[:20],
        noise=0.01,
        seed=1,
    )
    weights = np.random.default_rng(0).integers(0, 3, size=(2, len(obs))).astype(float)
    objective = HuberLogObjective(
        obs, delta=0.01, fixed={}, weights=weights, weight_rows=np.array([1, 0])
    )
    x = np.array([[0.5, 5.5, 6.0, 0.3, 0.25, 0.04], [0.6, 6.0, 6.3, 0.36, 0.31, 0.06]])
    f, g = objective(x, np.arange(2))
    step = 1e-6
    for j in range(6):
        bump = np.zeros_like(x)
        bump[:, j] = step
        numeric = (objective(x + bump, np.arange(2))[0] - objective(x - bump, np.arange(2))[0]) / (
            2 * step
        )
        np.testing.assert_allclose(g[:, j], numeric, rtol=1e-5, atol=1e-9)
    # problem 0 uses weight row 1: the value is that row's weighted mean Huber / delta
    law = ParametricLaw(*np.exp(x[0, :3]), *x[0, 3:])
    r = np.log(law.loss(obs.n_params, obs.tokens)) - np.log(obs.loss)
    clipped = np.clip(r, -0.01, 0.01)
    expected = np.sum(weights[1] * clipped * (r - clipped / 2)) / (0.01 * weights[1].sum())
    assert f[0] == pytest.approx(expected, rel=1e-12)


def test_batched_lbfgs_solves_many_rosenbrocks_and_only_evaluates_active_ones() -> None:
    centres = np.linspace(-1.5, 2.0, 50)
    seen_sizes: list[int] = []

    def rosenbrock(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen_sizes.append(rows.size)
        c = centres[rows]
        u, v = x[:, 0], x[:, 1]
        f = (c - u) ** 2 + 100.0 * (v - u**2) ** 2
        g = np.stack([-2 * (c - u) - 400.0 * u * (v - u**2), 200.0 * (v - u**2)], axis=1)
        return f, g

    result = lbfgs_batched(rosenbrock, np.tile([-1.2, 1.0], (50, 1)), max_iter=2000, gtol=1e-9)
    assert result.converged.all()
    np.testing.assert_allclose(result.x[:, 0], centres, atol=1e-5)
    np.testing.assert_allclose(result.x[:, 1], centres**2, atol=1e-4)
    assert seen_sizes[0] == 50 and min(seen_sizes) < 50  # finished problems drop out


def test_batched_search_matches_scipy_from_the_same_starts(epoch: Observations) -> None:
    config = FitConfig(search_dtype="float64")
    objective = HuberLogObjective(epoch, config.huber_delta, config.fixed_values)
    starts = config.grid.points(config.free_parameters)[::900]
    ours = lbfgs_batched(objective, starts, gtol=config.gtol, ftol=config.ftol)
    for start, value in zip(starts, ours.f):
        single = minimize(
            lambda x: tuple(v[0] for v in objective(x[None], np.zeros(1, int))),
            start,
            jac=True,
            method="L-BFGS-B",
        )
        assert value <= single.fun + 1e-9


def test_too_little_data_and_bad_settings_are_clear_errors() -> None:
    two_runs = simulate_runs(PUBLISHED_LAWS["chinchilla"], FACTORIAL[:2])
    with pytest.raises(ScalingError, match="at least 3 runs"):
        fit_parametric(two_runs, QUICK)
    one_size = simulate_runs(
        PUBLISHED_LAWS["chinchilla"], [(1e8, d) for d in (1e9, 2e9, 4e9, 8e9, 1e10, 2e10)]
    )
    with pytest.raises(ScalingError, match="one model size"):
        fit_parametric(one_size, QUICK)
    with pytest.raises(ScalingError, match="approach must be 1, 2, 3 or curve"):
        FitConfig(approach=4)
    with pytest.raises(ScalingError, match="unknown coefficient 'delta'"):
        FitConfig(fixed={"delta": 1.0})
    with pytest.raises(ScalingError, match="fixed E=-1"):
        FitConfig(fixed={"E": -1.0})
