"""The loss-curve law: schedules and areas, the fit, its reduction to L(N, D), the cosine bias that
broke a real ladder, and the calibration of its intervals on synthetic ladders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from chinchax.errors import ScalingError
from curve_ladders import TRUTH, draw_ladder, scaled_schedule, write_ladder_runs
from scaling.curve_law import read_curve_points
from scaling.fit import FitConfig, StartGrid, coarse_grid, fit_parametric
from scaling.fit_curve import bootstrap_curve, fit_curve
from scaling.lr_schedule import Schedule
from training.optim import OptimConfig, learning_rate_at_step

# A small start grid around the plausible ranges: each synthetic ladder fits in about a second.
SMALL = FitConfig(grid=StartGrid(e=[0.0, 0.5], a=[0.0, 5.0, 10.0], b=[0.0, 5.0, 10.0],
                                 alpha=[0.5], beta=[0.5]), polish_starts=4, bootstrap_starts=4)


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
@pytest.mark.parametrize("steps,warmup", [(157, None), (60, 0), (400, 13)])
def test_schedule_matches_the_trainers(kind: str, steps: int, warmup: int | None) -> None:
    cfg = OptimConfig(learning_rate=0.02, schedule=kind, warmup_steps=warmup, wsd_decay_shape="cosine")
    trainer = learning_rate_at_step(cfg, steps)
    expected = np.array([trainer(s) for s in range(steps)])
    config = {"optim": {"learning_rate": 0.02, "schedule": kind, "warmup_steps": warmup,
                        "wsd_decay_shape": "cosine"}, "train": {"steps": steps, "global_batch": 8, "seq_len": 64}}
    assert Schedule.from_config(config).rates() == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_areas_count_tokens_and_only_annealing() -> None:
    small = Schedule("cosine", 0.01, 300, 1024.0, warmup=15)
    large = Schedule("cosine", 0.01, 300, 4096.0, warmup=15)
    (s1, s2), (l1, l2) = small.areas(), large.areas()
    assert l1 == pytest.approx(4 * s1) and l2 == pytest.approx(4 * s2)  # LR × tokens, not × steps
    constant = Schedule("constant", 0.01, 300, 1024.0, warmup=15).areas()[1]
    assert not constant.any()  # warmup and a flat rate anneal nothing
    rates, momentum, total = small.rates(), 0.0, []
    for i in range(1, rates.size + 1):  # the recursion of Tissue et al., written out
        momentum = 0.999 * momentum + max(rates[i - 2] - rates[i - 1], 0.0) if i > 1 else 0.0
        total.append(momentum)
    assert s2 == pytest.approx(np.cumsum(total) * 1024.0)


def test_curve_fit_recovers_the_law_and_its_reduction_predicts_the_same_loss() -> None:
    ladder = draw_ladder(0, noise=0.0, run_noise=0.0)
    law = fit_curve(ladder.points, FitConfig(grid=coarse_grid())).law
    for name, value in TRUTH.coefficients.items():
        assert getattr(law, name) == pytest.approx(value, rel=1e-4)
    reduced = law.reduced(ladder.target_schedule)
    tokens = ladder.target_schedule.steps * ladder.target_schedule.tokens_per_step
    assert reduced.loss(ladder.target_n, tokens) == pytest.approx(ladder.truth, rel=1e-9)


def test_reduction_keeps_the_annealing_bonus_when_e_is_not_identified() -> None:
    """E fitted at ~0 (a real ladder's case): E - C*S2 < 0 must stay, not be clipped away."""
    from scaling.curve_law import CurveLaw

    law = CurveLaw(E=1e-9, A=7.5, B=23.0, alpha=0.23, beta=0.2, C=8e-5, lam=0.99)
    schedule = Schedule("cosine", 0.01, 2000, 2048.0, warmup=10)
    reduced = law.reduced(schedule)
    assert reduced.E < 0  # the annealed floor of such runs, below E by C*S2_end
    tokens = schedule.steps * schedule.tokens_per_step
    assert reduced.loss(30_000, tokens) == pytest.approx(law.final_loss(30_000, schedule), rel=1e-12)


def test_cosine_mid_run_evals_do_not_bias_the_curve_fit() -> None:
    """Three budgets over 9x, a target 10x the largest, rates and batches varying by rule:
    Chinchilla's L(N, D) read off mid-run cosine evals misses the target; the curve law does not."""
    ladder = draw_ladder(0, budgets=(1e13, 3e13, 9e13), target_ratio=10.0, rule=scaled_schedule,
                         noise=0.002, run_noise=0.0)
    config = FitConfig(grid=coarse_grid())
    curve = fit_curve(ladder.points, config).law.final_loss(ladder.target_n, ladder.target_schedule)
    tokens = ladder.target_schedule.steps * ladder.target_schedule.tokens_per_step
    chinchilla = fit_parametric(ladder.points.obs, config, emit_warnings=False).law
    assert abs(curve / ladder.truth - 1.0) < 0.01
    assert abs(chinchilla.loss(ladder.target_n, tokens) / ladder.truth - 1.0) > 0.03


@pytest.mark.slow
def test_the_90_percent_interval_covers_the_truth_in_85_to_95_percent_of_ladders() -> None:
    # two restarts per replicate and 400 L-BFGS iterations: the same 90% coverage at half the time
    config = FitConfig(**{**SMALL.__dict__, "bootstrap": 100, "bootstrap_starts": 2, "max_iter": 400})
    covered = []
    for seed in range(50):
        ladder = draw_ladder(seed)
        law = bootstrap_curve(ladder.points, fit_curve(ladder.points, config), config).law
        s1, s2 = ladder.target_schedule.areas(law.lam)
        low, high = np.percentile(law.replicate_losses(ladder.target_n, s1[-1], s2[-1]), [5, 95])
        covered.append(low <= ladder.truth <= high)
    print(f"90% interval coverage: {np.mean(covered):.0%} of 50 synthetic ladders")
    assert 0.85 <= np.mean(covered) <= 0.95, f"coverage {np.mean(covered):.0%} of 50 ladders"


def test_backtest_leaves_out_the_largest_budget_or_model() -> None:
    from scaling.backtest import backtest_curve, held_out_runs

    ladder = draw_ladder(4)
    obs = ladder.points.obs
    by_budget = held_out_runs(obs, "budget")
    assert len(by_budget) == 3 and all(r.startswith("C3e+14") for r in by_budget)
    by_model = held_out_runs(obs, "model")
    assert by_model == {str(obs.run_id[int(np.argmax(obs.n_params))])}
    result = backtest_curve(ladder.points, SMALL, "budget")
    assert {row["run"] for row in result.rows} == by_budget and result.fit_runs == obs.n_runs - 3
    assert result.are == pytest.approx(np.mean([abs(r["predicted"] / r["actual"] - 1) for r in result.rows]))
    assert result.are < 0.02 and result.coverage is None  # no bootstrap, no interval


def test_a_bootstrapped_backtest_states_the_interval_its_target_would_get() -> None:
    from scaling.backtest import Backtest, backtest_curve
    from scaling.prediction import DEFAULT_NOISE_FLOOR

    ladder = draw_ladder(4)
    config = FitConfig(**{**SMALL.__dict__, "bootstrap": 30, "confidence": 0.9})
    result = backtest_curve(ladder.points, config, "budget")
    for row in result.rows:  # quantiles of the replicates, never narrower than the noise floor
        assert row["lower"] <= row["predicted"] * (1 - DEFAULT_NOISE_FLOOR) < row["predicted"]
        assert row["predicted"] * (1 + DEFAULT_NOISE_FLOOR) <= row["upper"]
        assert row["inside"] == (row["lower"] <= row["actual"] <= row["upper"])
    assert result.coverage == pytest.approx(np.mean([r["inside"] for r in result.rows]))
    again = Backtest.from_dict(result.to_dict())
    assert again.coverage == result.coverage and again.are == result.are


def test_a_step_floor_drops_early_evals_and_runs_that_end_before_it(tmp_path) -> None:
    ladder = draw_ladder(0, budgets=(3e12, 1e13, 3e13), noise=0.0, run_noise=0.0)
    runs = write_ladder_runs(tmp_path, ladder)
    last_step = {run.name: int(ladder.points.obs.step[ladder.points.obs.run_id == run.name].max())
                 for run in runs}
    floor = sorted(last_step.values())[2] + 1  # the three shortest runs end before it
    points = read_curve_points(runs, drop_early=0.0, drop_before_step=floor)
    assert points.obs.step.min() >= floor
    assert set(points.obs.runs) == {name for name, last in last_step.items() if last >= floor}
    with pytest.raises(ScalingError, match="non-negative"):
        read_curve_points(runs, drop_before_step=-1)


def test_a_step_floor_removes_the_early_transient_that_biases_the_target(tmp_path) -> None:
    """Evals before step 150 carry an early-training excess that no LR-area power law follows;
    fitted from step 150 on, the curve law predicts the target as if the excess were not there."""
    ladder = draw_ladder(1, budgets=(3e12, 1e13, 3e13, 1e14), noise=0.001, run_noise=0.0)
    obs = ladder.points.obs
    bumped = obs.loss * np.where(obs.step < 150, 1.0 + 0.3 * np.exp(-obs.step / 100.0), 1.0)
    points = dataclasses.replace(ladder.points, obs=dataclasses.replace(obs, loss=bumped))
    runs = write_ladder_runs(tmp_path, dataclasses.replace(ladder, points=points))
    config = FitConfig(grid=coarse_grid())

    def target_error(floor: int) -> float:
        law = fit_curve(read_curve_points(runs, 0.0, TRUTH.lam, floor), config).law
        return abs(law.final_loss(ladder.target_n, ladder.target_schedule) / ladder.truth - 1.0)

    assert target_error(150) < 0.01 < target_error(0)
