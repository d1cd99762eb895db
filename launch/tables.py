"""Tables the fit and ladder commands print: a fit's coefficients and allocation with intervals."""

from __future__ import annotations

from rich.table import Table

from scaling.backtest import Backtest
from scaling.fit import LABEL_ORDER, FitReport

DESCRIPTIONS = {
    "E": "irreducible loss", "A": "model-size coefficient", "B": "data coefficient",
    "alpha": "model-size exponent α", "beta": "data exponent β", "gamma": "size-data coupling γ",
    "a": "N_opt ∝ C^a", "b": "D_opt ∝ C^b", "n_coef": "N_opt = n_coef·C^a",
    "d_coef": "D_opt = d_coef·C^b", "n_opt": "N_opt at target", "tokens_opt": "D_opt at target",
    "loss_opt": "loss at target",
}


def number(value: float) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def report_table(report: FitReport) -> Table:
    level = f"{report.bootstrap.confidence:.0%} interval" if report.bootstrap else "interval"
    title = (f"approach {report.approach}: {len(report.observations)} points, "
             f"{report.observations.n_runs} runs; target C* = {report.target_flops:.3g} FLOPs")
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("estimate", justify="right")
    table.add_column(level, justify="right")
    table.add_column("")
    fixed = report.config.fixed_values
    for name in LABEL_ORDER:
        if name not in report.estimates:
            continue
        interval = report.intervals.get(name)
        if name in fixed:
            span = "fixed"
        else:
            span = "" if interval is None else f"{number(interval.low)} – {number(interval.high)}"
        table.add_row(name, number(report.estimates[name]), span, DESCRIPTIONS.get(name, ""))
    return table


def backtest_table(backtest: Backtest) -> Table:
    coverage = "" if backtest.coverage is None else f"; interval coverage {backtest.coverage:.0%}"
    table = Table(title=f"backtest (approach {backtest.approach}): fitted on {backtest.fit_runs} runs, "
                  f"largest {backtest.held_out_by} left out; ARE {backtest.are:.2%}{coverage}")
    for column in ("run", "N", "C (exact FLOPs)", "actual", "predicted", "interval", "error"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in backtest.rows:
        span = f"{row['lower']:.4f} – {row['upper']:.4f}" if "lower" in row else "–"
        table.add_row(row["run"], f"{row['n_params']:,.0f}", f"{row['flops']:.3g}",
                      f"{row['actual']:.4f}", f"{row['predicted']:.4f}", span, f"{row['error']:+.2%}")
    return table
