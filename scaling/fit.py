"""One entry point for Chinchilla's approaches 1, 2 and 3, bootstrapped, and the law file.

Held-out scoring is ARE (Choshen et al. 2024); compute is the papers' ``C = 6 N D``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from chinchax.errors import ScalingError
from scaling.curve_law import CurvePoints
from scaling.fit_approach12 import PowerLawFit, fit_envelope, fit_isoflop, group_budgets
from scaling.fit_approach3 import HuberLogObjective, ParametricFit, fit_continual, fit_parametric
from scaling.fit_bootstrap import (Bootstrap, Interval, bootstrap_parametric, bootstrap_power,
                                   parametric_quantities, point_weights, power_quantities, resample_runs)
from scaling.fit_config import LABEL_ORDER, FitConfig, FitWarning, StartGrid, coarse_grid
from scaling.fit_curve import CurveFit, bootstrap_curve, fit_curve
from scaling.identity import FIELDS as IDENTITY_FIELDS, UNKNOWN, nested
from scaling.laws import Law, ParametricLaw
from scaling.lbfgs import lbfgs_batched
from scaling.lr_schedule import Schedule
from scaling.observations import Observations
from scaling.rundir import dumps

# Re-exported: callers import the fit's pieces from here.
__all__ = ["LABEL_ORDER", "Bootstrap", "FitConfig", "FitWarning", "HuberLogObjective", "StartGrid",
           "bootstrap_parametric", "coarse_grid", "fit_continual", "fit_envelope", "fit_isoflop",
           "fit_parametric", "group_budgets", "lbfgs_batched", "point_weights", "resample_runs"]

@dataclass(frozen=True)
class FitReport:
    """Everything ``chinchax fit`` shows and writes: the law, estimates, intervals, data."""

    approach: int | str
    law: Law
    estimates: dict[str, float]
    intervals: dict[str, Interval]
    target_flops: float
    observations: Observations
    config: FitConfig
    detail: ParametricFit | PowerLawFit | CurveFit
    bootstrap: Optional[Bootstrap]
    warnings: tuple[str, ...]
    findings: tuple[str, ...] = ()
    identity: Optional[Mapping[str, str]] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def exponents(self) -> dict[str, float]:
        return {"a": self.estimates["a"], "b": self.estimates["b"]}

    def to_dict(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The law file: ``law`` (readable by ``scaling.laws.law_from_dict``) and its context."""
        allocation_keys = [k for k in ("n_opt", "tokens_opt", "loss_opt") if k in self.estimates]
        return {
            "law": self.law.to_dict(),
            "approach": self.approach,
            "exponents": self.exponents,
            "estimates": self.estimates,
            "intervals": {k: v.to_dict() for k, v in self.intervals.items()},
            "allocation": {"flops": self.target_flops, **{k: self.interval_dict(k) for k in allocation_keys}},
            "bootstrap": None if self.bootstrap is None else {
                "resamples": self.bootstrap.n_resamples, "failed": self.bootstrap.n_failed,
                "confidence": self.bootstrap.confidence, "unit": "run"},
            "warnings": list(self.warnings),
            "findings": list(self.findings),
            "identity": nested(self.identity or {k: UNKNOWN for k in IDENTITY_FIELDS}),
            **dict(self.extra),
            "settings": {**asdict(self.config), **dict(settings or {})},
            "data": self.observations.records(),
        }

    def interval_dict(self, key: str) -> Optional[dict[str, float]]:
        """``key``'s interval, else its bare estimate; ``None`` where the report has neither."""
        if key in self.intervals:
            return self.intervals[key].to_dict()
        return {"estimate": float(self.estimates[key])} if key in self.estimates else None


def default_target_flops(obs: Observations) -> float:
    """One decade beyond the largest budget in the data: the next run one would plan."""
    return float(10.0 * obs.compute.max())


def fit(obs: Observations, config: FitConfig = FitConfig(), *, name: str | None = None) -> FitReport:
    target = config.target_flops or default_target_flops(obs)
    law_name = name or f"fit-approach{config.approach}"
    boot: Bootstrap | None = None
    if config.approach == 3:
        detail: ParametricFit | PowerLawFit = fit_parametric(obs, config, name=law_name)
        estimates = parametric_quantities(detail.law, target)
        if config.bootstrap:
            boot = bootstrap_parametric(obs, detail, config, target)
        law: Law = detail.law if boot is None else replace(
            detail.law, samples=tuple(tuple(float(v) for v in row[:6]) for row in boot.samples))
        if config.fixed_values.get("gamma") == 0.0:
            estimates.pop("gamma")  # Chinchilla's form: gamma is no coefficient of it
    else:
        detail = (fit_isoflop(obs, config, name=law_name) if config.approach == 2
                  else fit_envelope(obs, config, name=law_name))
        law = detail.law
        estimates = power_quantities(detail.law, target)
        if config.bootstrap:
            boot = bootstrap_power(obs, config, target)
    intervals = {} if boot is None else {
        k: boot.interval(k, v) for k, v in estimates.items() if k in boot.names}
    notes = list(detail.warnings)
    if boot is not None and boot.n_failed:
        notes.append(f"{boot.n_failed} of {boot.n_resamples} bootstrap resamples could not be fitted")
    return FitReport(approach=config.approach, law=law, estimates=estimates, intervals=intervals,
                     target_flops=target, observations=obs, config=config, detail=detail,
                     bootstrap=boot, warnings=tuple(notes))


def fit_curve_report(points: CurvePoints, config: FitConfig = FitConfig(), *, name: str = "fit-curve",
                     reference: Optional[Schedule] = None) -> FitReport:
    """The curve law fitted and bootstrapped, reported as the L(N, D) law of runs shaped like
    ``reference`` (default: the run with the most compute), which allocation reads."""
    detail = fit_curve(points, config)
    if config.bootstrap:
        detail = bootstrap_curve(points, detail, config)
    if reference is None:
        reference = points.schedules[str(points.obs.run_id[int(np.argmax(points.obs.flops))])]
    return curve_report(detail, points.obs, config, reference, name=name)


def curve_report(detail: CurveFit, obs: Observations, config: FitConfig, reference: Schedule, *,
                 name: str = "fit-curve") -> FitReport:
    """A fitted curve law as a :class:`FitReport` of its L(N, D) reduction at ``reference``."""
    target = config.target_flops or default_target_flops(obs)
    law = detail.law.reduced(reference, name=name, source=f"chinchax fit, curve law (Tissue et al. "
                             f"2024) on {len(obs)} evals from {obs.n_runs} runs")
    # E and C as fitted (the irreducible loss and the annealing coefficient); the law file's
    # ``law`` holds the reduced E - C*S2_end
    estimates = {**parametric_quantities(law, target), "E": detail.law.E, "C": detail.law.C}
    estimates.pop("gamma")
    boot = None
    if detail.law.samples:
        rows = []
        for reduced, raw in zip(law.samples, detail.law.samples):
            try:  # a degenerate replicate is counted, not fatal
                quantities = parametric_quantities(law.with_coefficients(reduced), target)
            except (ArithmeticError, ScalingError):
                continue
            quantities.pop("gamma")
            rows.append([*{**quantities, "E": raw[0]}.values(), raw[5]])
        failed = detail.n_failed + len(detail.law.samples) - len(rows)
        boot = Bootstrap(names=tuple(estimates), samples=np.array(rows).reshape(len(rows), len(estimates)),
                         n_resamples=config.bootstrap, n_failed=failed, confidence=config.confidence)
    intervals = {} if boot is None else {k: boot.interval(k, v) for k, v in estimates.items()}
    extra = {"curve": {**detail.law.to_dict(), "reference": asdict(reference)}}
    return FitReport(approach="curve", law=law, estimates=estimates, intervals=intervals,
                     target_flops=target, observations=obs, config=config, detail=detail,
                     bootstrap=boot, warnings=detail.warnings, extra=extra)


def write_law_file(report: FitReport, path: str | Path,
                   settings: Mapping[str, Any] | None = None) -> Path:
    """The JSON that ``chinchax allocate --law PATH`` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(report.to_dict(settings), indent=2) + "\n")
    return path


# ============================================================================ ARE evaluation
@dataclass(frozen=True)
class Evaluation:
    """Average relative error of a fit on held-out points (Choshen et al. 2024)."""

    target_run: str
    are: float
    law: ParametricLaw
    heldout: Observations
    predicted: np.ndarray
    n_fit: int


def evaluate(obs: Observations, config: FitConfig = FitConfig(), *, target_run: str | None = None,
             holdout_fraction: float = 0.3) -> Evaluation:
    """Fit approach 3 without the last ``holdout_fraction`` of the target run (default: the
    largest) and score it there: ``ARE = mean |L - L_hat| / L``."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ScalingError(f"holdout fraction must lie in (0, 1), got {holdout_fraction}",
                       hint="the Hitchhiker's default holds out the last 0.3 of the target run")
    if target_run is None:
        order = np.lexsort((obs.tokens, obs.n_params))
        target_run = str(obs.run_id[order[-1]])
    in_target = obs.run_id == target_run
    if not in_target.any():
        raise ScalingError(f"target run {target_run!r} is not among the observations",
                       hint="choose one of: " + ", ".join(obs.runs[:8]))
    final_tokens = obs.tokens[in_target].max()
    heldout = in_target & (obs.tokens > (1.0 - holdout_fraction) * final_tokens)
    if not heldout.any():
        raise ScalingError(f"target run {target_run!r} has no points in its last {holdout_fraction:.0%}",
                       hint="evaluate on a run with intermediate evals, or raise the fraction")
    training = obs.select(~heldout)
    base = fit_parametric(training, replace(config, bootstrap=0), name="fit-evaluate")
    held = obs.select(heldout)
    predicted = np.asarray(base.law.loss(held.n_params, held.tokens), dtype=np.float64)
    are = float(np.mean(np.abs(held.loss - predicted) / held.loss))
    return Evaluation(target_run=target_run, are=are, law=base.law, heldout=held,
                      predicted=predicted, n_fit=len(training))
