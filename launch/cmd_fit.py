"""``chinchax fit INPUT...``: fit a scaling law to runs or a CSV and write the law file that
``chinchax allocate --law`` reads."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console

from chinchax.errors import ScalingError
from launch.tables import backtest_table, number, report_table
from scaling.backtest import Backtest, backtest_curve, backtest_parametric
from scaling.curve_law import read_curve_points
from scaling.lr_schedule import DEFAULT_LAMBDA
from scaling.findings import fit_findings
from scaling.fit import FitConfig, FitWarning, coarse_grid, evaluate, fit, fit_curve_report, write_law_file
from scaling.identity import common_identity, input_identities, run_dirs_of
from scaling.laws import ParametricLaw, get_law
from scaling.observations import load_observations

def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fit", help="fit a scaling law (approach 1, 2 or 3) to runs or a CSV",
        description="Fit L(N, D) (approach 3) or N_opt(C) power laws (approaches 1 and 2) to run "
        "directories of 'chinchax train', their parent directories, or CSV files with columns "
        "for N, D or C, and loss.  Intervals come from a bootstrap over runs.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="run directory, directory of runs, or CSV file")
    parser.add_argument("--approach", type=_approach, choices=(1, 2, 3, "curve"), default=3,
                        help="1: envelope, 2: isoFLOP parabolas, 3: parametric Huber fit (default), "
                        "curve: every eval of every run under its learning-rate schedule")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples over runs (0: no intervals; default 1000)")
    parser.add_argument("--drop-early", type=float, default=0.1, metavar="FRACTION",
                        help="drop each run's evals before this fraction of its tokens (default 0.1)")
    parser.add_argument("--drop-before-step", type=int, default=0, metavar="STEP",
                        help="drop every eval before this optimiser step (default 0: keep all)")
    parser.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                        help="drop the K highest-loss points (Epoch drops 5 of Chinchilla's)")
    parser.add_argument("--out", type=Path, metavar="LAW.json", help="write the law file here")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots into DIR")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--level", type=float, default=0.95, metavar="P",
                        help="interval level of the bootstrap, e.g. 0.9 (default 0.95)")
    parser.add_argument("--huber-delta", type=float, default=1e-3, help="Huber delta (default 1e-3)")
    parser.add_argument("--grid", choices=("full", "coarse"), default="full",
                        help="start grid of approach 3: Chinchilla's 4,500 points or 162")
    parser.add_argument("--target-flops", type=float, metavar="C",
                        help="budget whose allocation gets an interval (default: 10x the data's largest)")
    parser.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                        help="hold a coefficient fixed (E, A, B, alpha, beta, gamma); repeatable")
    parser.add_argument("--free-gamma", action="store_true",
                        help="fit gamma in B / (D^beta N^gamma) (continual pre-training form)")
    parser.add_argument("--cpt-base", metavar="LAW",
                        help="continual pre-training fit: E, A, alpha fixed from LAW, gamma free")
    parser.add_argument("--budget-tolerance", type=float, default=0.1, metavar="DECADES",
                        help="approach 2: runs within this many decades of FLOPs share a budget")
    parser.add_argument("--evaluate", action="store_true",
                        help="also report ARE on the last 30%% of the largest run, fitted on the rest")
    parser.add_argument("--backtest", nargs="?", const="budget", choices=("budget", "model"),
                        help="fit without the largest budget (or model), predict its runs' final "
                        "losses and report the ARE")
    parser.add_argument("--curve-lambda", type=float, default=DEFAULT_LAMBDA, metavar="LAMBDA",
                        help="approach curve: decay of the annealing momentum per step (Tissue et "
                        f"al. 2024; default {DEFAULT_LAMBDA}; runs of a few hundred steps fit better "
                        "with a shorter memory, e.g. 0.99)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="fit runs whose tokenizer, data, sequence length, compute counter, "
                        "family or initialisation differ")
    parser.add_argument("--name", help="name of the fitted law (default: from --out)")
    parser.set_defaults(func=run)


def _approach(text: str) -> int | str:
    return text if text == "curve" else int(text) if text.isdigit() else text


def _fixed(args: argparse.Namespace) -> dict[str, float]:
    fixed: dict[str, float] = {}
    if args.cpt_base:
        base = get_law(args.cpt_base)
        if not isinstance(base, ParametricLaw):
            raise ScalingError(f"--cpt-base {args.cpt_base} is not a parametric law",
                           hint="use an approach-3 law file or 'chinchilla' / 'epoch-2024'")
        fixed.update(E=base.E, A=base.A, alpha=base.alpha)
    for item in args.fix:
        name, _, value = item.partition("=")
        try:
            fixed[name.strip()] = float(value)
        except ValueError:
            raise ScalingError(f"--fix {item!r} is not NAME=VALUE", hint="e.g. --fix E=1.69") from None
    return fixed


def config_from_args(args: argparse.Namespace) -> FitConfig:
    return FitConfig(
        approach=args.approach, huber_delta=args.huber_delta,
        grid=coarse_grid() if args.grid == "coarse" else FitConfig().grid,
        fixed=_fixed(args), free_gamma=bool(args.free_gamma or args.cpt_base),
        bootstrap=args.bootstrap, seed=args.seed, confidence=args.level, target_flops=args.target_flops,
        budget_tolerance=args.budget_tolerance,
    )


def run(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise ScalingError(f"--bootstrap must be 0 or more, got {args.bootstrap}",
                       hint="use 0 to skip intervals, 1000 for the usual ones")
    console = Console()
    identity = common_identity(input_identities(args.inputs), allow_mixed=args.allow_mixed)
    config = config_from_args(args)
    name = args.name or (args.out.stem if args.out else None)
    points = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # printed below from the report instead
        if args.approach == "curve":
            points = read_curve_points(run_dirs_of(args.inputs), drop_early=args.drop_early,
                                       lam=args.curve_lambda, drop_before_step=args.drop_before_step)
            obs = points.obs
            report = fit_curve_report(points, config, name=name or "fit-curve")
        else:
            obs = load_observations(args.inputs, drop_early=args.drop_early,
                                    drop_before_step=args.drop_before_step)
            if args.drop_highest_loss:
                obs = obs.drop_highest_loss(args.drop_highest_loss)
            report = fit(obs, config, name=name)
        found = tuple(fit_findings(report.estimates, report.intervals, obs, config,
                                   report.target_flops)) if report.approach in (3, "curve") else ()
        report = dataclasses.replace(report, findings=found, identity=identity)
        evaluation = evaluate(obs, config) if args.evaluate else None
        backtest: Backtest | None = None
        if args.backtest:
            backtest = (backtest_curve(points, config, args.backtest) if points is not None
                        else backtest_parametric(obs, config, args.backtest))
    _print_report(console, report)
    settings: dict[str, Any] = {"inputs": [str(p) for p in args.inputs],
                                "drop_early": args.drop_early,
                                "drop_before_step": args.drop_before_step,
                                "drop_highest_loss": args.drop_highest_loss}
    if evaluation is not None:
        console.print(f"ARE on the last 30% of run {evaluation.target_run} "
                      f"({len(evaluation.heldout)} held-out points): {evaluation.are:.2%}")
        settings["evaluation"] = {"target_run": evaluation.target_run, "are": evaluation.are,
                                  "heldout_points": len(evaluation.heldout)}
    if backtest is not None:
        console.print(backtest_table(backtest))
        settings["backtest"] = backtest.to_dict()
    if args.out:
        path = write_law_file(report, args.out, settings)
        console.print(f"law written to {path} (use: chinchax allocate --law {path})", highlight=False)
    if args.plot:
        from scaling.plots import write_plots

        for path in write_plots(report, args.plot):
            console.print(f"plot: {path}", highlight=False)
    return 0


def _print_report(console: Console, report: Any) -> None:
    for finding in report.findings:
        console.print(f"[bold red]finding:[/bold red] {finding}", highlight=False)
    console.print(report_table(report))
    a, b = report.estimates["a"], report.estimates["b"]
    spans = {k: report.intervals.get(k) for k in ("a", "b")}
    console.print(
        f"compute-optimal: N_opt ∝ C^{number(a)}"
        + (f" [{number(spans['a'].low)}, {number(spans['a'].high)}]" if spans["a"] else "")
        + f", D_opt ∝ C^{number(b)}"
        + (f" [{number(spans['b'].low)}, {number(spans['b'].high)}]" if spans["b"] else ""))
    if report.identity:
        console.print("fitted on: " + ", ".join(f"{k} {v}" for k, v in report.identity.items()
                                                 if v != "unknown"), highlight=False)
    if report.bootstrap is not None:
        console.print(f"bootstrap: {report.bootstrap.n_resamples} resamples of "
                      f"{report.observations.n_runs} runs, {report.bootstrap.n_failed} failed")
    for note in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {note}", highlight=False)
