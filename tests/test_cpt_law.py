"""The continual pre-training laws of Zheng et al. (2024): allocations, derivation, fitting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from chinchax.errors import ChinchaxError, ScalingError
from scaling.cpt import (
    ZHENG_2024,
    ZHENG_2024_CPT,
    ZHENG_CPT_ALLOCATION,
    ZHENG_SCRATCH_ALLOCATION,
    compute_saving,
    cpt_fit_config,
    crossover_tokens,
    data_term_for_allocation,
    equal_loss_tokens,
    fit_cpt_law,
)
from scaling.fit import FitConfig, write_law_file
from scaling.laws import PUBLISHED_LAWS, ParametricLaw, PowerLawAllocation, get_law
from fixtures import simulate_runs

BUDGETS = np.geomspace(1e18, 1e22, 9)
# CPT runs: six model sizes over two decades, each continually trained for one of three
# lengths, with evals along the way (as a real ladder of CPT runs would log them).
CPT_DESIGN = [(n, d) for n in np.geomspace(1e8, 1e10, 6) for d in (5e9, 2e10, 8e10)]


@pytest.mark.parametrize(
    "law, n_coef, exponent",
    [(ZHENG_2024, 0.324, 0.429), (ZHENG_2024_CPT, 4.79, 0.385)],
    ids=["from-scratch", "cpt"],
)
def test_laws_reproduce_the_papers_allocations_within_5_percent(
    law: ParametricLaw, n_coef: float, exponent: float
) -> None:
    for budget in BUDGETS:
        printed = n_coef * budget**exponent
        assert law.optimal_params(budget) == pytest.approx(printed, rel=0.05), budget
        allocation = law.allocate(budget)
        assert 6.0 * allocation.n_params * allocation.tokens == pytest.approx(budget, rel=1e-12)


def test_from_scratch_data_term_is_derived_from_the_printed_allocation() -> None:
    law = ZHENG_2024
    assert (law.E, law.A, law.alpha, law.gamma) == (1.55, 420.0, 0.40, 0.0)
    assert law.params_exponent == pytest.approx(0.429, abs=1e-12)
    # Exact at every budget, not only within 5%: the inverse is the allocation's.
    for budget in BUDGETS:
        assert law.optimal_params(budget) == pytest.approx(0.324 * budget**0.429, rel=1e-9)


def test_inverting_the_cpt_allocation_gives_back_the_printed_cpt_coefficients() -> None:
    b, beta = data_term_for_allocation(ZHENG_CPT_ALLOCATION, A=420.0, alpha=0.40, gamma=0.08)
    assert beta == pytest.approx(0.20, abs=0.001)
    assert b == pytest.approx(433.3, rel=0.01)


@pytest.mark.parametrize(
    "law",
    [
        ParametricLaw(E=1.7, A=406.4, B=410.7, alpha=0.34, beta=0.28),
        ParametricLaw(E=1.8, A=482.0, B=2085.4, alpha=0.35, beta=0.37),
        ParametricLaw(E=1.5, A=300.0, B=900.0, alpha=0.45, beta=0.25, gamma=0.1),
    ],
)
def test_data_term_for_allocation_inverts_the_compute_optimum(law: ParametricLaw) -> None:
    a = law.params_exponent
    allocation = PowerLawAllocation(a=a, n_coef=law.optimal_params(1.0))
    b, beta = data_term_for_allocation(allocation, A=law.A, alpha=law.alpha, gamma=law.gamma)
    assert beta == pytest.approx(law.beta, rel=1e-10)
    assert b == pytest.approx(law.B, rel=1e-9)


def test_impossible_allocations_are_refused() -> None:
    with pytest.raises(ScalingError):
        data_term_for_allocation(PowerLawAllocation(a=1.2, n_coef=0.3), A=420.0, alpha=0.4)
    with pytest.raises(ScalingError):
        data_term_for_allocation(ZHENG_SCRATCH_ALLOCATION, A=420.0, alpha=0.05, gamma=0.08)


def test_fit_recovers_the_cpt_data_term_from_noise_free_runs() -> None:
    obs = simulate_runs(ZHENG_2024_CPT, CPT_DESIGN, evals_per_run=8)
    report = fit_cpt_law(obs, ZHENG_2024)
    law = report.law
    assert (law.E, law.A, law.alpha) == (ZHENG_2024.E, ZHENG_2024.A, ZHENG_2024.alpha)
    assert report.detail.free == ("B", "beta", "gamma")
    assert law.B == pytest.approx(433.3, rel=1e-3)
    assert law.beta == pytest.approx(0.20, abs=1e-4)
    assert law.gamma == pytest.approx(0.08, abs=1e-4)


def test_fit_recovers_the_cpt_data_term_from_noisy_runs_within_its_intervals() -> None:
    truth = ParametricLaw(E=1.55, A=420.0, B=433.3, alpha=0.40, beta=0.20, gamma=0.08)
    obs = simulate_runs(truth, CPT_DESIGN, evals_per_run=8, noise=0.003, seed=11).drop_early(0.1)
    report = fit_cpt_law(
        obs,
        "zheng-2024" if "zheng-2024" in PUBLISHED_LAWS else ZHENG_2024,
        FitConfig(bootstrap=40, bootstrap_starts=4),
    )
    law = report.law
    assert law.B == pytest.approx(433.3, rel=0.05)
    assert law.beta == pytest.approx(0.20, abs=0.005)
    assert law.gamma == pytest.approx(0.08, abs=0.005)
    for name, value in (("B", 433.3), ("beta", 0.20), ("gamma", 0.08)):
        interval = report.intervals[name]
        assert interval.contains(value), (name, interval)


def test_fitted_cpt_law_file_allocates_like_the_fit(tmp_path: Path) -> None:
    obs = simulate_runs(ZHENG_2024_CPT, CPT_DESIGN, evals_per_run=4)
    report = fit_cpt_law(obs, ZHENG_2024, name="cpt-demo")
    path = write_law_file(report, tmp_path / "cpt.json")
    reread = get_law(path)
    assert isinstance(reread, ParametricLaw) and reread.gamma == pytest.approx(report.law.gamma)
    for budget in (1e19, 1e21):
        assert reread.optimal_params(budget) == pytest.approx(
            report.law.optimal_params(budget), rel=1e-9
        )
        assert reread.optimal_params(budget) == pytest.approx(4.79 * budget**0.385, rel=0.05)


def test_base_law_must_be_a_parametric_from_scratch_law() -> None:
    obs = simulate_runs(ZHENG_2024_CPT, CPT_DESIGN)
    with pytest.raises(ScalingError, match="already a CPT law"):
        fit_cpt_law(obs, ZHENG_2024_CPT)
    with pytest.raises(ScalingError, match="power law") as caught:
        cpt_fit_config("chinchilla-approach1")
    assert isinstance(caught.value, ChinchaxError) and caught.value.hint
    with pytest.raises(ScalingError):
        cpt_fit_config(ZHENG_2024, FitConfig(approach=2))


def test_one_model_size_cannot_identify_gamma() -> None:
    obs = simulate_runs(ZHENG_2024_CPT, [(1e9, d) for d in (1e9, 1e10, 1e11)], evals_per_run=5)
    with pytest.raises(ScalingError, match="one model size"):
        fit_cpt_law(obs, ZHENG_2024)


@pytest.mark.parametrize("n_params", [1e8, 1e9, 1e10])
def test_equal_loss_tokens_match_the_laws_and_the_crossover(n_params: float) -> None:
    crossover = crossover_tokens(ZHENG_2024, ZHENG_2024_CPT, n_params)
    for tokens in (crossover / 8, crossover / 2, crossover * 2, crossover * 8):
        cpt_tokens = equal_loss_tokens(ZHENG_2024, ZHENG_2024_CPT, n_params, tokens)
        assert ZHENG_2024_CPT.loss(n_params, cpt_tokens) == pytest.approx(
            ZHENG_2024.loss(n_params, tokens), rel=1e-12
        )
        saving = compute_saving(ZHENG_2024, ZHENG_2024_CPT, n_params, tokens)
        assert (saving > 0) == (tokens < crossover)
    assert compute_saving(ZHENG_2024, ZHENG_2024_CPT, n_params, crossover) == pytest.approx(
        0.0, abs=1e-9
    )


def test_saving_needs_laws_that_share_the_capacity_term() -> None:
    other = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    with pytest.raises(ScalingError, match="share"):
        compute_saving(other, ZHENG_2024_CPT, 1e9, 1e9)
    with pytest.raises(ScalingError, match="first law"):
        compute_saving(ZHENG_2024_CPT, ZHENG_2024_CPT, 1e9, 1e9)
    faster = ParametricLaw(E=1.55, A=420.0, B=433.3, alpha=0.40, beta=0.35, gamma=0.08)
    assert math.isinf(crossover_tokens(ZHENG_2024, faster, 1e9))


@pytest.mark.parametrize(
    "name, law", [("zheng-2024", ZHENG_2024), ("zheng-2024-cpt", ZHENG_2024_CPT)]
)
def test_published_entries_carry_the_derived_coefficients(name: str, law: ParametricLaw) -> None:
    if name not in PUBLISHED_LAWS:
        pytest.skip(f"{name!r} is not in scaling.laws.PUBLISHED_LAWS yet")
    published = get_law(name)
    assert isinstance(published, ParametricLaw)
    for key in ("E", "A", "B", "alpha", "beta", "gamma"):
        assert getattr(published, key) == pytest.approx(getattr(law, key), rel=1e-4), key
