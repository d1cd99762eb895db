"""Budget to run: published allocations, the shape search, batch and steps, bad budgets."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from chinchax.errors import ChinchaxError, ScalingError
from models.config import ModelConfig

from scaling.allocate import BudgetConfig, RunPlan, allocate, plan_run
from scaling.batch import (
    StepPlan,
    fit_steps,
    optimal_batch_sequences,
    optimal_batch_tokens,
    optimal_learning_rate,
)
from scaling.flops import count_params, train_flops
from scaling.laws import PUBLISHED_LAWS
from scaling.shapes import (
    ASPECT_COEF,
    ASPECT_EXPONENT,
    ShapeSpace,
    preferred_aspect,
    search_shape,
    shape_candidates,
)

TINY = dict(flops=3e13, multiple_of=32, vocab_size=256, seq_len=256)


def _a3_rows(anchors_dir: Path) -> list[tuple[float, float, float]]:
    with (anchors_dir / "table_a3_approach2_3_compute_optimal.csv").open() as f:
        return [
            (float(r["params"]), float(r["approach3_flops"]), float(r["approach3_tokens"]))
            for r in csv.DictReader(f)
        ]


# ---------------------------------------------------------------- Table A3


def test_table_a3_approach3_unrounded_law(anchors_dir: Path) -> None:
    """``chinchilla-unrounded`` reproduces Table A3 (approach 3) within 5% up to 67B parameters.

    Caveat: from 175B up the law allocates 5.7-7.3% fewer parameters than the table (and 6-11%
    more tokens).  The table lies on N = 1.223 (C/6)**0.4586, a slightly steeper frontier than
    the unrounded coefficients' exponent 0.4565; the gap compounds over nine decades of C.  So
    the large rows are checked at 8%, and the error is required to be systematic (N always low).
    """
    for params, flops, tokens in _a3_rows(anchors_dir):
        result = allocate(flops, "chinchilla-unrounded")
        n_error, d_error = result.n_params / params - 1, result.tokens / tokens - 1
        bound = 0.05 if params <= 7e10 else 0.08
        assert abs(n_error) <= bound, (params, n_error)
        assert abs(d_error) <= bound + 0.03 * (params > 7e10), (params, d_error)
        assert n_error < 0, "the law sits below the table at every row"
        assert result.loss is not None and result.loss > PUBLISHED_LAWS["chinchilla-unrounded"].E


def test_table_a3_rounded_law_is_far_low(anchors_dir: Path) -> None:
    """Caveat: the rounded coefficients printed in the paper (alpha 0.34, beta 0.28) allocate
    18-30% fewer parameters than the paper's own Table A3; use ``chinchilla-unrounded`` to match."""
    for params, flops, _ in _a3_rows(anchors_dir):
        error = allocate(flops, "chinchilla").n_params / params - 1
        assert -0.35 < error < -0.15, (params, error)


def test_table_a3_implied_exponent(anchors_dir: Path) -> None:
    """The table's self-consistent rows (C = 6ND within 1%) fix the exponent N ∝ C**a it used;
    the unrounded law's beta/(alpha+beta) is within 0.003 of it, the rounded law's is not."""
    rows = [(n, c) for n, c, d in _a3_rows(anchors_dir) if abs(c / (6 * n * d) - 1) < 0.01]
    assert len(rows) >= 6
    slope = np.polyfit(np.log([c for _, c in rows]), np.log([n for n, _ in rows]), 1)[0]
    assert abs(PUBLISHED_LAWS["chinchilla-unrounded"].params_exponent - slope) < 0.003
    assert abs(PUBLISHED_LAWS["chinchilla"].params_exponent - slope) > 0.005


# ---------------------------------------------------------------- allocate()


@pytest.mark.parametrize("bad", [0.0, -1e20, float("nan"), float("inf"), True, "1e20"])
def test_allocate_rejects_bad_budgets(bad: object) -> None:
    with pytest.raises(ScalingError) as err:
        allocate(bad)  # type: ignore[arg-type]
    assert isinstance(err.value, ChinchaxError) and err.value.hint
    assert "\n" not in str(err.value)


def test_allocate_unknown_law_is_an_allocation_error() -> None:
    with pytest.raises(ScalingError, match="unknown law") as err:
        allocate(1e20, "chinchilla-typo")
    assert "chinchilla-unrounded" in err.value.hint


def test_allocate_reads_a_law_file(tmp_path: Path) -> None:
    law = {
        "law": {
            "form": "parametric",
            "E": 1.8,
            "A": 500.0,
            "B": 1000.0,
            "alpha": 0.35,
            "beta": 0.35,
            "name": "mine",
        }
    }
    path = tmp_path / "law.json"
    path.write_text(json.dumps(law))
    result = allocate(1e20, str(path))
    assert result.n_params * result.tokens * 6 == pytest.approx(1e20)
    # equal exponents: N_opt grows exactly as sqrt(C)
    assert allocate(4e20, str(path)).n_params == pytest.approx(2 * result.n_params)


# ---------------------------------------------------------------- plan_run()


def _check_plan(plan: RunPlan, budget: BudgetConfig, data_parallel: int = 1) -> None:
    m = plan.model
    assert abs(plan.flops / budget.flops - 1) <= budget.tolerance
    assert plan.flops == pytest.approx(train_flops(m, budget.seq_len, plan.tokens))
    assert plan.tokens == plan.steps * plan.global_batch * budget.seq_len
    assert plan.steps >= budget.min_steps
    assert plan.global_batch % data_parallel == 0
    assert plan.n_params == count_params(m)
    assert m.d_model % budget.multiple_of == 0 and m.d_ff % budget.multiple_of == 0
    assert m.resolved_head_dim in budget.head_dims and m.q_width == m.d_model
    assert budget.min_aspect <= m.d_model / m.n_layers <= budget.max_aspect
    assert m.n_heads % m.kv_heads == 0
    assert m.vocab_size == budget.vocab_size and m.mlp == budget.mlp
    ratio = 8 / 3 if budget.mlp == "swiglu" else 4
    assert abs(m.d_ff - ratio * m.d_model) <= budget.multiple_of / 2


@pytest.mark.parametrize("flops", [1e17, 1e19, 1e21, 1e23])
def test_plan_hits_budget_with_friendly_shape(flops: float) -> None:
    budget = BudgetConfig(flops=flops)
    plan = plan_run(budget, data_parallel=8)
    _check_plan(plan, budget, data_parallel=8)
    assert plan.n_params == pytest.approx(plan.law_n_params, rel=0.10)
    law = PUBLISHED_LAWS["chinchilla"]
    assert plan.predicted_loss == pytest.approx(law.loss(plan.n_params, plan.tokens))
    assert plan.learning_rate == pytest.approx(0.3118 * flops**-0.125)
    # the exact counter costs more than 6N per token, so fewer tokens than D_opt are affordable
    assert plan.flops_per_token > 6 * plan.n_params and plan.tokens < plan.law_tokens


def test_tiny_cpu_budget() -> None:
    budget = BudgetConfig(**TINY)
    plan = plan_run(budget)
    _check_plan(plan, budget)
    assert plan.n_params == pytest.approx(plan.law_n_params, rel=0.2)
    assert plan.model.d_model <= 256 and plan.steps >= 100


def test_plans_grow_with_budget() -> None:
    plans = [plan_run(BudgetConfig(flops=c)) for c in (1e18, 1e20, 1e22)]
    for small, large in zip(plans, plans[1:]):
        assert large.n_params > small.n_params and large.tokens > small.tokens
        assert large.global_batch > small.global_batch and large.steps > small.steps
        assert large.learning_rate < small.learning_rate
        assert large.predicted_loss < small.predicted_loss


def test_plan_is_deterministic_fast_and_serialisable() -> None:
    budget = BudgetConfig(flops=1e23, law="chinchilla-unrounded")
    start = time.perf_counter()
    first = plan_run(budget)
    assert time.perf_counter() - start < 2.0
    assert plan_run(budget) == first
    data = json.loads(json.dumps(first.to_dict()))
    assert data["model"] == first.model.to_dict()
    for key in (
        "n_params",
        "tokens",
        "steps",
        "global_batch",
        "flops",
        "predicted_loss",
        "learning_rate",
        "target_flops",
        "tokens_per_param",
        "law",
    ):
        assert key in data
    assert ModelConfig(**data["model"]) == first.model


def test_power_law_plans_have_no_loss() -> None:
    plan = plan_run(BudgetConfig(flops=1e20, law="chinchilla-approach2"))
    assert plan.predicted_loss is None
    assert plan.law == "chinchilla-approach2"
    assert plan.n_params == pytest.approx(plan.law_n_params, rel=0.10)


def test_overrides_batch_learning_rate_and_shape_policy() -> None:
    budget = BudgetConfig(
        flops=1e20,
        global_batch=96,
        learning_rate=1e-3,
        gqa_ratio=4,
        mlp="gelu",
        tie_embeddings=True,
        multiple_of=256,
    )
    plan = plan_run(budget, data_parallel=32)
    _check_plan(plan, budget, data_parallel=32)
    assert plan.global_batch == 96 and plan.learning_rate == 1e-3
    m = plan.model
    assert m.kv_heads * 4 == m.n_heads and m.tie_embeddings and m.d_ff == 4 * m.d_model


def test_base_model_keeps_its_non_shape_fields() -> None:
    base = ModelConfig(compute_dtype="bfloat16", remat="full", rope_theta=500_000.0)
    plan = plan_run(BudgetConfig(**TINY), base_model=base)
    assert (plan.model.compute_dtype, plan.model.remat, plan.model.rope_theta) == (
        "bfloat16",
        "full",
        500_000.0,
    )


def test_budget_config_is_an_omegaconf_structured_config() -> None:
    schema = OmegaConf.structured(BudgetConfig)
    merged = OmegaConf.merge(schema, OmegaConf.create({"flops": 3e13, "head_dims": [32]}))
    budget = OmegaConf.to_object(merged)
    assert isinstance(budget, BudgetConfig)
    assert budget.flops == 3e13 and list(budget.head_dims) == [32]


# ---------------------------------------------------------------- bad budgets


def test_budget_too_small_for_smallest_model() -> None:
    with pytest.raises(ScalingError, match="too small for the smallest allowed model") as err:
        plan_run(BudgetConfig(flops=1e14))  # 32k vocabulary alone is 4M parameters
    assert "vocab_size" in err.value.hint


def test_budget_too_small_for_enough_steps() -> None:
    with pytest.raises(ScalingError, match="min_steps"):
        plan_run(BudgetConfig(**TINY, global_batch=4096))


def test_budget_beyond_largest_shape() -> None:
    with pytest.raises(ScalingError, match="largest allowed shape"):
        plan_run(BudgetConfig(flops=1e24, max_layers=8))


def test_unknown_law_in_plan() -> None:
    with pytest.raises(ScalingError, match="unknown law"):
        plan_run(BudgetConfig(flops=1e20, law="kaplan"))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(flops=-1.0), "positive"),
        (dict(flops=0.0), "positive"),
        (dict(multiple_of=0), "multiple_of"),
        (dict(min_aspect=300.0), "aspect"),
        (dict(mlp="relu"), "mlp"),
        (dict(head_dims=[]), "head_dims"),
        (dict(seq_len=0), "seq_len"),
        (dict(tolerance=0.0), "tolerance"),
        (dict(inference_tokens=-1.0), "inference_tokens"),
        (dict(global_batch=0), "global_batch"),
        (dict(gqa_ratio=0), "gqa_ratio"),
        (dict(min_layers=0), "min_layers"),
        (dict(min_layers=9, max_layers=8), "min_layers=9 exceeds"),
    ],
)
def test_bad_budget_fields(changes: dict, message: str) -> None:
    with pytest.raises(ScalingError, match=message) as err:
        BudgetConfig(**changes)
    assert err.value.hint


def test_global_batch_must_split_over_data_parallel() -> None:
    with pytest.raises(ScalingError, match="multiple of the data-parallel size"):
        plan_run(BudgetConfig(flops=1e20, global_batch=100), data_parallel=8)


# ---------------------------------------------------------------- shapes


def test_preferred_aspect_follows_table_a9(anchors_dir: Path) -> None:
    """The preferred d_model/n_layers is a log-log fit to Chinchilla's Table A9 shapes."""
    with (anchors_dir / "table_a9_model_shapes.csv").open() as f:
        rows = list(csv.DictReader(f))
    n = np.array([float(r["params_millions"]) * 1e6 for r in rows])
    aspect = np.array([int(r["d_model"]) / int(r["n_layers"]) for r in rows])
    slope, intercept = np.polyfit(np.log(n), np.log(aspect), 1)
    assert slope == pytest.approx(ASPECT_EXPONENT, abs=0.005)
    assert math.exp(intercept) == pytest.approx(ASPECT_COEF, rel=0.05)
    residual = np.log(aspect / np.array([preferred_aspect(x) for x in n]))
    assert np.abs(residual).max() < math.log(1.6)


def test_shape_candidates_are_ranked_and_near_target() -> None:
    space = ShapeSpace(vocab_size=32000, multiple_of=128)
    target = 1.3e9
    ranked = shape_candidates(target, space, limit=5)
    assert [c.cost for c in ranked] == sorted(c.cost for c in ranked)
    assert abs(math.log(ranked[0].n_params / target)) < 0.02
    best = search_shape(target, space)
    assert (best.d_model, best.n_layers) == (ranked[0].d_model, ranked[0].n_layers)
    assert count_params(best) == ranked[0].n_params


def test_target_aspect_steers_depth() -> None:
    shallow = search_shape(5e8, ShapeSpace(target_aspect=200.0))
    deep = search_shape(5e8, ShapeSpace(target_aspect=40.0))
    assert shallow.d_model / shallow.n_layers > 2 * deep.d_model / deep.n_layers


def test_equal_layer_bounds_fix_the_depth_for_every_budget() -> None:
    """A width-only family: every plan keeps the one depth, and the budget is still spent."""
    template = dict(law="chinchilla-unrounded", seq_len=128, vocab_size=257, multiple_of=8,
                    head_dims=[8, 16], min_aspect=4.0, max_aspect=64.0, tie_embeddings=True,
                    min_layers=6, max_layers=6)
    plans = [plan_run(BudgetConfig(flops=flops, **template)) for flops in (1e11, 1e12, 1e13)]
    assert [p.model.n_layers for p in plans] == [6, 6, 6]
    assert plans[0].model.d_model < plans[1].model.d_model < plans[2].model.d_model
    assert all(abs(p.flops / f - 1.0) <= 0.01 for p, f in zip(plans, (1e11, 1e12, 1e13)))
    free = plan_run(BudgetConfig(flops=1e13, **{**template, "min_layers": 1, "max_layers": 128}))
    assert free.model.n_layers != 6  # the bounds, not the budget, chose the depth


def test_head_dim_choice() -> None:
    space = ShapeSpace(head_dims=(64, 128))
    assert space.head_dim(2048) == 128  # 16 heads of 128
    assert space.head_dim(768) == 64  # 128 would leave only 6 heads
    assert space.head_dim(128) == 64  # small: narrowest head
    assert ShapeSpace(head_dims=(128,), multiple_of=64).head_dim(192) is None
    assert ShapeSpace(gqa_ratio=4).kv_heads(12) == 3
    assert ShapeSpace(gqa_ratio=8).kv_heads(12) == 1  # largest divisor of 12 up to 12 // 8


# ---------------------------------------------------------------- batch and steps


def test_deepseek_batch_and_learning_rate() -> None:
    assert optimal_batch_tokens(1e20) == pytest.approx(0.2920 * 1e20**0.3271)
    assert optimal_learning_rate(1e20) == pytest.approx(0.3118 * 1e20**-0.125)
    sequences = optimal_batch_sequences(1e20, 2048, multiple=16)
    assert sequences % 16 == 0
    assert sequences * 2048 == pytest.approx(optimal_batch_tokens(1e20), rel=16 * 2048 / 2e5)
    assert optimal_batch_sequences(1e10, 4096, multiple=8) == 8  # at least one per replica
    with pytest.raises(ScalingError):
        optimal_batch_tokens(-1.0)


def test_fit_steps_adjusts_batch_for_short_runs() -> None:
    target = 12.5 * 32 * 256  # 12.5 steps of 32 sequences: rounding steps alone misses by 4%
    naive = StepPlan(32, round(12.5), 256)
    assert abs(naive.relative_error(target)) > 0.01
    plan = fit_steps(target, 256, 32, tolerance=0.01, min_steps=10)
    assert abs(plan.relative_error(target)) <= 0.01 and plan.steps >= 10
    fixed = fit_steps(target, 256, 32, tolerance=0.01, min_steps=10, fixed_batch=True)
    assert fixed.global_batch == 32


def test_run_plan_is_frozen() -> None:
    plan = plan_run(BudgetConfig(**TINY))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps = 1  # type: ignore[misc]
