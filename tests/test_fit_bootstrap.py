"""Bootstrap over runs, intervals, the law file, and Hitchhiker-style ARE evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chinchax.errors import ScalingError
from scaling.fit import (FitConfig, coarse_grid, evaluate, fit, point_weights, resample_runs, write_law_file)
from scaling.laws import PUBLISHED_LAWS, ParametricLaw, PowerLawAllocation, get_law
from fixtures import isoflop_design, simulate_runs
from scaling.observations import Observations

LAW = PUBLISHED_LAWS["chinchilla"]
TARGET = 1e22
QUICK = dict(grid=coarse_grid(), bootstrap_starts=2, target_flops=TARGET)


def _ladder(seed: int = 0) -> Observations:
    """8 sizes, 20 evals each, seed-like run noise: points of a run move together."""
    shapes = [(n, 100.0 * n) for n in np.geomspace(2e7, 2e9, 8)]
    return simulate_runs(
        LAW, shapes, evals_per_run=20, noise=0.001, run_noise=0.004, seed=seed
    ).drop_early(0.1)


@pytest.fixture(scope="module")
def report():
    return fit(_ladder(), FitConfig(bootstrap=100, **QUICK))


def test_resampling_draws_whole_runs() -> None:
    counts = resample_runs(n_runs=7, n_resamples=50, seed=3)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(counts, resample_runs(7, 50, seed=3))
    assert not np.array_equal(counts, resample_runs(7, 50, seed=4))
    obs = _ladder()
    weights = point_weights(obs, resample_runs(obs.n_runs, 20, seed=0))
    for run in obs.runs:
        rows = obs.run_id == run
        assert (weights[:, rows] == weights[:, rows][:, :1]).all()  # one weight per run


def test_intervals_hold_the_true_law_and_its_allocation(report) -> None:
    truth = LAW.allocate(TARGET)
    expected = {
        "E": LAW.E,
        "A": LAW.A,
        "B": LAW.B,
        "alpha": LAW.alpha,
        "beta": LAW.beta,
        "a": LAW.params_exponent,
        "b": LAW.tokens_exponent,
        "n_opt": truth.n_params,
        "tokens_opt": truth.tokens,
        "loss_opt": truth.loss,
    }
    for name, value in expected.items():
        interval = report.intervals[name]
        assert interval.contains(value), (name, value, interval)
        assert interval.contains(interval.estimate), name
    assert report.bootstrap.n_failed == 0 and report.bootstrap.samples.shape == (100, 11)


def test_resampling_runs_is_wider_than_resampling_rows() -> None:
    """Points of one run share its noise; treating them as independent understates it."""
    obs = _ladder(seed=1)
    as_rows = Observations(
        obs.n_params,
        obs.tokens,
        obs.flops,
        obs.loss,
        np.array([f"p{i}" for i in range(len(obs))], dtype=object),
        obs.seed,
        obs.step,
    )
    config = FitConfig(bootstrap=60, **QUICK)
    by_run = fit(obs, config).intervals["alpha"]
    by_row = fit(as_rows, config).intervals["alpha"]
    assert (by_run.high - by_run.low) > 2.0 * (by_row.high - by_row.low)


def test_bootstrap_is_reproducible_per_seed() -> None:
    obs = _ladder(seed=2)
    config = FitConfig(bootstrap=20, **QUICK)
    first, again = fit(obs, config), fit(obs, config)
    other = fit(obs, FitConfig(bootstrap=20, seed=1, **QUICK))
    np.testing.assert_array_equal(first.bootstrap.samples, again.bootstrap.samples)
    assert not np.array_equal(first.bootstrap.samples, other.bootstrap.samples)


def test_law_file_round_trips_through_get_law(report, tmp_path: Path) -> None:
    path = write_law_file(report, tmp_path / "law.json", {"inputs": ["x"]})
    law = get_law(str(path))
    assert isinstance(law, ParametricLaw)
    assert (law.E, law.A, law.B, law.alpha, law.beta) == pytest.approx(
        (report.law.E, report.law.A, report.law.B, report.law.alpha, report.law.beta), rel=1e-12
    )
    assert len(law.samples) == 100 and all(len(row) == 6 for row in law.samples)
    assert law.allocate(TARGET).n_params == pytest.approx(report.estimates["n_opt"], rel=1e-9)
    data = json.loads(path.read_text())
    assert data["law"]["form"] == "parametric"
    assert data["exponents"]["a"] == pytest.approx(law.params_exponent)
    assert set(data["intervals"]) >= {"E", "A", "B", "alpha", "beta", "a", "b", "n_opt"}
    assert len(data["data"]) == len(report.observations)
    assert data["settings"]["inputs"] == ["x"] and data["settings"]["bootstrap"] == 100
    assert data["allocation"]["flops"] == TARGET


def test_power_law_file_for_approach_2(tmp_path: Path) -> None:
    obs = simulate_runs(LAW, isoflop_design(LAW, np.geomspace(1e18, 1e20, 4), 7), noise=0.002)
    result = fit(obs, FitConfig(approach=2, bootstrap=40, target_flops=TARGET))
    law = get_law(str(write_law_file(result, tmp_path / "iso.json")))
    assert isinstance(law, PowerLawAllocation)
    assert law.a == pytest.approx(result.estimates["a"]) and law.n_coef == pytest.approx(
        result.estimates["n_coef"]
    )
    assert result.intervals["tokens_opt"].contains(law.allocate(TARGET).tokens)


def test_are_scores_the_held_out_tail_of_the_largest_run() -> None:
    obs = _ladder(seed=3)
    result = evaluate(obs, FitConfig(grid=coarse_grid()))
    largest = obs.run_id[np.argmax(obs.n_params)]
    assert result.target_run == largest
    final = obs.tokens[obs.run_id == largest].max()
    assert (result.heldout.tokens > 0.7 * final).all() and (result.heldout.run_id == largest).all()
    assert len(result.heldout) + result.n_fit == len(obs)
    manual = np.mean(
        np.abs(
            result.heldout.loss - result.law.loss(result.heldout.n_params, result.heldout.tokens)
        )
        / result.heldout.loss
    )
    assert result.are == pytest.approx(manual, rel=1e-12)
    assert result.are < 0.01  # 0.4% run noise: the realistic floor is near it


def test_are_never_fits_on_the_held_out_points() -> None:
    obs = _ladder(seed=3)
    result = evaluate(obs, FitConfig(grid=coarse_grid()))
    in_target = obs.run_id == result.target_run
    held = in_target & (obs.tokens > 0.7 * obs.tokens[in_target].max())
    spoiled = Observations(
        obs.n_params,
        obs.tokens,
        obs.flops,
        np.where(held, obs.loss * 1.5, obs.loss),
        obs.run_id,
        obs.seed,
        obs.step,
    )
    again = evaluate(spoiled, FitConfig(grid=coarse_grid()))
    assert again.law.E == pytest.approx(result.law.E, rel=1e-9)
    assert again.are > 0.3
    with pytest.raises(ScalingError, match="target run 'nope'"):
        evaluate(obs, target_run="nope")


def test_bootstrap_plot_draws_replicates_hundreds_of_decades_apart(tmp_path: Path) -> None:
    """A poorly constrained fit (a ladder of toy models) gave A's replicates from 1.8 to 1e252,
    beyond matplotlib's log-axis ticks; the histogram must still be drawn (skewed quantities
    in log10)."""
    from scaling.fit import Bootstrap
    from scaling.plots import plot_bootstrap

    rng = np.random.default_rng(0)
    # most replicates within 13 decades, the top 5% scattered up to 1e252 (as measured)
    log_a = np.concatenate([rng.uniform(0.25, 13.0, 190), rng.uniform(80.0, 250.0, 9), [252.04]])
    samples = np.column_stack([10.0 ** log_a,                          # A
                               rng.uniform(0.45, 20.0, 200),           # alpha
                               np.full(200, np.nan)])                  # never fitted: left out
    boot = Bootstrap(names=("A", "alpha", "E"), samples=samples, n_resamples=200, n_failed=0,
                     confidence=0.9)
    path = plot_bootstrap(boot, tmp_path / "bootstrap.png", {"A": 1.5e7, "alpha": 1.95, "E": 1.15})
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_degenerate_replicate_is_counted_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: one replicate whose allocation divides by zero stopped 'chinchax fit'."""
    import scaling.fit_bootstrap as module

    real, calls = module.parametric_quantities, []

    def fragile(law: ParametricLaw, target: float) -> dict[str, float]:
        calls.append(law)
        if len(calls) == 3:  # the second replicate (the first call names the columns)
            raise ZeroDivisionError("float division by zero")
        return real(law, target)

    monkeypatch.setattr(module, "parametric_quantities", fragile)
    result = fit(_ladder(), FitConfig(bootstrap=12, **QUICK))
    assert result.bootstrap.n_failed == 1 and result.bootstrap.samples.shape[0] == 11
    assert "1 of 12 bootstrap resamples could not be fitted" in result.warnings
