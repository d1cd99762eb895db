"""Backtest: fit all but the largest budget (or model), score its predicted final losses (ARE,
Choshen et al. 2024) and, for the curve law with a bootstrap, whether the interval the target
would get covers them.
The cheapest check before trusting a target five times larger: the runs exist already."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from chinchax.errors import ScalingError
from scaling.curve_law import CurvePoints
from scaling.fit_approach12 import group_budgets
from scaling.fit_approach3 import fit_parametric
from scaling.fit_config import FitConfig
from scaling.fit_curve import bootstrap_curve, fit_curve
from scaling.observations import Observations
from scaling.prediction import bootstrap_bounds

HOLD_OUT = ("budget", "model")


@dataclass(frozen=True)
class Backtest:
    """Per left-out run: actual and predicted final loss; ``are`` is their mean relative error."""

    held_out_by: str
    approach: str
    rows: tuple[dict[str, Any], ...]
    fit_runs: int

    @property
    def are(self) -> float:
        return float(np.mean([abs(r["error"]) for r in self.rows]))

    @property
    def coverage(self) -> float | None:
        """Share of left-out runs inside their predicted interval; None without a bootstrap."""
        inside = [r["inside"] for r in self.rows if "inside" in r]
        return float(np.mean(inside)) if inside and len(inside) == len(self.rows) else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Backtest":
        return cls(data["held_out_by"], data["approach"], tuple(data["rows"]), data["fit_runs"])

    def to_dict(self) -> dict[str, Any]:
        return {"held_out_by": self.held_out_by, "approach": self.approach, "are": self.are,
                "coverage": self.coverage, "fit_runs": self.fit_runs, "rows": list(self.rows)}


def held_out_runs(obs: Observations, by: str = "budget", tolerance: float = 0.1) -> set[str]:
    """Runs of the largest budget (final FLOPs within ``tolerance`` decades) or largest model."""
    if by not in HOLD_OUT:
        raise ScalingError(f"cannot hold out by {by!r}", hint="use 'budget' or 'model'")
    final = obs.final_points()
    if by == "model":
        chosen = final.n_params == final.n_params.max()
    else:
        labels = group_budgets(final.flops, tolerance)
        chosen = labels == labels.max()
    held = {str(r) for r in final.run_id[chosen]}
    if len(held) == final.n_runs or final.n_runs - len(held) < 3:
        raise ScalingError(f"a backtest by {by} leaves {final.n_runs - len(held)} run(s) to fit",
                           hint="a backtest needs 3 or more runs besides the largest " + by)
    return held


def _rows(obs: Observations, predicted: np.ndarray, replicates: np.ndarray,
          level: float) -> tuple[dict[str, Any], ...]:
    lower, upper, _ = bootstrap_bounds(replicates, predicted, level)
    rows = []
    for i in range(len(obs)):
        row = {"run": str(obs.run_id[i]), "n_params": float(obs.n_params[i]),
               "tokens": float(obs.tokens[i]), "flops": float(obs.flops[i]),
               "actual": float(obs.loss[i]), "predicted": float(predicted[i]),
               "error": float(predicted[i] / obs.loss[i] - 1.0)}
        if lower.size:
            row.update(lower=float(lower[i]), upper=float(upper[i]),
                       inside=bool(lower[i] <= obs.loss[i] <= upper[i]))
        rows.append(row)
    return tuple(rows)


def backtest_curve(points: CurvePoints, config: FitConfig, by: str = "budget") -> Backtest:
    held = held_out_runs(points.obs, by, config.budget_tolerance)
    in_held = np.isin(points.obs.run_id.astype(str), list(held))
    fitting = points.select(~in_held)
    fitted = fit_curve(fitting, replace(config, bootstrap=0))
    if config.bootstrap:
        fitted = bootstrap_curve(fitting, fitted, config)
    test = points.select(in_held & points.obs.final_mask())
    predicted = np.asarray(fitted.law.loss(test.obs.n_params, test.s1, test.s2), dtype=np.float64)
    replicates = fitted.law.replicate_losses(test.obs.n_params, test.s1, test.s2)
    return Backtest(by, "curve", _rows(test.obs, predicted, replicates, config.confidence),
                    points.obs.n_runs - len(held))


def backtest_parametric(obs: Observations, config: FitConfig, by: str = "budget") -> Backtest:
    held = held_out_runs(obs, by, config.budget_tolerance)
    in_held = np.isin(obs.run_id.astype(str), list(held))
    fitted = fit_parametric(obs.select(~in_held), replace(config, bootstrap=0), emit_warnings=False)
    test = obs.select(in_held).final_points()
    predicted = np.asarray(fitted.law.loss(test.n_params, test.tokens), dtype=np.float64)
    return Backtest(by, "3", _rows(test, predicted, np.empty((0, len(test))), config.confidence),
                    obs.n_runs - len(held))
