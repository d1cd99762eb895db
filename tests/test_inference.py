"""Inference-aware allocation: the math, the plan it drives, and ``chinchax allocate --inference-tokens``."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from chinchax.errors import ChinchaxError, ScalingError
import scaling.inference as inference_module
from launch.cli import main

from scaling.allocate import BudgetConfig, plan_run
from scaling.flops import count_params, forward_flops_per_sequence
from scaling.inference import (
    best_loss_for_total_cost,
    cheapest_for_loss,
    inference_tradeoff,
)
from scaling.laws import PUBLISHED_LAWS, ParametricLaw

PARAMETRIC = ["chinchilla", "chinchilla-unrounded", "epoch-2024"]
# A continual-pre-training-style law (gamma > 0) exercises the general frontier.
GAMMA_LAW = ParametricLaw(E=1.55, A=420.0, B=433.3, alpha=0.40, beta=0.20, gamma=0.08, name="zheng")
PALM_N, PALM_D = 540e9, 780e9
PALM_FLOPS = 6 * PALM_N * PALM_D
TINY = dict(flops=3e13, multiple_of=32, vocab_size=256, seq_len=256)


def _law(name: str) -> ParametricLaw:
    return GAMMA_LAW if name == "zheng" else PUBLISHED_LAWS[name]  # type: ignore[return-value]


# ------------------------------------------------------------------ T = 0 is Chinchilla


@pytest.mark.parametrize("name", [*PARAMETRIC, "zheng"])
@pytest.mark.parametrize("flops", [1e18, 1e21, 1e24])
def test_no_inference_is_chinchilla(name: str, flops: float) -> None:
    law = _law(name)
    optimum = law.allocate(flops)
    tradeoff = inference_tradeoff(law, flops, 0.0)
    for option in tradeoff.options:
        assert option.n_params == pytest.approx(optimum.n_params, rel=1e-7)
        assert option.tokens == pytest.approx(optimum.tokens, rel=1e-7)
        assert option.inference_flops == 0.0
        assert option.saving == pytest.approx(0.0, abs=1e-9)
    # the searches find the optimum on their own, from a loss or from a total
    n, d = cheapest_for_loss(law, optimum.loss, 0.0)
    assert (n, d) == pytest.approx((optimum.n_params, optimum.tokens), rel=1e-7)
    n, d = best_loss_for_total_cost(law, flops, 0.0)
    assert (n, d) == pytest.approx((optimum.n_params, optimum.tokens), rel=1e-7)


# ------------------------------------------------------------------ optimality


@pytest.mark.parametrize("name", [*PARAMETRIC, "zheng"])
@pytest.mark.parametrize("ratio", [0.3, 3.0, 30.0])
def test_options_are_optimal_against_a_dense_grid(name: str, ratio: float) -> None:
    """Serving ``ratio × D_opt`` tokens: no (N, D) on a fine grid beats either search."""
    law, flops = _law(name), 1e22
    optimum = law.allocate(flops)
    t = ratio * optimum.tokens
    result = inference_tradeoff(law, flops, t)
    chin, same_loss, same_cost = result.options
    # the loss target is met, and cheaper than Chinchilla over the model's life
    assert same_loss.loss == pytest.approx(chin.loss, rel=1e-10)
    assert same_loss.total_flops < chin.total_flops
    assert same_loss.n_params < chin.n_params and same_loss.tokens > chin.tokens
    # same total, lower loss
    assert same_cost.total_flops == pytest.approx(chin.total_flops, rel=1e-10)
    assert same_cost.loss < chin.loss and same_cost.n_params < chin.n_params
    grid = np.exp(np.linspace(math.log(chin.n_params) - 6, math.log(chin.n_params) + 1, 40_001))
    room = chin.loss - law.E - law.A * grid**-law.alpha
    ok = room > 0
    d_iso = (law.B / (room[ok] * grid[ok] ** law.gamma)) ** (1 / law.beta)
    totals = 6 * grid[ok] * d_iso + 2 * grid[ok] * t
    assert same_loss.total_flops <= totals.min() * (1 + 1e-9)
    d_cost = chin.total_flops / (6 * grid) - t / 3
    losses = law.loss(grid[d_cost > 0], d_cost[d_cost > 0])
    assert same_cost.loss <= losses.min() + 1e-12


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from([*PARAMETRIC, "zheng"]),
    log_flops=st.floats(min_value=17.0, max_value=26.0),
    log_t1=st.floats(min_value=6.0, max_value=15.0),
    factor=st.floats(min_value=1.05, max_value=1e3),
)
def test_more_inference_means_smaller_model_more_tokens(
    name: str, log_flops: float, log_t1: float, factor: float
) -> None:
    law, flops = _law(name), 10.0**log_flops
    t1 = 10.0**log_t1
    low, high = inference_tradeoff(law, flops, t1), inference_tradeoff(law, flops, t1 * factor)
    assert high.same_loss.n_params < low.same_loss.n_params
    assert high.same_loss.tokens > low.same_loss.tokens
    assert high.same_loss.saving >= low.same_loss.saving - 1e-12
    for result in (low, high):
        assert result.same_loss.loss == pytest.approx(result.chinchilla.loss, rel=1e-9)
        assert result.same_loss.total_flops <= result.chinchilla.total_flops * (1 + 1e-12)
        assert result.same_cost.loss <= result.chinchilla.loss + 1e-12


def test_n_opt_falls_monotonically_along_a_sweep() -> None:
    law = PUBLISHED_LAWS["chinchilla"]
    sweep = [inference_tradeoff(law, 1e21, t).same_loss for t in [0.0, *np.logspace(8, 16, 17)]]
    n = [o.n_params for o in sweep]
    d = [o.tokens for o in sweep]
    assert all(a > b for a, b in zip(n, n[1:])) and all(a < b for a, b in zip(d, d[1:]))
    # far beyond training, the model shrinks towards the smallest one that can reach the loss
    n_min = (law.A / (sweep[0].loss - law.E)) ** (1 / law.alpha)
    assert n_min < n[-1] < 1.5 * n_min


# ------------------------------------------------------------------ the PaLM example


def test_smaller_model_on_more_tokens_beats_palm_sizing() -> None:
    """Epoch's law at PaLM's training compute, 10T tokens served (scaling/inference.py)."""
    law, served = PUBLISHED_LAWS["epoch-2024"], 1e13

    def total(n: float, d: float) -> float:
        return 6 * n * d + 2 * n * served

    palm_loss, palm_total = law.loss(PALM_N, PALM_D), total(PALM_N, PALM_D)
    # the alternative: 140B on 3T tokens, same training compute, better loss, far cheaper
    assert 6 * 140e9 * 3e12 <= PALM_FLOPS
    assert law.loss(140e9, 3e12) < palm_loss
    assert total(140e9, 3e12) < 0.5 * palm_total
    # PaLM's loss is reachable with a model nine times smaller for under a quarter of the cost
    n, d = cheapest_for_loss(law, palm_loss, served)
    assert law.loss(n, d) == pytest.approx(palm_loss, rel=1e-10)
    assert n < PALM_N / 8 and d > 6 * PALM_D and total(n, d) < 0.25 * palm_total
    # and the inference-aware option beats Chinchilla's sizing of the same compute
    result = inference_tradeoff(law, PALM_FLOPS, served)
    assert result.chinchilla.loss < palm_loss
    assert (
        result.same_loss.saving > 0.15
        and result.same_loss.n_params < 0.6 * result.chinchilla.n_params
    )


def _docstring_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (inference_module.__doc__ or "").splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 7 and cells[1] != "N" and not set(cells[0]) <= {"="}:
            rows[cells[0]] = cells[1:]
    return rows


def _parse(cell: str) -> float:
    scale = {"B": 1e9, "T": 1e12}
    return float(cell[:-1]) * scale[cell[-1]] if cell[-1] in scale else float(cell)


def test_module_docstring_example_is_what_the_code_computes() -> None:
    law, served = PUBLISHED_LAWS["epoch-2024"], 1e13
    result = inference_tradeoff(law, PALM_FLOPS, served)
    n_palm_loss, d_palm_loss = cheapest_for_loss(law, law.loss(PALM_N, PALM_D), served)
    expected = {
        "PaLM (540B on 780B)": (PALM_N, PALM_D),
        "140B on 3T": (140e9, 3e12),
        "Chinchilla at ``C``": (result.chinchilla.n_params, result.chinchilla.tokens),
        "``same_loss``": (result.same_loss.n_params, result.same_loss.tokens),
        "``same_cost``": (result.same_cost.n_params, result.same_cost.tokens),
        "cheapest at PaLM's loss": (n_palm_loss, d_palm_loss),
    }
    rows = _docstring_rows()
    assert set(rows) == set(expected)
    for label, (n, d) in expected.items():
        values = [_parse(c) for c in rows[label]]
        computed = [n, d, law.loss(n, d), 6 * n * d, 2 * n * served, 6 * n * d + 2 * n * served]
        assert values[:2] == pytest.approx(computed[:2], rel=0.01), label
        assert values[2] == pytest.approx(computed[2], abs=6e-4), label
        assert values[3:] == pytest.approx(computed[3:], rel=0.01), label


# ------------------------------------------------------------------ errors


def _one_line(err: pytest.ExceptionInfo[ChinchaxError]) -> None:
    assert isinstance(err.value, ScalingError) and err.value.hint
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("loss", [1.69, 1.0, float("nan"), -2.0])
def test_unreachable_loss(loss: float) -> None:
    with pytest.raises(ScalingError, match="irreducible loss") as err:
        cheapest_for_loss(PUBLISHED_LAWS["chinchilla"], loss, 1e12)
    _one_line(err)


@pytest.mark.parametrize("tokens", [-1.0, float("inf"), float("nan"), True, "1e12"])
def test_bad_inference_tokens(tokens: object) -> None:
    with pytest.raises(ScalingError, match="inference tokens") as err:
        inference_tradeoff(PUBLISHED_LAWS["chinchilla"], 1e21, tokens)  # type: ignore[arg-type]
    _one_line(err)


def test_power_law_predicts_no_loss() -> None:
    with pytest.raises(ScalingError, match="predicts no loss") as err:
        inference_tradeoff(PUBLISHED_LAWS["chinchilla-approach2"], 1e21, 1e12)
    _one_line(err)
    assert "parametric" in (err.value.hint or "")


def test_law_without_frontier() -> None:
    bad = ParametricLaw(E=1.5, A=400.0, B=400.0, alpha=0.3, beta=0.1, gamma=0.2, name="bad")
    with pytest.raises(ScalingError, match="no compute-optimal frontier") as err:
        inference_tradeoff(bad, 1e21, 1e12)
    _one_line(err)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_bad_budget(bad: float) -> None:
    with pytest.raises(ScalingError, match="positive") as err:
        inference_tradeoff(PUBLISHED_LAWS["chinchilla"], bad, 1e12)
    _one_line(err)


# ------------------------------------------------------------------ plan_run


def test_plan_with_total_objective_is_smaller_and_longer() -> None:
    served = 1e12
    train = plan_run(BudgetConfig(flops=1e21, inference_tokens=served))
    total = plan_run(BudgetConfig(flops=1e21, inference_tokens=served, objective="total"))
    assert train.inference is not None and total.inference is not None
    option = total.inference.same_loss
    # the total plan is built for the inference-aware (N, D) through the usual shape search
    assert total.law_n_params == pytest.approx(option.n_params)
    assert total.n_params == pytest.approx(option.n_params, rel=0.10)
    assert total.target_flops == pytest.approx(option.train_flops)
    assert abs(total.flops / total.target_flops - 1) <= 0.01
    assert total.n_params < train.n_params and total.tokens > train.tokens
    assert total.objective == "total" and train.objective == "train"
    # exact counter for inference: one forward pass per served token at seq_len
    per_token = forward_flops_per_sequence(total.model, 2048) / 2048
    assert total.inference_flops == pytest.approx(per_token * served)
    assert total.total_flops < train.total_flops
    assert count_params(total.model) == total.n_params


def test_train_objective_keeps_chinchilla_and_reports_inference() -> None:
    plain = plan_run(BudgetConfig(**TINY))
    served = 20 * plain.tokens
    train = plan_run(BudgetConfig(**TINY, inference_tokens=served))
    assert (
        train.model == plain.model and train.tokens == plain.tokens and train.steps == plain.steps
    )
    assert train.target_flops == plain.target_flops == TINY["flops"]
    assert plain.inference is None and plain.inference_flops == 0.0
    assert train.inference is not None and train.inference_flops > 0
    assert train.total_flops == pytest.approx(train.flops + train.inference_flops)
    total = plan_run(BudgetConfig(**TINY, inference_tokens=served, objective="total"))
    assert total.n_params < train.n_params and total.tokens > train.tokens


def test_total_objective_without_inference_is_chinchilla() -> None:
    plain = plan_run(BudgetConfig(**TINY))
    total = plan_run(BudgetConfig(**TINY, objective="total"))
    assert total.model == plain.model and total.tokens == plain.tokens and total.inference is None


def test_power_law_plans_with_inference() -> None:
    with pytest.raises(ScalingError, match="predicts no loss"):
        plan_run(
            BudgetConfig(
                flops=1e21, law="chinchilla-approach2", inference_tokens=1e12, objective="total"
            )
        )
    plan = plan_run(BudgetConfig(flops=1e21, law="chinchilla-approach2", inference_tokens=1e12))
    assert plan.inference is None and plan.inference_flops > 0 and plan.predicted_loss is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(inference_tokens=-1.0), "inference_tokens"),
        (dict(inference_tokens=float("nan")), "inference_tokens"),
        (dict(objective="cheapest"), "objective"),
    ],
)
def test_bad_budget_fields(changes: dict, message: str) -> None:
    with pytest.raises(ScalingError, match=message) as err:
        BudgetConfig(**changes)
    assert err.value.hint


def test_budget_keys_in_omegaconf() -> None:
    merged = OmegaConf.merge(
        OmegaConf.structured(BudgetConfig),
        OmegaConf.create({"inference_tokens": 1e12, "objective": "total"}),
    )
    budget = OmegaConf.to_object(merged)
    assert isinstance(budget, BudgetConfig)
    assert budget.inference_tokens == 1e12 and budget.objective == "total"


def test_plan_to_dict_is_json() -> None:
    plan = plan_run(BudgetConfig(**TINY, inference_tokens=1e9, objective="total"))
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["inference"]["same_loss"]["n_params"] == pytest.approx(plan.law_n_params)
    assert data["total_flops"] == pytest.approx(plan.flops + plan.inference_flops)


# ------------------------------------------------------------------ CLI


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(["allocate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_adds_inference(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["--flops", "1e21", "--inference-tokens", "1e12"])
    for key in ("n_params", "tokens", "predicted_loss", "model", "steps"):
        assert key in data, key
    block = data["inference"]
    assert block["inference_tokens"] == 1e12 and block["flops"] == 1e21
    for name in ("chinchilla", "same_loss", "same_cost"):
        option = block[name]
        for key in (
            "n_params",
            "tokens",
            "loss",
            "train_flops",
            "inference_flops",
            "total_flops",
            "saving",
        ):
            assert isinstance(option[key], float), (name, key)
        assert option["total_flops"] == pytest.approx(
            option["train_flops"] + option["inference_flops"]
        )
    assert block["same_loss"]["saving"] > 0
    assert data["objective"] == "train"
    assert data["n_params"] == pytest.approx(block["chinchilla"]["n_params"], rel=0.10)
    total = _json(capsys, ["--flops", "1e21", "--inference-tokens", "1e12", "--objective", "total"])
    assert total["n_params"] == pytest.approx(block["same_loss"]["n_params"], rel=0.10)
    assert total["n_params"] < data["n_params"]


def test_cli_without_inference_has_no_block(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, ["--flops", "1e21"])
    assert data["inference"] is None and data["inference_tokens"] == 0.0
    assert data["total_flops"] == data["flops"]


def test_cli_table_shows_three_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["allocate", "--flops", "1e21", "--inference-tokens", "1e12", "--objective", "total"])
        == 0
    )
    out = capsys.readouterr().out
    for needle in (
        "Chinchilla",
        "same loss",
        "same total",
        "inference FLOPs",
        "total saving",
        "objective total",
        "predicted loss",
    ):
        assert needle in out, needle


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["allocate", "--flops", "1e21", "--inference-tokens=-5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "inference_tokens" in lines[0] and len(lines) == 2 and "hint:" in lines[1]
    assert (
        main(
            [
                "allocate",
                "--flops",
                "1e21",
                "--law",
                "chinchilla-approach1",
                "--inference-tokens",
                "1e12",
                "--objective",
                "total",
            ]
        )
        == 2
    )
    assert "predicts no loss" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["allocate", "--flops", "1e21", "--objective", "cheapest"])
