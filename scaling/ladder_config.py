"""The ``ladder:`` section of a ladder YAML, and the names of the files a ladder directory holds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

import numpy as np

from chinchax.errors import ScalingError
from scaling.fit import FitConfig, coarse_grid

GRIDS = ("full", "coarse")
FITS = ("curve", "approach3")
# A parabola (approach 2) needs three sizes per budget; approach 3 needs three runs at least.
MIN_SIZES_PER_BUDGET = 3
# Files a ladder directory holds (the launcher and the report use the same names).
PLAN_FILE = "plan.json"
LAW_FILE = "law.json"
PREDICTION_FILE = "prediction.json"
VERIFICATION_FILE = "verification.json"
REPORT_FILE = "report.md"
# The Hitchhiker's guide scores a prediction over the last 30% of the target run.
ARE_TAIL = 0.3


@dataclass(frozen=True)
class LadderConfig:
    """The ``ladder:`` section: the sweep, the target, and how the rungs are fitted.

    Sizes: ``sizes_per_budget`` log-even over ``M / size_spread … M × size_spread``, ``M =
    center_factor × N_opt`` of the design ``law`` (below 1 where data want smaller models, as
    byte-level toys do). The target must be ``min_target_ratio`` × the largest rung, so the
    prediction extrapolates. ``approaches`` must include 3 (it alone predicts a loss);
    ``target_sizing`` names the approach that sizes the target; ``sensitivity`` refits approach 3
    under other ``drop_early`` values; the curve law also drops evals before ``drop_before_step``. ``evals_per_run``/``eval_sequences`` give every run about as
    many evals on the same held-out set. Wall time: ``flops_per_second``, else measured on
    finished rungs, else a CPU guess, plus ``run_overhead_s`` per run. ``fit: curve`` predicts
    with the loss-curve law, ``approach3`` with L(N, D); either is first backtested on the largest
    ``backtest_by``, and an ARE above ``require_backtest_are`` (null: never) stops the ladder.
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
    drop_before_step: int = 0
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
    fit: str = "curve"
    curve_lambda: float = 0.999
    backtest_by: str = "budget"
    require_backtest_are: Optional[float] = 0.03

    def __post_init__(self) -> None:
        self._check_sweep()
        self._check_fit()

    def _check_sweep(self) -> None:
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

    def _check_fit(self) -> None:
        if self.fit not in FITS:
            raise ScalingError(f"ladder.fit={self.fit!r} is not one of {', '.join(FITS)}",
                               hint="'curve' fits every eval under its schedule (Tissue et al. 2024)")
        if self.backtest_by not in ("budget", "model"):
            raise ScalingError(f"ladder.backtest_by={self.backtest_by!r} must be budget or model",
                               hint="'budget' leaves the largest budget out of the backtest fit")
        if not (isinstance(self.curve_lambda, (int, float)) and 0.0 <= self.curve_lambda < 1.0):
            raise ScalingError(f"ladder.curve_lambda must lie in [0, 1), got {self.curve_lambda!r}",
                               hint="0.999: the annealing momentum of Tissue et al. (2024)")
        if self.require_backtest_are is not None and not _positive_number(self.require_backtest_are):
            raise ScalingError(f"ladder.require_backtest_are must be positive or null, got "
                               f"{self.require_backtest_are!r}", hint="0.03 stops at a 3% backtest miss")
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
        if isinstance(self.drop_before_step, bool) or not isinstance(self.drop_before_step, int) \
                or self.drop_before_step < 0:
            raise ScalingError(f"ladder.drop_before_step must be a non-negative integer, got "
                              f"{self.drop_before_step!r}",
                              hint="use e.g. 200 to fit the curve law to evals from step 200 on")
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
        """``(eval_every, eval_batches)`` of a run; the defaults are the experiment's."""
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
        grid = coarse_grid() if self.grid == "coarse" else FitConfig().grid
        return FitConfig(approach=approach, huber_delta=self.huber_delta, grid=grid,
                         bootstrap=self.bootstrap, confidence=self.level, seed=self.fit_seed,
                         target_flops=target_flops)


def _positive_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value > 0)
