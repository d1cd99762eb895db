"""A ladder's ``report.md`` and plots; adds the one picture only a ladder has: every rung's loss
curve with the target's, and the band it was predicted to fall in before it ran."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from scaling.fit import LABEL_ORDER, FitReport, PowerLawFit
from scaling.ladder import (
    DISAGREEMENT_FACTOR,
    REPORT_FILE,
    LadderAnalysis,
    LadderPlan,
    law_file_name,
    shape_label,
)
from scaling.observations import read_run_dir
from scaling.plots import (LOSS_UNIT, colours_for, new_figure, plot_bootstrap, plot_frontier, plot_isoflops,
                           plot_residuals, save_figure)

log = logging.getLogger("chinchax.ladder")

PLOTS_DIR = "plots"
# The coefficients the report prints, and the format it prints them in (tests re-read them).
COEFFICIENTS = ("E", "A", "B", "alpha", "beta")


def number(value: Optional[float]) -> str:
    """The report's number format: 4 significant digits, scientific beyond 1e5."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def plot_loss_curves(rung_dirs: Mapping[str, Path], budgets: Mapping[str, float], path: str | Path,
                     prediction: Optional[Mapping[str, Any]] = None,
                     target_dir: Optional[Path] = None) -> Path:
    """Eval loss against training FLOPs for every rung (coloured by budget), the target's
    measured curve, and the curve and interval it was predicted to follow."""
    figure = new_figure(8.0, 5.2)
    axes = figure.add_subplot()
    levels = sorted(set(budgets.values()))
    colour = dict(zip(levels, colours_for(len(levels), high=0.85)))
    labelled: set[float] = set()
    for name, run_dir in rung_dirs.items():
        obs = read_run_dir(run_dir)
        budget = budgets[name]
        axes.plot(obs.flops, obs.loss, color=colour[budget], linewidth=1, alpha=0.85,
                  label=None if budget in labelled else f"rungs at {budget:.2g} FLOPs")
        labelled.add(budget)
    if prediction is not None:
        target = prediction["target"]
        per_token = float(target["flops"]) / float(target["tokens"])
        curve = prediction["prediction"]["curve"]
        flops = np.array([p["tokens"] for p in curve], dtype=float) * per_token
        lower = np.array([p["law_lower"] for p in curve])
        upper = np.array([p["law_upper"] for p in curve])
        axes.fill_between(flops, lower, upper, color="crimson", alpha=0.18,
                          label=f"target: predicted L(N, D_t), {prediction['final_loss']['level']:.0%} band")
        axes.plot(flops, [p["loss"] for p in curve], color="crimson", linestyle="--", linewidth=1.2)
        final = prediction["final_loss"]
        axes.errorbar([flops[-1]], [final["estimate"]],
                      yerr=[[final["estimate"] - final["low"]], [final["high"] - final["estimate"]]],
                      color="crimson", capsize=4, marker="o", markersize=4)
    if target_dir is not None:
        obs = read_run_dir(target_dir)
        axes.plot(obs.flops, obs.loss, color="black", linewidth=1.6, label="target: measured")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    axes.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    axes.tick_params(axis="y", which="minor", labelsize=7)
    axes.set_xlabel("training FLOPs (exact counter)")
    axes.set_ylabel(f"eval loss ({LOSS_UNIT})")
    axes.set_title("loss curves of the ladder and the target's prediction (made before it ran)")
    axes.legend(fontsize=7)
    figure.subplots_adjust(left=0.1, right=0.98, bottom=0.1, top=0.93)
    return save_figure(figure, path)


def write_plots(out_dir: str | Path, analysis: LadderAnalysis, rung_dirs: Mapping[str, Path],
                budgets: Mapping[str, float], prediction: Optional[Mapping[str, Any]],
                target_dir: Optional[Path]) -> dict[str, Path]:
    out = Path(out_dir)
    report3 = analysis.reports[3]
    isoflop = analysis.reports[2].detail if 2 in analysis.reports else None
    profiles = isoflop if isinstance(isoflop, PowerLawFit) and isoflop.profiles else None
    drawers: dict[str, Callable[[], Path]] = {}
    if profiles is not None:
        drawers["isoFLOP profiles"] = lambda: plot_isoflops(profiles, out / "isoflops.png", law=report3.law)
    drawers["frontier"] = lambda: plot_frontier(report3, out / "frontier.png", points=profiles)
    drawers["loss curves"] = lambda: plot_loss_curves(rung_dirs, budgets, out / "loss_curves.png",
                                                      prediction, target_dir)
    drawers["residuals"] = lambda: plot_residuals(report3, out / "residuals.png")
    if report3.bootstrap is not None and report3.bootstrap.samples.shape[0] > 1:
        drawers["bootstrap"] = lambda: plot_bootstrap(report3.bootstrap, out / "bootstrap.png",
                                                      report3.estimates)
    plots: dict[str, Path] = {}
    for name, draw in drawers.items():
        # A figure that cannot be drawn (e.g. a degenerate fit's extreme values) costs that
        # figure, not the report of a ladder that took hours to train.
        try:
            plots[name] = draw()
        except (ValueError, ArithmeticError, RuntimeError) as exc:
            log.warning("plot %r could not be drawn: %s: %s", name, type(exc).__name__, exc)
    return plots


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _interval(report: FitReport, key: str) -> str:
    interval = report.intervals.get(key)
    return "" if interval is None else f"{number(interval.low)} – {number(interval.high)}"


def _fit_section(approach: int, report: FitReport, law_file: str) -> list[str]:
    level = f"{report.bootstrap.confidence:.0%} interval" if report.bootstrap else "interval"
    rows = [(key, number(report.estimates[key]), _interval(report, key))
            for key in LABEL_ORDER if key in report.estimates]
    boot = report.bootstrap
    lines = [f"### Approach {approach}", "",
             f"Law file: `{Path(law_file).name}` (in the ladder directory); {len(report.observations)} points from "
             f"{report.observations.n_runs} rungs"
             + (f"; bootstrap: {boot.n_resamples} resamples over rungs ({boot.n_failed} failed)"
                if boot else "; no bootstrap") + ".", ""]
    lines += _table(("quantity", "estimate", level), rows)
    lines += [""] + [f"- warning: {w}" for w in report.warnings]
    return lines


def write_report(ladder_dir: str | Path, plan: LadderPlan, analysis: LadderAnalysis,
                 prediction: Mapping[str, Any], verification: Optional[Mapping[str, Any]], *,
                 rung_dirs: Mapping[str, Path], target_dir: Optional[Path],
                 summaries: Mapping[str, Mapping[str, Any]], timings: Mapping[str, Any],
                 name: str = "ladder") -> Path:
    out = Path(ladder_dir)
    budgets = {r.name: r.budget for r in plan.rungs}
    plots = write_plots(out / PLOTS_DIR, analysis, rung_dirs, budgets, prediction, target_dir)
    lines = [f"# Scaling ladder `{name}`", ""]
    lines += _findings_section(prediction)
    lines += _headline(plan, prediction, verification)
    lines += _rungs_section(plan, summaries)
    lines += _laws_section(plan, analysis, prediction)
    lines += _backtest_section(prediction)
    lines += _prediction_section(prediction)
    lines += _sensitivity_section(plan, prediction, verification)
    lines += _verification_section(plan, prediction, verification)
    lines += _closing_section(plots, timings, analysis)
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def _findings_section(prediction: Mapping[str, Any]) -> list[str]:
    findings = prediction.get("findings") or []
    if not findings:
        return []
    return ["## Findings", ""] + [f"- **{f}**" for f in findings] + [""]


def _backtest_section(prediction: Mapping[str, Any]) -> list[str]:
    backtest = prediction.get("backtest")
    if not backtest:
        return ["## Backtest", "", "Not run: too few runs besides the largest budget.", ""]
    lines = ["## Backtest", "",
             f"The {'curve law' if backtest['approach'] == 'curve' else 'approach-3 law'} refitted on "
             f"{backtest['fit_runs']} runs without the largest {backtest['held_out_by']}, predicting "
             f"its final losses: **ARE {backtest['are']:.2%}**." + _coverage(backtest), ""]
    lines += _table(("run", "N", "C (exact FLOPs)", "actual", "predicted", "interval", "error"), [
        (r["run"], f"{r['n_params']:,.0f}", f"{r['flops']:.3g}", number(r["actual"]),
         number(r["predicted"]), _span(r), f"{r['error']:+.2%}") for r in backtest["rows"]])
    return lines + [""]


def _span(row: Mapping[str, Any]) -> str:
    return f"[{number(row['lower'])}, {number(row['upper'])}]" if "lower" in row else "–"


def _coverage(backtest: Mapping[str, Any]) -> str:
    if backtest.get("coverage") is None:
        return ""
    inside = sum(bool(r["inside"]) for r in backtest["rows"])
    return (f" The interval the target's prediction would state (same bootstrap and level) covers "
            f"{inside} of {len(backtest['rows'])} ({backtest['coverage']:.0%}).")


def _headline(plan: LadderPlan, prediction: Mapping[str, Any],
              verification: Optional[Mapping[str, Any]]) -> list[str]:
    final = prediction["final_loss"]
    if verification is None:
        ending = "; not trained yet"
    else:
        ending = (f", actual {number(verification['actual_final_loss'])}: relative error "
                  f"{verification['relative_error']:+.2%}, {'inside' if verification['inside'] else 'outside'} "
                  "the interval")
    lines = [f"**Target at {plan.target_flops:.3g} FLOPs: predicted final loss "
             f"{number(final['estimate'])} [{number(final['low'])}, {number(final['high'])}] "
             f"({final['level']:.0%}){ending}.**", ""]
    lines += [f"{len(plan.rungs)} rungs over {len(plan.budgets)} budgets "
              f"({', '.join(f'{b:.3g}' for b in plan.budgets)} FLOPs; "
              f"{plan.rung_flops:.3g} in all), sizes "
              + (f"{plan.config.center_factor:g} × " if plan.config.center_factor != 1 else "")
              + f"the `{plan.config.law}` optimum × {plan.config.size_spread:g}^[-1, 1]; the target is "
              f"{plan.target_flops / max(plan.budgets):.3g}× the largest rung.", ""]
    return lines


def _rungs_section(plan: LadderPlan, summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["## Rungs", ""]
    rows = []
    for rung in plan.rungs:
        s = summaries.get(rung.name, {})
        rows.append((rung.name, f"{rung.budget:.3g}", f"{rung.plan.n_params:,}", f"{rung.plan.tokens:.3g}",
                     f"{rung.plan.tokens_per_param:.1f}", shape_label(rung.model),
                     f"{rung.plan.global_batch}×{rung.plan.steps}", f"{rung.plan.flops_error:+.2%}",
                     number(s.get("final_eval_loss")), f"{float(s.get('wall_time_s') or 0):.0f}"))
    lines += _table(("run", "C", "N", "D", "D/N", "shape", "batch×steps", "C error", "final loss",
                     "wall s"), rows)
    lines += ["", "FLOPs are the exact counter (`scaling/flops.py`); C error is the rung's spend "
              "against its budget."]
    if plan.notes:
        lines += ["", "Design notes:", ""] + [f"- {n}" for n in plan.notes]
    return lines


def _laws_section(plan: LadderPlan, analysis: LadderAnalysis,
                 prediction: Mapping[str, Any]) -> list[str]:
    law = analysis.law
    evals = ("Only each rung's final eval is fitted (Chinchilla's approach 3)"
             if plan.config.drop_early >= 1.0 else
             f"Evals before {plan.config.drop_early:.0%} of each rung's tokens are dropped "
             "(Hitchhiker's guide)")
    if analysis.loss_approach != 3 and plan.config.drop_before_step:
        evals += f", and the curve law drops evals before step {plan.config.drop_before_step}"
    lines = ["", "## Fitted laws", "", f"{evals}; approach 2 uses each rung's final loss.", ""]
    lines += ["Approach 3 law (the law file's coefficients):" if analysis.loss_approach == 3 else
              "Curve law (Tissue et al. 2024), as L(N, D) at the target's schedule, E less the "
              "target's annealing bonus C·S2 (`law_curve.json`'s coefficients):", ""]
    lines += _table(COEFFICIENTS, [tuple(number(getattr(law, k)) for k in COEFFICIENTS)])
    lines += [""]
    for approach, report in sorted(analysis.reports.items(), key=lambda item: str(item[0])):
        lines += _fit_section(approach, report, analysis.law_files[approach]) + [""]
    for approach, reason in sorted(analysis.skipped.items()):
        lines += [f"### Approach {approach}", "", f"Could not be fitted: {reason}", ""]
    agreement = prediction.get("agreement")
    if agreement:
        lines += [f"Approach 2 puts N_opt at the target at {number(agreement['n_opt_approach2'])}, "
                  f"approach 3 at {number(agreement['n_opt_approach3'])} (ratio "
                  f"{agreement['ratio']:.3g})."
                  + (f"  **They disagree by more than {DISAGREEMENT_FACTOR:g}×**: approach 3 "
                     "infers the optimum from the whole surface, mid-run evals included, while "
                     "approach 2 reads it off the annealed final losses; the target is sized by "
                     f"approach {prediction['sizing_approach']} (`ladder.target_sizing`)."
                     if agreement["disagree"] else ""), ""]
    if prediction.get("sizing_note"):
        lines += [f"Sizing: {prediction['sizing_note']}.", ""]
    return lines


def _prediction_section(prediction: Mapping[str, Any]) -> list[str]:
    final, target = prediction["final_loss"], prediction["target"]
    written = prediction.get("written_at_iso", "?")
    lines = ["## Prediction for the target", "",
              f"Written {written}, before the target's first step "
              "(`prediction.json`).", ""]
    rows = []
    for key, label in (("approach3", "approach 3"), ("approach2", "approach 2")):
        opt = prediction["optimum"].get(key)
        if opt is None:
            continue
        for quantity, what in (("n_opt", "N_opt"), ("tokens_opt", "D_opt")):
            item = opt.get(quantity) or {}
            span = f"{number(item['low'])} – {number(item['high'])}" if "low" in item else ""
            rows.append((f"{what} ({label})", number(item.get("estimate")), span))
    rows.append(("target N (exact, planned shape)", f"{target['n_params']:,}", ""))
    rows.append(("target D (tokens trained)", number(target["tokens"]), ""))
    rows.append(("target shape", target["shape"], ""))
    rows.append(("target batch × steps", f"{target['global_batch']} × {target['steps']}", ""))
    rows.append(("predicted final loss", number(final["estimate"]),
                 f"{number(final['low'])} – {number(final['high'])} ({final['level']:.0%}, {final['method']})"))
    lines += _table(("quantity", "estimate", "interval"), rows)
    reach = prediction.get("extrapolation")
    if reach:
        lines += ["", f"The target has {reach['n_ratio']:.3g}× the parameters of the largest rung and "
                  f"{reach['tokens_ratio']:.3g}× the tokens of the longest one "
                  f"({reach['compute_ratio']:.3g}× the largest rung's 6ND)."]
    return lines


def _sensitivity_section(plan: LadderPlan, prediction: Mapping[str, Any],
                         verification: Optional[Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    sensitivity = prediction.get("sensitivity") or []
    if sensitivity:
        actual = None if verification is None else verification["actual_final_loss"]
        lines += ["", "### How much the prediction depends on which evals are fitted", "",
                  f"Approach 3 refitted (no bootstrap) with each rung's evals before the given "
                  f"fraction of its tokens dropped; 'final' keeps only each rung's last eval.  The "
                  f"ladder's own setting is {plan.config.drop_early:g}.", ""]
        rows = []
        for row in sensitivity:
            label = "final" if row["drop_early"] >= 1.0 else f"{row['drop_early']:g}"
            if "error" in row:
                rows.append((label, "–", "–", "–", "–", row["error"]))
                continue
            error = "" if actual is None else f"{actual / row['target_loss'] - 1.0:+.2%}"
            rows.append((label, str(row["points"]), number(row["E"]),
                         f"{number(row['alpha'])} / {number(row['beta'])}",
                         number(row["target_loss"]), error))
        lines += _table(("drop early", "points", "E", "α / β", "target loss", "actual vs this"), rows)
    return lines


def _verification_section(plan: LadderPlan, prediction: Mapping[str, Any],
                           verification: Optional[Mapping[str, Any]]) -> list[str]:
    lines = ["", "## Verification", ""]
    if verification is None:
        lines += ["The target has not been trained yet."]
    else:
        are = verification.get("are_tail")
        lines += _table(("", "value"), [
            ("actual final eval loss", number(verification["actual_final_loss"])),
            ("predicted", number(verification["predicted_final_loss"])),
            ("relative error (actual / predicted − 1)", f"{verification['relative_error']:+.2%}"),
            ("inside the interval", "yes" if verification["inside"] else "no"),
            ("ARE over the last 30% of the target's evals",
             "–" if are is None else f"{are:.2%} ({verification['are_tail_points']} evals)"),
        ])
        lines += ["", "Mid-run evals of a cosine run have not annealed and sit above L(N, D_t), so "
                  "the tail ARE is pessimistic; the final loss is the like-for-like comparison."]
        lines += ["", f"### Fitted optimum against published allocations at {plan.target_flops:.3g} FLOPs",
                  "", f"Fitted N_opt (approach {prediction['sizing_approach']}): "
                  f"{number(verification['fitted_n_opt'])}.  Ratio = fitted / published.", ""]
        lines += _table(("law", "N_opt", "D_opt", "D/N", "ratio"), [
            (row["law"], number(row["n_opt"]), number(row["tokens_opt"]),
             f"{row['tokens_per_param']:.1f}", f"{row['ratio']:.3g}") for row in verification["published"]])
        lines += ["", "Published laws were fitted on web text with BPE tokens at 1e18-1e24 FLOPs; a "
                  "byte-level ladder's loss scale (E) differs, the allocation is what compares."]
    return lines


def _closing_section(plots: Mapping[str, Path], timings: Mapping[str, Any],
                     analysis: LadderAnalysis) -> list[str]:
    lines = ["", "## Plots", ""]
    lines += [f"![{label}]({PLOTS_DIR}/{path.name})" for label, path in plots.items()]
    lines += ["", "Budgets are labelled by the exact FLOPs each spent (`scaling/flops.py`), in the "
              "isoFLOP profiles and the loss curves alike; only the frontier plot, which draws the "
              "published laws, uses their convention C = 6ND (below the exact count for these "
              "small models: attention and vocabulary matmuls)."]
    lines += ["", "## Wall time", ""]
    lines += _table(("", "seconds"), [
        ("rungs (sum of run wall times)", f"{float(timings.get('rungs_s', 0)):.0f}"),
        ("target", f"{float(timings.get('target_s', 0)):.0f}"),
        ("fit (approaches, bootstrap)", f"{float(timings.get('fit_s', 0)):.0f}"),
        ("this invocation", f"{float(timings.get('this_invocation_s', 0)):.0f}"),
    ])
    lines += ["", f"Law files: " + ", ".join(f"`{law_file_name(a)}`" for a in sorted(analysis.law_files, key=str)) + "."]
    return lines
