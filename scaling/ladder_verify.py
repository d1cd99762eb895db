"""Checking a ladder's prediction: predicted against actual, and the fitted optimum against the
published Chinchilla and Epoch allocations at the target's scale."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from chinchax.errors import ScalingError
from scaling.ladder_config import ARE_TAIL
from scaling.laws import Law, get_law
from scaling.observations import read_run_dir
from scaling.prediction import RunPrediction
from scaling.rundir import SUMMARY_NAME, read_summary

PUBLISHED_ALLOCATIONS = ("chinchilla", "chinchilla-unrounded", "epoch-2024", "chinchilla-approach2")

def published_comparison(target_flops: float, n_opt: float,
                         names: Sequence[str] = PUBLISHED_ALLOCATIONS) -> list[dict[str, Any]]:
    """``ratio`` = fitted / published ``N_opt`` (above 1: the fit wants a larger model); ``C = 6 N D``."""
    rows = []
    for name in names:
        law: Law = get_law(name)
        alloc = law.allocate(target_flops)
        rows.append({"law": name, "n_opt": alloc.n_params, "tokens_opt": alloc.tokens,
                     "tokens_per_param": alloc.tokens_per_param, "ratio": n_opt / alloc.n_params})
    return rows


def verify_target(prediction: Mapping[str, Any], target_dir: str | Path) -> dict[str, Any]:
    """Tail ARE is mean ``|L − L̂| / L`` over the last 30% of evals."""
    target_dir = Path(target_dir)
    summary = read_summary(target_dir)
    if summary is None:
        raise ScalingError(f"the target run {target_dir} has no {SUMMARY_NAME}",
                          hint="train the target first (chinchax ladder CONFIG)")
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
