"""Scaling ladders: plan an isoFLOP sweep, fit it, predict the big run before it starts, check.

This module predicts the target and re-exports the ``ladder_*`` modules. Running rungs is
``launch/ladder_runner.py``'s business; the run directory is the contract between them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from chinchax.errors import ChinchaxError, ScalingError
from scaling.ladder_analysis import (DISAGREEMENT_FACTOR, LadderAnalysis, allocation_agreement,
                                     analyse_ladder, extrapolation, fit_rungs, law_file_name)
from scaling.ladder_config import (PLAN_FILE, PREDICTION_FILE, REPORT_FILE,
                                   VERIFICATION_FILE, LadderConfig)
from scaling.ladder_design import LadderPlan, design_ladder, shape_label
from scaling.ladder_verify import published_comparison, verify_target
from scaling.ladder_walltime import (CPU_GUESS_FLOPS_PER_SECOND, WallTimeModel, estimate_seconds,
                                     eval_tokens, measured_wall_time_model)
from scaling.prediction import RunPrediction, predict_run

# Re-exported: the launcher, the report and the tests import the ladder's pieces from here.
__all__ = ["CPU_GUESS_FLOPS_PER_SECOND", "DISAGREEMENT_FACTOR", "PLAN_FILE", "PREDICTION_FILE",
           "REPORT_FILE", "VERIFICATION_FILE", "LadderAnalysis", "LadderConfig",
           "LadderPlan", "WallTimeModel", "analyse_ladder", "design_ladder",
           "estimate_seconds", "fit_rungs", "law_file_name", "measured_wall_time_model",
           "published_comparison", "verify_target"]


def rung_status(summary: Optional[Mapping[str, Any]], has_checkpoint: bool) -> str:
    """``complete`` (summary says so), ``partial`` (something to resume) or ``new``."""
    if summary is not None and summary.get("status") == "complete":
        return "complete"
    if summary is not None or has_checkpoint:
        return "partial"
    return "new"


def predict_target(analysis: LadderAnalysis, *, eval_every: int, schedule: str = "cosine",
                   decay_fraction: float = 0.2, wsd_decay_shape: str = "linear",
                   interval: Optional[Mapping[str, float]] = None) -> dict[str, Any]:
    """Approach 3's ``L(N, D)`` at the planned target run, with an interval, stamped ``written_at``."""
    target = analysis.target
    prediction = predict_run(analysis.law, target.n_params,
                             eval_tokens(target.steps, eval_every, target.batch_tokens),
                             target.tokens, schedule=schedule, decay_fraction=decay_fraction,
                             wsd_decay_shape=wsd_decay_shape, **dict(interval or {}))
    optimum = {}
    for approach, report in sorted(analysis.reports.items(), key=lambda item: str(item[0])):
        optimum[f"approach{approach}"] = {
            **{key: report.interval_dict(key) for key in ("n_opt", "tokens_opt", "loss_opt")},
            "law_file": analysis.law_files[approach]}
    now = time.time()
    return {
        "written_at": now,
        "written_at_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
        "target_flops": analysis.target_flops,
        "sizing_approach": analysis.sizing_approach,
        "sizing_note": analysis.sizing_note,
        "law_file": analysis.law_file,
        "loss_law": str(analysis.loss_approach),
        "coefficients": {k: float(getattr(analysis.law, k)) for k in ("E", "A", "B", "alpha", "beta")},
        "curve": analysis.reports["curve"].extra.get("curve") if "curve" in analysis.reports else None,
        "backtest": None if analysis.backtest is None else analysis.backtest.to_dict(),
        "backtest_are": None if analysis.backtest is None else analysis.backtest.are,
        "findings": list(analysis.findings),
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
    try:
        data = json.loads(Path(path).read_text())
        RunPrediction.from_dict(data["prediction"])
        float(data["final_loss"]["estimate"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ChinchaxError) as exc:
        raise ScalingError(f"{path} is not a ladder prediction ({exc})",
                          hint="delete it to predict again (only while the target has not started)") from None
    return data
