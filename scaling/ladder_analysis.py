"""Fitting a ladder's finished rungs and sizing the target with the fitted law.

Fits use every eval after the first ``drop_early`` of each run, bootstrapped over runs. A
mid-run eval of a cosine schedule sits above an annealed run's loss, biasing a parametric fit
towards slower data scaling; :func:`fit_choice_sensitivity` shows how far.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from chinchax.errors import ChinchaxError, ScalingError
from models.config import ModelConfig
from scaling.allocate import BudgetConfig, RunPlan, plan_run
from scaling.fit import FitReport, curve_report, fit, fit_curve_report, write_law_file
from scaling.findings import DISAGREEMENT_FACTOR
from scaling.identity import common_identity, identities_of
from scaling.ladder_backtest import ladder_backtest, ladder_curve_points, ladder_findings, plan_schedule
from scaling.backtest import Backtest
from scaling.ladder_config import LAW_FILE, MIN_SIZES_PER_BUDGET, LadderConfig
from scaling.ladder_design import LadderPlan
from scaling.laws import ParametricLaw
from scaling.observations import Observations, load_observations

@dataclass(frozen=True)
class LadderAnalysis:
    """Falls back to approach 3 for sizing when the configured approach cannot size."""

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
    backtest: Optional[Backtest] = None
    findings: tuple[str, ...] = ()

    @property
    def loss_approach(self) -> int | str:
        """The curve law when fitted, else approach 3."""
        return "curve" if "curve" in self.reports else 3

    @property
    def law(self) -> ParametricLaw:
        law = self.reports[self.loss_approach].law
        assert isinstance(law, ParametricLaw)
        return law

    @property
    def law_file(self) -> str:
        return self.law_files[self.loss_approach]


def law_file_name(approach: int | str) -> str:
    return LAW_FILE if approach == 3 else "law_curve.json" if approach == "curve" else \
        f"law_approach{approach}.json"


def rung_observations(run_dirs: Sequence[str | Path], drop_early: float) -> Observations:
    """``drop_early=1.0``: final evals only."""
    if drop_early >= 1.0:
        return load_observations([str(p) for p in run_dirs], drop_early=0.0).final_points()
    return load_observations([str(p) for p in run_dirs], drop_early=float(drop_early))


def fit_rungs(run_dirs: Sequence[str | Path], cfg: LadderConfig, target_flops: float,
              name: str = "ladder") -> tuple[Observations, Dict[int, FitReport], Dict[int, str]]:
    """Only approach 3 must succeed; others cross-check, and a failure comes back as its reason."""
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




def allocation_agreement(reports: Mapping[int, FitReport]) -> Optional[dict[str, Any]]:
    if 2 not in reports or 3 not in reports:
        return None
    n2, n3 = float(reports[2].estimates["n_opt"]), float(reports[3].estimates["n_opt"])
    ratio = n2 / n3
    return {"n_opt_approach2": n2, "n_opt_approach3": n3, "ratio": ratio,
            "disagree": not 1.0 / DISAGREEMENT_FACTOR <= ratio <= DISAGREEMENT_FACTOR}


def extrapolation(analysis: LadderAnalysis) -> dict[str, float]:
    """Target ``N``, ``D`` and ``6 N D`` over the largest rung's."""
    final = analysis.observations.final_points()
    target = analysis.target
    return {"n_ratio": target.n_params / float(final.n_params.max()),
            "tokens_ratio": target.tokens / float(final.tokens.max()),
            "compute_ratio": 6.0 * target.n_params * target.tokens / float(final.compute.max())}


def fit_choice_sensitivity(run_dirs: Sequence[str | Path], cfg: LadderConfig, target: RunPlan,
                           target_flops: float) -> tuple[dict[str, Any], ...]:
    """Which evals are fitted moves a prediction in a way the bootstrap cannot show."""
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
                   settings: Optional[Mapping[str, Any]] = None,
                   optim: Optional[Mapping[str, Any]] = None) -> LadderAnalysis:
    """``optim``: the experiment's optimiser section (the curve law needs the target's schedule)."""
    out, cfg = Path(ladder_dir), plan.config
    obs, reports, skipped = fit_rungs(run_dirs, cfg, plan.target_flops, name=name)
    context = {"ladder": name, "rungs": [Path(p).name for p in run_dirs],
               "drop_early": cfg.drop_early, "drop_before_step": cfg.drop_before_step,
               **dict(settings or {})}
    identity = common_identity(identities_of(run_dirs))
    points = None
    if cfg.fit == "curve":
        points = ladder_curve_points(run_dirs, cfg)
        reports["curve"] = fit_curve_report(points, cfg.fit_config(3, plan.target_flops),
                                            name=f"{name}-curve",
                                            reference=plan_schedule(plan.provisional_target, optim))
    law_files = {a: str(write_law_file(replace(r, identity=identity), out / law_file_name(a), context))
                 for a, r in reports.items()}
    sizing = cfg.target_sizing if cfg.target_sizing in reports else 3  # approach 3 always fits
    if sizing == 3 and "curve" in reports:
        sizing = "curve"
    target, sizing, sizing_note = _size_target(plan, budget_template, law_files, sizing,
                                               data_parallel, base_model)
    if "curve" in reports:  # the law file reduces the curve law at the target's own schedule
        reports["curve"] = curve_report(reports["curve"].detail, points.obs,
                                        cfg.fit_config(3, plan.target_flops),
                                        plan_schedule(target, optim), name=f"{name}-curve")
        law_files["curve"] = str(write_law_file(replace(reports["curve"], identity=identity),
                                                out / law_file_name("curve"), context))
    backtest = ladder_backtest(obs, points, cfg, plan.target_flops)
    analysis = LadderAnalysis(observations=obs, reports=reports, law_files=law_files, target=target,
                              target_flops=plan.target_flops, sizing_approach=sizing,
                              sizing_note=sizing_note, rung_names=tuple(Path(p).name for p in run_dirs),
                              skipped=skipped, backtest=backtest,
                              sensitivity=fit_choice_sensitivity(run_dirs, cfg, target, plan.target_flops))
    return replace(analysis, findings=ladder_findings(analysis, cfg))


def _size_target(plan: LadderPlan, budget_template: BudgetConfig, law_files: Mapping[Any, str],
                 sizing: int | str, data_parallel: int, base_model: Optional[ModelConfig]
                 ) -> tuple[RunPlan, int | str, str]:
    """The loss law stands behind the sizing law: an isoFLOP power law extrapolated from minima at the
    sweep's edge can ask for an absurd size."""
    fallback = "curve" if "curve" in law_files else 3
    failures: list[str] = []
    for approach in dict.fromkeys((sizing, fallback)):
        try:
            target = plan_run(replace(budget_template, flops=plan.target_flops, law=law_files[approach]),
                              data_parallel=data_parallel, base_model=base_model)
            note = f"{failures[0]}; approach {approach} sized it instead" if failures else ""
            return target, approach, note
        except ChinchaxError as exc:
            failures.append(f"approach {approach}'s law cannot size the target ({exc})")
            hint = exc.hint or "inspect the law files and the isoFLOP plot"
    raise ScalingError(f"at {plan.target_flops:.3g} FLOPs: " + "; ".join(failures), hint=hint)
