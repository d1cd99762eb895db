"""How fast is the approach-3 fit?  chinchax's batched L-BFGS against a plain scipy loop.

On Epoch's Chinchilla data: the 4,500-start fit and a 1,000-resample bootstrap, against
``scipy.optimize.minimize`` (L-BFGS-B) looped over the same starts, objective and weights.
    python benchmarks/fit_speed.py --quick    # 450 starts, 50 resamples"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy
from rich.console import Console
from rich.table import Table
from scipy.optimize import minimize

from scaling.fit import (
    FitConfig,
    StartGrid,
    bootstrap_parametric,
    default_target_flops,
    fit_parametric,
    point_weights,
    resample_runs,
)
from scaling.observations import Observations, read_csv

REPO = Path(__file__).resolve().parent.parent
EPOCH_CSV = REPO.parent / "shared" / "anchors" / "svg_extracted_data.csv"
RESULTS = REPO / "benchmarks" / "results" / "fit_speed.json"
GOALS = {"full_fit": 10.0, "bootstrap": 300.0}  # seconds, from the issue


def huber_objective(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float,
                    weights: np.ndarray) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """As a careful scipy user would write it."""
    norm = 1.0 / (delta * weights.sum())

    def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        e, a, b, alpha, beta = theta
        with np.errstate(all="ignore"):
            term_a = np.exp(a - alpha * log_n)
            term_b = np.exp(b - beta * log_d)
            big_e = np.exp(e)
            total = term_a + term_b + big_e
            r = np.log(total) - log_l
            clipped = np.clip(r, -delta, delta)
            value = float(np.sum(weights * clipped * (r - 0.5 * clipped)) * norm)
            coef = weights * clipped / total * norm
            ca, cb = coef * term_a, coef * term_b
            grad = np.array([big_e * coef.sum(), ca.sum(), cb.sum(), -(ca @ log_n), -(cb @ log_d)])
        if not np.isfinite(value) or not np.isfinite(grad).all():
            return np.inf, np.zeros(5)
        return value, grad

    return value_and_grad


def scipy_loop(obs: Observations, starts: np.ndarray, weights: np.ndarray, delta: float,
               share: float, options: dict[str, Any]) -> dict[str, Any]:
    """L-BFGS-B from each start, one problem at a time; ``weights`` has one row per problem."""
    log_n, log_d, log_l = np.log(obs.n_params), np.log(obs.tokens), np.log(obs.loss)
    count = starts.shape[0]
    picked = np.unique(np.linspace(0, count - 1, max(1, round(share * count))).astype(int))
    values = np.full(count, np.nan)
    solutions = np.full_like(starts, np.nan)
    with Timer() as timer:
        for i in picked:
            objective = huber_objective(log_n, log_d, log_l, delta, weights[i])
            result = minimize(objective, starts[i], jac=True, method="L-BFGS-B", options=options)
            values[i], solutions[i] = result.fun, result.x
    scale = count / picked.size
    return {"seconds_measured": timer.wall, "problems_measured": int(picked.size),
            "problems": int(count), "seconds": timer.wall * scale, "cpu_seconds": timer.cpu * scale,
            "extrapolated": bool(picked.size < count), "values": values, "solutions": solutions}


class Timer:
    """On a shared machine CPU time is the steadier figure, wall clock what a user waits for."""

    def __enter__(self) -> "Timer":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def coefficients(theta: np.ndarray) -> dict[str, float]:
    e, a, b, alpha, beta = theta[:5]
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
            "alpha": float(alpha), "beta": float(beta)}


def run(quick: bool, scipy_share: float, data: Path) -> dict[str, Any]:
    obs = read_csv(data).drop_highest_loss(5)
    grid = StartGrid()  # Chinchilla's 4,500 starts
    if quick:  # the same ranges, fewer values of e, a and b: 450 starts
        grid = StartGrid(e=[-1.0, 1.0], a=[0.0, 12.5, 25.0], b=[0.0, 12.5, 25.0])
    resamples = 50 if quick else 1000
    config = FitConfig(grid=grid, bootstrap=resamples)
    starts = config.grid.points(config.free_parameters)

    with Timer() as fit_time:
        fitted = fit_parametric(obs, config)
    # The full fit: scipy's default tolerances, the loop as commonly written (and as Epoch ran it).
    loop = scipy_loop(obs, starts, np.ones((starts.shape[0], len(obs))), config.huber_delta,
                      scipy_share, options={})
    best = int(np.nanargmin(loop["values"]))

    target = default_target_flops(obs)
    with Timer() as boot_time:
        boot = bootstrap_parametric(obs, fitted, config, target)
    restarts = fitted.restarts[: config.bootstrap_starts][:, :5]
    weights = point_weights(obs, resample_runs(obs.n_runs, resamples, config.seed))
    # Refits start next to their optimum, where the gradient is already below scipy's default
    # gtol (1e-5): with defaults scipy would return the start.  Both sides use fit's tolerances.
    tight = {"ftol": config.ftol, "gtol": config.gtol, "maxiter": config.max_iter}
    boot_loop = scipy_loop(obs, np.tile(restarts, (resamples, 1)),
                           np.repeat(weights, restarts.shape[0], axis=0), config.huber_delta,
                           scipy_share, options=tight)
    # Agreement check on the resamples whose restarts were all run by scipy too.
    per_resample = boot_loop["values"].reshape(resamples, -1)
    complete = np.flatnonzero(np.isfinite(per_resample).all(axis=1))
    solutions = boot_loop["solutions"].reshape(resamples, -1, 5)
    alpha_scipy = np.array([solutions[r, np.argmin(per_resample[r]), 3] for r in complete])
    alpha_gap = (float(np.max(np.abs(boot.column("alpha")[complete] - alpha_scipy)))
                 if complete.size and boot.n_failed == 0 else None)

    return {"machine": _machine(), "data": {"file": str(data), "points": len(obs), "dropped_highest_loss": 5},
            "full_fit": _full_fit_row(fitted, fit_time, loop, best, int(starts.shape[0])),
            "bootstrap": _bootstrap_row(boot, boot_time, boot_loop, tight, resamples,
                                        int(restarts.shape[0]), int(complete.size), alpha_gap),
            "quick": quick}


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "numpy": np.__version__, "scipy": scipy.__version__,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def _full_fit_row(fitted: Any, fit_time: Any, loop: dict[str, Any], best: int, starts: int) -> dict[str, Any]:
    return {
        "starts": starts, "chinchax_seconds": fit_time.wall,
        "chinchax_cpu_seconds": fit_time.cpu, "scipy_seconds": loop["seconds"],
        "scipy_cpu_seconds": loop["cpu_seconds"], "scipy_extrapolated": loop["extrapolated"],
        "scipy_problems_measured": loop["problems_measured"], "scipy_options": "defaults",
        "speedup": loop["seconds"] / fit_time.wall,
        "speedup_cpu": loop["cpu_seconds"] / fit_time.cpu, "goal_seconds": GOALS["full_fit"],
        "chinchax_objective": fitted.objective, "scipy_objective": float(loop["values"][best]),
        "chinchax_coefficients": {k: v for k, v in fitted.coefficients.items() if k != "gamma"},
        "scipy_coefficients": coefficients(loop["solutions"][best]),
    }


def _bootstrap_row(boot: Any, boot_time: Any, boot_loop: dict[str, Any], tight: dict[str, Any],
                   resamples: int, restarts: int, compared: int, alpha_gap: Any) -> dict[str, Any]:
    return {
        "resamples": resamples, "restarts_per_resample": restarts,
        "chinchax_seconds": boot_time.wall, "chinchax_cpu_seconds": boot_time.cpu,
        "scipy_seconds": boot_loop["seconds"], "scipy_cpu_seconds": boot_loop["cpu_seconds"],
        "scipy_extrapolated": boot_loop["extrapolated"],
        "scipy_problems_measured": boot_loop["problems_measured"], "scipy_options": tight,
        "speedup": boot_loop["seconds"] / boot_time.wall,
        "speedup_cpu": boot_loop["cpu_seconds"] / boot_time.cpu, "goal_seconds": GOALS["bootstrap"],
        "failed_resamples": boot.n_failed,
        "resamples_compared": compared,
        "max_alpha_difference_vs_scipy": alpha_gap,
        "intervals_95": {n: [float(v) for v in np.percentile(boot.column(n), [2.5, 97.5])]
                         for n in ("E", "A", "B", "alpha", "beta", "a", "b")},
    }


def show(report: dict[str, Any]) -> None:
    table = Table(title=f"approach-3 fit speed on {report['data']['points']} Epoch points "
                        f"({report['machine']['cpus']} CPUs)")
    for column in ("task", "chinchax", "scipy loop", "speed-up (wall / CPU)", "goal", "met"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for key, label in (("full_fit", f"{report['full_fit']['starts']}-start fit"),
                       ("bootstrap", f"{report['bootstrap']['resamples']}-resample bootstrap")):
        row = report[key]
        scipy_text = f"{row['scipy_seconds']:.1f} s" + (" (scaled)" if row["scipy_extrapolated"] else "")
        ours = f"{row['chinchax_seconds']:.2f} s (CPU {row['chinchax_cpu_seconds']:.2f} s)"
        table.add_row(label, ours, scipy_text,
                      f"{row['speedup']:.0f}x / {row['speedup_cpu']:.0f}x", f"< {row['goal_seconds']:.0f} s",
                      "yes" if row["chinchax_seconds"] < row["goal_seconds"] else "no")
    Console().print(table)
    ours, theirs = report["full_fit"]["chinchax_coefficients"], report["full_fit"]["scipy_coefficients"]
    Console().print("best fit  chinchax: " + ", ".join(f"{k}={v:.4g}" for k, v in ours.items())
                    + f"  (objective {report['full_fit']['chinchax_objective']:.12g})")
    Console().print("best fit  scipy:    " + ", ".join(f"{k}={v:.4g}" for k, v in theirs.items())
                    + f"  (objective {report['full_fit']['scipy_objective']:.12g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="450 starts and 50 resamples")
    parser.add_argument("--scipy-share", type=float, default=1.0,
                        help="time the scipy loops on this evenly spaced share of their problems "
                        "and scale up (default 1: all of them)")
    parser.add_argument("--data", type=Path, default=EPOCH_CSV, help="Epoch's svg_extracted_data.csv")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not 0.0 < args.scipy_share <= 1.0:
        parser.error("--scipy-share must lie in (0, 1]")
    report = run(args.quick, args.scipy_share, args.data)
    show(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    Console().print(f"written to {args.out}", highlight=False)


if __name__ == "__main__":
    main()
