"""Scaling ladders: plan an isoFLOP sweep, fit it, predict the big run before it starts, check.

A ladder is a handful of small compute budgets (e.g. four, spaced ×3), several model sizes per
budget around the current law's optimum, and one *target* budget at least ten times the
largest rung.  This module holds the parts that need no devices and no processes:

* :class:`LadderConfig`, the ``ladder:`` section of a ladder YAML;
* :func:`design_ladder`: every rung's exact shape, batch, steps and FLOPs.  Each rung is an
  ordinary run planned by :func:`scaling.allocate.plan_run_at_size`, so it spends its budget
  within the budget's tolerance (1%) under the same exact FLOP counter the trainer reports.
  Sizes are ``center_factor × N_opt × size_spread ** u`` for ``u`` evenly spaced in
  ``[-1, 1]``, with ``N_opt`` the design law's optimum; neighbouring sizes that round to the
  same hardware-friendly shape are run once;
* :func:`analyse_ladder`: approaches 2 and 3 (:mod:`scaling.fit`) on the finished rungs, using
  every eval after the first ``drop_early`` of each run (the Hitchhiker's-guide practice of
  fitting intermediate checkpoints), bootstrapped over runs; the law files; and the target
  re-planned with the fitted law;
* :func:`predict_target`: the target's ``N_opt``, ``D_opt``, shape and final loss with an
  interval, stamped with the time it was made (the launcher writes it before the target's
  first step), with two diagnostics the bootstrap cannot give: how much the loss depends on
  which evals are fitted (:func:`fit_choice_sensitivity`) and whether approaches 2 and 3
  agree on the optimum (:func:`allocation_agreement`);
* :func:`verify_target`: predicted against actual, and the fitted optimum against the
  published Chinchilla and Epoch allocations at the target's scale.

Running the rungs and the target is the launcher's business (``launch/cmd_ladder.py``), as
for any other run: the run directory is the contract between them and this module.

Why intermediate evals with a cosine schedule are still usable: a mid-run checkpoint has not
annealed and sits above the loss of a run trained *to* that many tokens, which biases a
parametric fit towards slower data scaling.  The Hitchhiker's guide (Choshen et al. 2024)
found the extra points worth it once the earliest ~10% of each run is dropped; the final
point of every rung is annealed, and approach 2 uses only final points.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from chinchax.errors import ChinchaxError, ScalingError
from models.config import ModelConfig

from scaling.allocate import (BudgetConfig, RunPlan, allocate, plan_run, plan_run_at_size, resolve_law)
from scaling.fit import FitConfig, FitReport, coarse_grid, fit, write_law_file
from scaling.laws import Law, ParametricLaw, get_law
from scaling.observations import Observations, load_observations, read_run_dir
from scaling.prediction import RunPrediction, predict_run

__all__ = [
    "LadderConfig", "ScalingError", "LadderPlan", "LadderAnalysis", "Rung", "WallTimeModel",
    "design_ladder", "analyse_ladder", "predict_target", "verify_target", "published_comparison",
    "estimate_seconds", "eval_tokens", "rung_status", "load_prediction",
]

GRIDS = ("full", "coarse")
# A parabola (approach 2) needs three sizes per budget; approach 3 needs three runs at least.
MIN_SIZES_PER_BUDGET = 3
PUBLISHED_ALLOCATIONS = ("chinchilla", "chinchilla-unrounded", "epoch-2024", "chinchilla-approach2")
# Files a ladder directory holds (the launcher and the report use the same names).
PLAN_FILE = "plan.json"
LAW_FILE = "law.json"
PREDICTION_FILE = "prediction.json"
VERIFICATION_FILE = "verification.json"
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
# The Hitchhiker's guide scores a prediction over the last 30% of the target run.
ARE_TAIL = 0.3


# ====================================================================================== config
@dataclass(frozen=True)
class LadderConfig:
    """The ``ladder:`` section: the sweep, the target, and how the rungs are fitted.

    ``budgets`` are the rungs' training FLOPs (exact counter); ``sizes_per_budget`` model sizes
    are spread log-evenly over ``M / size_spread … M × size_spread`` around
    ``M = center_factor × N_opt``, the design ``law``'s optimum at each budget scaled by
    ``center_factor`` (below 1 where a pilot showed the data want smaller models than the law
    says, as byte-level toy models do); every size is trained once per seed in ``seeds``.
    ``target_flops`` (default: ``min_target_ratio`` × the largest budget) must be at least
    ``min_target_ratio`` times the largest rung: a prediction is worth checking only where it
    extrapolates.

    Fit settings: ``approaches`` (3 is required: it alone predicts a loss), ``bootstrap``
    resamples over runs (0: no bootstrap; the prediction then uses a fixed relative band),
    ``grid`` (``full``: Chinchilla's 4,500 starts, ``coarse``: 162), ``drop_early`` (fraction of
    each run's tokens whose evals are left out; 1.0 keeps each rung's final eval only, as
    Chinchilla's approach 3 did), ``huber_delta`` and ``level`` (the confidence
    of every interval, coefficients and predicted loss alike).  ``target_sizing`` names the
    approach whose ``N_opt`` sizes the target (2 or 3; the loss is always approach 3's).
    ``sensitivity`` lists other ``drop_early`` values (1.0: each rung's final eval only) under
    which approach 3 is refitted, without bootstrap, to show how much the predicted target
    loss depends on that choice, which the bootstrap over rungs does not capture.

    Evaluation: ``evals_per_run`` spaces each run's evals so every run contributes about as
    many points to the fit whatever its length (``None``: the experiment's ``train.eval_every``
    for all); ``eval_sequences`` gives every run about the same held-out set whatever its
    batch (``eval_batches = round(eval_sequences / global_batch)``; the sets are prefixes of
    one seeded permutation, so they differ by less than one batch; ``None``: the experiment's
    ``train.eval_batches``).

    Where things go: ``rungs_dir`` (default ``LADDER_DIR/rungs``; may be a ``gs://`` path) and
    ``target_dir`` (default ``LADDER_DIR/target``).  Wall-time estimates use
    ``flops_per_second`` when set, else the rate measured on finished rungs, else a
    conservative CPU guess, plus ``run_overhead_s`` per run (start-up, compilation).
    """

    budgets: List[float] = field(default_factory=lambda: [1e11, 3e11, 1e12, 3e12])
    sizes_per_budget: int = 5
    size_spread: float = 4.0
    center_factor: float = 1.0
    target_flops: Optional[float] = None
    min_target_ratio: float = 10.0
    seeds: List[int] = field(default_factory=lambda: [0])
    law: str = "chinchilla-unrounded"
    approaches: List[int] = field(default_factory=lambda: [2, 3])
    target_sizing: int = 3
    bootstrap: int = 200
    grid: str = "full"
    drop_early: float = 0.1
    huber_delta: float = 1e-3
    level: float = 0.9
    fit_seed: int = 0
    sensitivity: List[float] = field(default_factory=lambda: [0.0, 0.3, 0.6, 1.0])
    evals_per_run: Optional[int] = 16
    eval_sequences: Optional[int] = None
    rungs_dir: Optional[str] = None
    target_dir: Optional[str] = None
    train_target: bool = True
    flops_per_second: Optional[float] = None
    run_overhead_s: float = 10.0

    def __post_init__(self) -> None:
        budgets = list(self.budgets)
        if len(budgets) < 2 or not all(_positive_number(b) for b in budgets):
            raise ScalingError(f"ladder.budgets must list two or more positive FLOP counts, got {budgets!r}",
                              hint="e.g. budgets: [1.0e11, 3.0e11, 1.0e12, 3.0e12] (four spaced x3)")
        if len(set(float(b) for b in budgets)) != len(budgets):
            raise ScalingError(f"ladder.budgets repeats a budget: {budgets!r}",
                              hint="list each budget once; use ladder.seeds for repeats")
        if not isinstance(self.sizes_per_budget, int) or not 3 <= self.sizes_per_budget <= 16:
            raise ScalingError(f"ladder.sizes_per_budget must be an integer in 3..16, got "
                              f"{self.sizes_per_budget!r}",
                              hint="use 4-6: an isoFLOP parabola needs at least 3 sizes")
        if not _positive_number(self.size_spread) or self.size_spread <= 1.0:
            raise ScalingError(f"ladder.size_spread must be a factor above 1, got {self.size_spread!r}",
                              hint="use e.g. 4.0 for sizes from N_opt/4 to 4 N_opt")
        if not _positive_number(self.center_factor):
            raise ScalingError(f"ladder.center_factor must be a positive factor, got {self.center_factor!r}",
                              hint="1.0 centres the sizes on the design law's optimum")
        if not _positive_number(self.min_target_ratio) or self.min_target_ratio < 1.0:
            raise ScalingError(f"ladder.min_target_ratio must be at least 1, got {self.min_target_ratio!r}",
                              hint="keep the default 10: a target one decade beyond the rungs")
        if self.target_flops is not None:
            if not _positive_number(self.target_flops):
                raise ScalingError(f"ladder.target_flops must be a positive FLOP count, got "
                                  f"{self.target_flops!r}", hint="leave it unset for 10x the largest budget")
            largest = max(float(b) for b in budgets)
            if self.target_flops < self.min_target_ratio * largest * (1.0 - 1e-9):
                raise ScalingError(
                    f"ladder.target_flops={self.target_flops:.3g} is less than "
                    f"{self.min_target_ratio:g}x the largest rung ({largest:.3g} FLOPs)",
                    hint=f"raise target_flops to at least {self.min_target_ratio * largest:.3g}, "
                    "or lower the largest budget")
        seeds = list(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise ScalingError(f"ladder.seeds must list distinct non-negative integers, got {seeds!r}",
                              hint="e.g. seeds: [0] (or [0, 1] to see seed noise)")
        approaches = list(self.approaches)
        if 3 not in approaches or any(a not in (1, 2, 3) for a in approaches) \
                or len(set(approaches)) != len(approaches):
            raise ScalingError(f"ladder.approaches must be distinct values of 1, 2, 3 including 3, "
                              f"got {approaches!r}",
                              hint="use [2, 3]: approach 3 predicts the loss, approach 2 checks the allocation")
        if self.target_sizing not in (2, 3) or self.target_sizing not in approaches:
            raise ScalingError(f"ladder.target_sizing={self.target_sizing!r} must be 2 or 3 and "
                              f"listed in ladder.approaches {approaches}",
                              hint="use 3 (the law that also predicts the loss)")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ScalingError(f"ladder.bootstrap must be a non-negative integer, got {self.bootstrap!r}",
                              hint="use e.g. 200 resamples over runs (0: no intervals)")
        if self.grid not in GRIDS:
            raise ScalingError(f"ladder.grid={self.grid!r} is not one of {', '.join(GRIDS)}",
                              hint="'full' is Chinchilla's 4,500-start grid, 'coarse' 162 starts")
        if not (isinstance(self.drop_early, (int, float)) and 0.0 <= self.drop_early <= 1.0):
            raise ScalingError(f"ladder.drop_early must lie in [0, 1], got {self.drop_early!r}",
                              hint="use 0.1 to drop each rung's first 10% of evals")
        if any(not (isinstance(f, (int, float)) and 0.0 <= f <= 1.0) for f in self.sensitivity):
            raise ScalingError(f"ladder.sensitivity must list fractions in [0, 1], got {list(self.sensitivity)!r}",
                              hint="e.g. [0.0, 0.3, 0.6, 1.0] (1.0: final evals only); [] to skip")
        if not _positive_number(self.huber_delta):
            raise ScalingError(f"ladder.huber_delta must be positive, got {self.huber_delta!r}",
                              hint="use Chinchilla's 1e-3")
        if not (isinstance(self.level, (int, float)) and 0.0 < self.level < 1.0):
            raise ScalingError(f"ladder.level must lie in (0, 1), got {self.level!r}",
                              hint="use 0.9 for 90% intervals")
        for name in ("evals_per_run", "eval_sequences"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ScalingError(f"ladder.{name} must be a positive integer or null, got {value!r}",
                                  hint="e.g. evals_per_run: 16, eval_sequences: 64")
        if self.flops_per_second is not None and not _positive_number(self.flops_per_second):
            raise ScalingError(f"ladder.flops_per_second must be positive, got {self.flops_per_second!r}",
                              hint="leave it unset to measure it on the finished rungs")
        if not (isinstance(self.run_overhead_s, (int, float)) and self.run_overhead_s >= 0):
            raise ScalingError(f"ladder.run_overhead_s must be >= 0, got {self.run_overhead_s!r}",
                              hint="seconds of start-up and compilation per run, e.g. 10")

    def eval_cadence(self, steps: int, global_batch: int, eval_every: int,
                     eval_batches: int) -> tuple[int, int]:
        """``(eval_every, eval_batches)`` of a run of ``steps`` steps of ``global_batch``
        sequences; the defaults are the experiment's."""
        if self.evals_per_run is not None:
            eval_every = max(1, round(steps / self.evals_per_run))
        if self.eval_sequences is not None:
            eval_batches = max(1, round(self.eval_sequences / global_batch))
        return eval_every, eval_batches

    @property
    def resolved_target_flops(self) -> float:
        """``target_flops``, or ``min_target_ratio`` × the largest budget when unset."""
        if self.target_flops is not None:
            return float(self.target_flops)
        return self.min_target_ratio * max(float(b) for b in self.budgets)

    def size_factors(self) -> np.ndarray:
        """Multipliers of the centre: ``size_spread ** u`` for ``u`` evenly spaced in [-1, 1]."""
        return self.size_spread ** np.linspace(-1.0, 1.0, self.sizes_per_budget)

    def fit_config(self, approach: int, target_flops: float) -> FitConfig:
        """The :class:`scaling.fit.FitConfig` of one approach under these settings."""
        grid = coarse_grid() if self.grid == "coarse" else FitConfig().grid
        return FitConfig(approach=approach, huber_delta=self.huber_delta, grid=grid,
                         bootstrap=self.bootstrap, confidence=self.level, seed=self.fit_seed,
                         target_flops=target_flops)


def _positive_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value > 0)


# ====================================================================================== design
@dataclass(frozen=True)
class Rung:
    """One run of the sweep: a budget, a planned shape at that budget, and a seed."""

    name: str
    budget: float
    budget_index: int
    seed: int
    plan: RunPlan

    @property
    def model(self) -> ModelConfig:
        return self.plan.model

    def to_dict(self) -> dict[str, Any]:
        m = self.plan.model
        return {
            "name": self.name, "budget": self.budget, "budget_index": self.budget_index,
            "seed": self.seed, "n_params": self.plan.n_params,
            "requested_n_params": self.plan.requested_n_params, "tokens": self.plan.tokens,
            "tokens_per_param": self.plan.tokens_per_param, "steps": self.plan.steps,
            "global_batch": self.plan.global_batch, "seq_len": self.plan.seq_len,
            "flops": self.plan.flops, "flops_error": self.plan.flops_error,
            "learning_rate": self.plan.learning_rate, "shape": shape_label(m),
            "plan": self.plan.to_dict(),
        }


@dataclass(frozen=True)
class LadderPlan:
    """Every rung, exactly; and the target as the *design* law would size it.

    The target's final shape is decided after the fit (:func:`analyse_ladder`); the
    provisional one here only gives the dry run a cost estimate.  ``notes`` say which
    candidate sizes were merged (same shape) or could not be built.
    """

    config: LadderConfig
    rungs: tuple[Rung, ...]
    target_flops: float
    provisional_target: RunPlan
    data_parallel: int
    notes: tuple[str, ...] = ()

    @property
    def budgets(self) -> list[float]:
        return sorted({r.budget for r in self.rungs})

    @property
    def rung_flops(self) -> float:
        return float(sum(r.plan.flops for r in self.rungs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "target_flops": self.target_flops,
            "data_parallel": self.data_parallel,
            "rung_flops": self.rung_flops,
            "rungs": [r.to_dict() for r in self.rungs],
            "provisional_target": {"flops": self.provisional_target.flops,
                                   "n_params": self.provisional_target.n_params,
                                   "tokens": self.provisional_target.tokens,
                                   "steps": self.provisional_target.steps,
                                   "shape": shape_label(self.provisional_target.model),
                                   "law": self.provisional_target.law},
            "notes": list(self.notes),
        }


def shape_label(model: ModelConfig) -> str:
    """``d128·L4·h4·ff352``: width, depth, heads (``/kv`` when grouped) and MLP width."""
    heads = f"h{model.n_heads}" + (f"/{model.kv_heads}" if model.kv_heads != model.n_heads else "")
    return f"d{model.d_model}·L{model.n_layers}·{heads}·ff{model.d_ff}"


def compact_number(value: float) -> str:
    """Short, path-safe numbers for rung names: ``3e11``, ``1.2e13``, ``45k``, ``1.1M``."""
    if value >= 1e9:
        mantissa, exponent = f"{value:.2g}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if value >= 1e6:
        return f"{value / 1e6:.2g}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def rung_name(budget: float, model: ModelConfig, n_params: int, seed: int) -> str:
    """A readable, unique directory name: budget, size, shape and seed."""
    return (f"C{compact_number(budget)}-N{compact_number(n_params)}-d{model.d_model}L{model.n_layers}"
            f"-s{seed}")


def design_ladder(cfg: LadderConfig, budget_template: BudgetConfig, data_parallel: int = 1,
                  base_model: Optional[ModelConfig] = None) -> LadderPlan:
    """Every rung's exact shape, batch, steps and FLOPs, and a provisional target.

    ``budget_template`` carries the shape constraints (``multiple_of``, ``head_dims``, aspect
    bounds, vocabulary, sequence length, an optional fixed ``global_batch``); its ``flops`` and
    ``law`` are replaced per rung.  Raises :class:`ScalingError` when a budget is left with fewer
    than three distinct shapes.
    """
    law = resolve_law(cfg.law)
    rungs: list[Rung] = []
    notes: list[str] = []
    for index, budget in enumerate(sorted(float(b) for b in cfg.budgets)):
        template = replace(budget_template, flops=budget, law=cfg.law)
        centre = cfg.center_factor * allocate(budget, law).n_params
        chosen: dict[ModelConfig, RunPlan] = {}
        for factor in cfg.size_factors():
            wanted = centre * float(factor)
            try:
                plan = plan_run_at_size(template, wanted, data_parallel=data_parallel,
                                        base_model=base_model)
            except ScalingError as exc:
                notes.append(f"C={budget:.3g}: no rung near N={wanted:.3g} ({exc})")
                continue
            if plan.model in chosen:
                kept = chosen[plan.model]
                notes.append(f"C={budget:.3g}: N≈{wanted:.3g} rounds to the same shape as "
                             f"N≈{kept.requested_n_params:.3g} ({shape_label(plan.model)}, "
                             f"{plan.n_params:,} parameters); trained once")
                continue
            chosen[plan.model] = plan
        if len(chosen) < MIN_SIZES_PER_BUDGET:
            why = [n.split(": ", 1)[1] for n in notes if n.startswith(f"C={budget:.3g}: ")]
            raise ScalingError(
                f"budget {budget:.3g} FLOPs yields only {len(chosen)} distinct model shape(s) "
                f"under the shape constraints; an isoFLOP profile needs {MIN_SIZES_PER_BUDGET}"
                + (f" ({'; '.join(why)})" if why else ""),
                hint="raise the budget, widen ladder.size_spread, or allow finer shapes "
                "(lower budget.multiple_of or budget.head_dims, budget.min_aspect)")
        for plan in sorted(chosen.values(), key=lambda p: p.n_params):
            for seed in cfg.seeds:
                rungs.append(Rung(name=rung_name(budget, plan.model, plan.n_params, seed),
                                  budget=budget, budget_index=index, seed=int(seed), plan=plan))
    target_flops = cfg.resolved_target_flops
    try:
        provisional = plan_run(replace(budget_template, flops=target_flops, law=cfg.law),
                               data_parallel=data_parallel, base_model=base_model)
    except ScalingError as exc:
        raise ScalingError(f"the target budget {target_flops:.3g} FLOPs cannot be planned: {exc}",
                          hint=exc.hint) from None
    return LadderPlan(config=cfg, rungs=tuple(rungs), target_flops=target_flops,
                      provisional_target=provisional, data_parallel=data_parallel,
                      notes=tuple(notes))


# ================================================================================== wall time
@dataclass(frozen=True)
class WallTimeModel:
    """Seconds a run takes: its FLOPs (training and evals) at ``flops_per_second``, plus a
    fixed ``overhead_s`` (process start, data, compilation).  ``source`` says where the rate
    came from (``configured``, ``measured on N rungs``, ``guess``)."""

    flops_per_second: float
    overhead_s: float
    source: str


# A 2-core laptop-class CPU trains the tiny models of a CPU ladder at 10-40 GFLOP/s.
CPU_GUESS_FLOPS_PER_SECOND = 1.5e10


def eval_tokens(steps: int, eval_every: int, tokens_per_step: int) -> list[int]:
    """Token counts at which a run of ``steps`` evaluates (every ``eval_every`` and at the end)."""
    return [s * tokens_per_step for s in range(1, steps + 1) if s % eval_every == 0 or s == steps]


def run_cost_flops(plan: RunPlan, eval_every: int, eval_batches: int) -> float:
    """Training FLOPs plus the forward FLOPs of every eval (batches of ``global_batch``)."""
    evals = len(eval_tokens(plan.steps, eval_every, 1))
    forward_per_token = plan.flops_per_token / 3.0
    return plan.flops + evals * eval_batches * plan.global_batch * plan.seq_len * forward_per_token


def estimate_seconds(plan: RunPlan, model: WallTimeModel, *, eval_every: int, eval_batches: int) -> float:
    return run_cost_flops(plan, eval_every, eval_batches) / model.flops_per_second + model.overhead_s


def measured_wall_time_model(summaries: Sequence[Mapping[str, Any]], overhead_s: float) -> Optional[WallTimeModel]:
    """Rate from finished runs: their FLOPs over their wall time less the per-run overhead."""
    done = [s for s in summaries if s.get("status") == "complete" and s.get("wall_time_s")]
    if not done:
        return None
    flops = sum(float(s["flops"]) for s in done)
    seconds = sum(max(float(s["wall_time_s"]) - overhead_s, 1e-3) for s in done)
    return WallTimeModel(flops / seconds, overhead_s, f"measured on {len(done)} finished run(s)")


# ================================================================================== run dirs
def rung_status(summary: Optional[Mapping[str, Any]], has_checkpoint: bool) -> str:
    """``complete`` (summary says so), ``partial`` (something to resume) or ``new``."""
    if summary is not None and summary.get("status") == "complete":
        return "complete"
    if summary is not None or has_checkpoint:
        return "partial"
    return "new"


# ================================================================================== analysis
@dataclass(frozen=True)
class LadderAnalysis:
    """The fits of a ladder's rungs and the target they size.

    ``reports`` maps approach → :class:`scaling.fit.FitReport`; ``law_files`` approach → the
    JSON written for it (``law.json`` is approach 3's, with its bootstrap replicates);
    ``target`` is the target run planned under the ``target_sizing`` approach's law
    (``sizing_approach``: approach 3's when that one could not be fitted or its law cannot size
    the target, ``sizing_note`` then says why);
    ``skipped`` maps approaches that could not be fitted to the reason; ``sensitivity`` holds
    approach 3 refitted under other ``drop_early`` values (:func:`fit_choice_sensitivity`).
    """

    observations: Observations
    reports: Dict[int, FitReport]
    law_files: Dict[int, str]
    target: RunPlan
    target_flops: float
    sizing_approach: int
    rung_names: tuple[str, ...]
    skipped: Dict[int, str] = field(default_factory=dict)
    sizing_note: str = ""
    sensitivity: tuple[dict[str, Any], ...] = ()

    @property
    def law(self) -> ParametricLaw:
        law = self.reports[3].law
        assert isinstance(law, ParametricLaw)
        return law


def law_file_name(approach: int) -> str:
    return LAW_FILE if approach == 3 else f"law_approach{approach}.json"


def rung_observations(run_dirs: Sequence[str | Path], drop_early: float) -> Observations:
    """The rungs' evals past the first ``drop_early`` of each run's tokens; 1.0: final evals only."""
    if drop_early >= 1.0:
        return load_observations([str(p) for p in run_dirs], drop_early=0.0).final_points()
    return load_observations([str(p) for p in run_dirs], drop_early=float(drop_early))


def fit_rungs(run_dirs: Sequence[str | Path], cfg: LadderConfig, target_flops: float,
              name: str = "ladder") -> tuple[Observations, Dict[int, FitReport], Dict[int, str]]:
    """Read the rungs' evals (early ones dropped) and fit every configured approach.

    Approach 3 must succeed.  Approaches 1 and 2 are cross-checks of the allocation: one that
    cannot be fitted (e.g. an isoFLOP profile without a minimum) is returned in the third
    value, approach → reason, instead of stopping the ladder.
    """
    if len(run_dirs) < MIN_SIZES_PER_BUDGET:
        raise ScalingError(f"only {len(run_dirs)} finished rung(s) to fit",
                          hint="run the ladder's rungs first (chinchax ladder CONFIG)")
    obs = rung_observations(run_dirs, cfg.drop_early)
    reports: Dict[int, FitReport] = {}
    skipped: Dict[int, str] = {}
    for approach in sorted(cfg.approaches):
        try:
            reports[approach] = fit(obs, cfg.fit_config(approach, target_flops),
                                    name=f"{name}-approach{approach}")
        except (ScalingError, ArithmeticError) as exc:  # e.g. a resample's flat isoFLOP parabola
            if approach == 3:  # the loss prediction needs it: nothing to go on without
                raise
            hint = getattr(exc, "hint", None)
            skipped[approach] = f"{type(exc).__name__}: {exc}" + (f" ({hint})" if hint else "")
    return obs, reports, skipped


# Approaches 2 and 3 disagreeing on N_opt by more than this factor is worth a warning.
DISAGREEMENT_FACTOR = 2.0


def allocation_agreement(reports: Mapping[int, FitReport]) -> Optional[dict[str, Any]]:
    """Approach 2's and approach 3's ``N_opt`` at the target, their ratio, and whether they
    disagree by more than :data:`DISAGREEMENT_FACTOR` (``None`` without both fits).

    Approach 2 reads the optimum off each budget's annealed final losses; approach 3 infers it
    from the whole surface, intermediate evals included, so a large gap usually means the
    parametric form or the un-annealed evals pull the surface away from the measured minima.
    """
    if 2 not in reports or 3 not in reports:
        return None
    n2, n3 = float(reports[2].estimates["n_opt"]), float(reports[3].estimates["n_opt"])
    ratio = n2 / n3
    return {"n_opt_approach2": n2, "n_opt_approach3": n3, "ratio": ratio,
            "disagree": not 1.0 / DISAGREEMENT_FACTOR <= ratio <= DISAGREEMENT_FACTOR}


def extrapolation(analysis: LadderAnalysis) -> dict[str, float]:
    """How far the target lies beyond the rungs: its ``N`` and ``D`` over the largest of the
    rungs' (final points), and its compute over the largest rung's (``6 N D``)."""
    final = analysis.observations.final_points()
    target = analysis.target
    return {"n_ratio": target.n_params / float(final.n_params.max()),
            "tokens_ratio": target.tokens / float(final.tokens.max()),
            "compute_ratio": 6.0 * target.n_params * target.tokens / float(final.compute.max())}


def fit_choice_sensitivity(run_dirs: Sequence[str | Path], cfg: LadderConfig, target: RunPlan,
                           target_flops: float) -> tuple[dict[str, Any], ...]:
    """Approach 3 refitted for each ``drop_early`` in ``cfg.sensitivity`` (1.0: final evals
    only), without bootstrap, and each fit's loss at the target's planned ``(N, D)``.

    The bootstrap resamples rungs; it says nothing about choices such as which evals enter
    the fit.  Mid-run evals of a cosine schedule sit above the loss of a run annealed at that
    point, so the choice moves a prediction systematically, and this table shows how far.
    """
    rows = []
    for fraction in cfg.sensitivity:
        try:
            obs = rung_observations(run_dirs, fraction)
            config = replace(cfg.fit_config(3, target_flops), bootstrap=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = fit(obs, config, name=f"drop-early-{fraction:g}")
        except (ScalingError, ArithmeticError) as exc:
            rows.append({"drop_early": float(fraction), "error": str(exc)})
            continue
        law = report.law
        rows.append({"drop_early": float(fraction), "points": len(obs),
                     **{k: float(getattr(law, k)) for k in ("E", "A", "B", "alpha", "beta")},
                     "n_opt": float(report.estimates["n_opt"]),
                     "target_loss": float(law.loss(target.n_params, target.tokens))})
    return tuple(rows)


def analyse_ladder(ladder_dir: str | Path, plan: LadderPlan, budget_template: BudgetConfig, *,
                   run_dirs: Sequence[str | Path], data_parallel: int = 1,
                   base_model: Optional[ModelConfig] = None, name: str = "ladder",
                   settings: Optional[Mapping[str, Any]] = None) -> LadderAnalysis:
    """Fit the finished rungs, write the law files into ``ladder_dir``, and size the target.

    ``run_dirs`` are the rungs' (local) run directories; the run id of each is its directory
    name, which the bootstrap resamples.  ``settings`` is recorded in the law files.
    """
    out = Path(ladder_dir)
    cfg = plan.config
    obs, reports, skipped = fit_rungs(run_dirs, cfg, plan.target_flops, name=name)
    sizing = cfg.target_sizing if cfg.target_sizing in reports else 3  # approach 3 always fits
    law_files: Dict[int, str] = {}
    context = {"ladder": name, "rungs": [Path(p).name for p in run_dirs],
               "drop_early": cfg.drop_early, **dict(settings or {})}
    for approach, report in reports.items():
        law_files[approach] = str(write_law_file(report, out / law_file_name(approach), context))
    # Approach 3 stands behind the configured sizing law: an isoFLOP power law extrapolated
    # from minima at the edge of the sweep can ask for an absurd size, while the parametric
    # fit still gives a usable optimum.
    failures: list[str] = []
    for approach in dict.fromkeys((sizing, 3)):
        try:
            target = plan_run(replace(budget_template, flops=plan.target_flops,
                                      law=law_files[approach]),
                              data_parallel=data_parallel, base_model=base_model)
            break
        except ChinchaxError as exc:
            failures.append(f"approach {approach}'s law cannot size the target ({exc})")
            hint = exc.hint or "inspect the law files and the isoFLOP plot"
    else:
        raise ScalingError(f"at {plan.target_flops:.3g} FLOPs: " + "; ".join(failures),
                          hint=hint) from None
    sizing_note = f"{failures[0]}; approach 3 sized it instead" if failures else ""
    sizing = approach
    return LadderAnalysis(observations=obs, reports=reports, law_files=law_files, target=target,
                          target_flops=plan.target_flops, sizing_approach=sizing,
                          sizing_note=sizing_note,
                          rung_names=tuple(Path(p).name for p in run_dirs), skipped=skipped,
                          sensitivity=fit_choice_sensitivity(run_dirs, cfg, target, plan.target_flops))


# ================================================================================ prediction
def _interval_dict(report: FitReport, key: str) -> Optional[dict[str, float]]:
    if key in report.intervals:
        return report.intervals[key].to_dict()
    if key in report.estimates:
        return {"estimate": float(report.estimates[key])}
    return None


def predict_target(analysis: LadderAnalysis, *, eval_every: int, schedule: str = "cosine",
                   decay_fraction: float = 0.2, wsd_decay_shape: str = "linear",
                   interval: Optional[Mapping[str, float]] = None) -> dict[str, Any]:
    """The target's optimum, shape and final loss with an interval, stamped ``written_at``.

    The loss is approach 3's ``L(N, D)`` at the planned run's exact ``N`` and trained tokens
    ``D`` (not at the law's unrounded optimum), with the bootstrap interval of
    :func:`scaling.prediction.predict_run`; ``interval`` passes its interval settings
    (``level``, ``noise_floor``, ``relative_band``, ...).  The same call with the same
    arguments is what the trainer's own ``prediction.json`` holds for the target run.
    """
    target = analysis.target
    prediction = predict_run(analysis.law, target.n_params,
                             eval_tokens(target.steps, eval_every, target.batch_tokens),
                             target.tokens, schedule=schedule, decay_fraction=decay_fraction,
                             wsd_decay_shape=wsd_decay_shape, **dict(interval or {}))
    optimum = {}
    for approach, report in sorted(analysis.reports.items()):
        optimum[f"approach{approach}"] = {
            "n_opt": _interval_dict(report, "n_opt"), "tokens_opt": _interval_dict(report, "tokens_opt"),
            "loss_opt": _interval_dict(report, "loss_opt"),
            "law_file": analysis.law_files[approach]}
    now = time.time()
    return {
        "written_at": now,
        "written_at_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
        "target_flops": analysis.target_flops,
        "sizing_approach": analysis.sizing_approach,
        "sizing_note": analysis.sizing_note,
        "law_file": analysis.law_files[3],
        "coefficients": {k: float(getattr(analysis.law, k)) for k in ("E", "A", "B", "alpha", "beta")},
        "optimum": optimum,
        "target": {"n_params": target.n_params, "tokens": target.tokens, "steps": target.steps,
                   "global_batch": target.global_batch, "seq_len": target.seq_len,
                   "flops": target.flops, "tokens_per_param": target.tokens_per_param,
                   "learning_rate": target.learning_rate, "shape": shape_label(target.model),
                   "model": target.model.to_dict()},
        "final_loss": {"estimate": prediction.final.loss, "low": prediction.final.law_lower,
                       "high": prediction.final.law_upper, "level": prediction.level,
                       "method": prediction.method, "n_samples": prediction.n_samples},
        "prediction": prediction.to_dict(),
        "sensitivity": list(analysis.sensitivity),
        "agreement": allocation_agreement(analysis.reports),
        "extrapolation": extrapolation(analysis),
        "rungs": list(analysis.rung_names),
    }


def load_prediction(path: str | Path) -> dict[str, Any]:
    """Read ``prediction.json`` back (checking it is one)."""
    try:
        data = json.loads(Path(path).read_text())
        RunPrediction.from_dict(data["prediction"])
        float(data["final_loss"]["estimate"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ChinchaxError) as exc:
        raise ScalingError(f"{path} is not a ladder prediction ({exc})",
                          hint="delete it to predict again (only while the target has not started)") from None
    return data


# ================================================================================ verification
def published_comparison(target_flops: float, n_opt: float,
                         names: Sequence[str] = PUBLISHED_ALLOCATIONS) -> list[dict[str, Any]]:
    """Each published law's ``N_opt`` and ``D_opt`` at ``target_flops`` against the fitted ``n_opt``.

    ``ratio`` is fitted over published ``N_opt`` (above 1: the fit wants a larger model).
    Compute is the papers' ``C = 6 N D``, as in the laws themselves.
    """
    rows = []
    for name in names:
        law: Law = get_law(name)
        alloc = law.allocate(target_flops)
        rows.append({"law": name, "n_opt": alloc.n_params, "tokens_opt": alloc.tokens,
                     "tokens_per_param": alloc.tokens_per_param, "ratio": n_opt / alloc.n_params})
    return rows


def verify_target(prediction: Mapping[str, Any], target_dir: str | Path) -> dict[str, Any]:
    """Predicted against actual for the finished target run, and the allocation comparison.

    ``relative_error`` is ``actual / predicted − 1`` of the final eval loss; ``inside`` says
    whether the actual loss lies in the interval; ``are_tail`` is the mean ``|L − L̂| / L`` over
    the evals in the last 30% of the run (Hitchhiker's ARE; mid-run points of an un-annealed
    schedule sit above the law, so it is pessimistic for cosine runs).
    """
    target_dir = Path(target_dir)
    summary_path = target_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise ScalingError(f"the target run {target_dir} has no summary.json",
                          hint="train the target first (chinchax ladder CONFIG)")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") != "complete" or summary.get("final_eval_loss") is None:
        raise ScalingError(f"the target run {target_dir} is not complete (status "
                          f"{summary.get('status')!r})", hint="run chinchax ladder CONFIG again to resume it")
    actual = float(summary["final_eval_loss"])
    final = prediction["final_loss"]
    predicted, low, high = float(final["estimate"]), float(final["low"]), float(final["high"])
    evals = read_run_dir(target_dir)
    curve = RunPrediction.from_dict(prediction["prediction"])
    tail = evals.tokens >= (1.0 - ARE_TAIL) * evals.tokens.max()
    points = [curve.expected_at(t) for t in evals.tokens[tail]]
    expected = np.array([math.nan if p is None else p.loss for p in points])
    usable = np.isfinite(expected)
    are = float(np.mean(np.abs(evals.loss[tail][usable] - expected[usable]) / evals.loss[tail][usable])) \
        if usable.any() else None
    optimum = prediction["optimum"][f"approach{prediction['sizing_approach']}"]["n_opt"]["estimate"]
    return {
        "actual_final_loss": actual,
        "predicted_final_loss": predicted,
        "interval": [low, high],
        "level": final.get("level"),
        "relative_error": actual / predicted - 1.0,
        "absolute_relative_error": abs(actual / predicted - 1.0),
        "inside": bool(low <= actual <= high),
        "are_tail": are,
        "are_tail_points": int(usable.sum()),
        "target_n_params": summary.get("n_params"),
        "target_tokens": summary.get("tokens"),
        "target_flops": summary.get("flops"),
        "target_wall_time_s": summary.get("wall_time_s"),
        "prediction_written_at": prediction.get("written_at"),
        "fitted_n_opt": optimum,
        "published": published_comparison(float(prediction["target_flops"]), float(optimum)),
    }
