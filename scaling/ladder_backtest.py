"""The ladder's checks before its target: curve points, the backtest, and findings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from chinchax.errors import ScalingError
from scaling.allocate import RunPlan
from scaling.backtest import Backtest, backtest_curve, backtest_parametric
from scaling.curve_law import CurvePoints, read_curve_points
from scaling.findings import agreement_finding, e_finding
from scaling.lr_schedule import Schedule
from scaling.observations import Observations


def plan_schedule(plan: RunPlan, optim: Optional[Mapping[str, Any]]) -> Schedule:
    section = {**dict(optim or {}), "learning_rate": plan.learning_rate}
    return Schedule.from_config({"optim": section, "train": {"steps": plan.steps,
                                                             "global_batch": plan.global_batch,
                                                             "seq_len": plan.seq_len}})


def ladder_curve_points(run_dirs: Sequence[str | Path], cfg: Any) -> CurvePoints:
    if cfg.drop_early >= 1.0:
        points = read_curve_points(run_dirs, 0.0, cfg.curve_lambda)
        return points.select(points.obs.final_mask())
    return read_curve_points(run_dirs, cfg.drop_early, cfg.curve_lambda, cfg.drop_before_step)


def ladder_backtest(obs: Observations, points: Optional[CurvePoints], cfg: Any,
                    target_flops: float) -> Optional[Backtest]:
    """``None`` if impossible: the ladder then says so rather than stop. The curve law's backtest is
    bootstrapped like the target's prediction, so its intervals' coverage is measured too."""
    config = cfg.fit_config(3, target_flops)
    try:
        if points is not None:
            return backtest_curve(points, config, cfg.backtest_by)
        return backtest_parametric(obs, config, cfg.backtest_by)
    except (ScalingError, ArithmeticError, ValueError):  # a finding, not a crash
        return None


def ladder_findings(analysis: Any, cfg: Any) -> tuple[str, ...]:
    """E at the edge, approaches 2 and 3 apart on ``N_opt``, and a backtest that failed."""
    found = []
    report = analysis.reports[analysis.loss_approach]
    edge = e_finding(float(report.estimates["E"]), float(analysis.observations.loss.min()),
                     report.intervals.get("E"))
    if edge:
        found.append(edge)
    if 2 in analysis.reports and 3 in analysis.reports:
        n2, n3 = (float(analysis.reports[a].estimates["n_opt"]) for a in (2, 3))
        disagreement = agreement_finding(n2, n3, analysis.target_flops)
        if disagreement:
            found.append(disagreement)
    if analysis.backtest is None:
        found.append("the backtest could not be run (too few runs besides the largest "
                     f"{cfg.backtest_by}); add budgets")
    elif cfg.require_backtest_are is not None and analysis.backtest.are > cfg.require_backtest_are:
        found.append(f"the backtest missed: ARE {analysis.backtest.are:.2%} on the largest "
                     f"{cfg.backtest_by} exceeds ladder.require_backtest_are = "
                     f"{cfg.require_backtest_are:.2%}; the target is not trained. Add budgets, "
                     "or check the fit on the isoFLOP and loss-curve plots")
    return tuple(found)


def backtest_stop(cfg: Any, prediction: Mapping[str, Any]) -> str:
    are = prediction.get("backtest_are")
    if cfg.require_backtest_are is None or are is None or are <= cfg.require_backtest_are:
        return ""
    return (f"the backtest on the largest {cfg.backtest_by} missed by ARE {are:.2%} > "
            f"ladder.require_backtest_are {cfg.require_backtest_are:.2%} (see report.md); add "
            "budgets, or set ladder.require_backtest_are=null to train the target anyway")
