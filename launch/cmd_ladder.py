"""``chinchax ladder CONFIG``: design an isoFLOP ladder, run it, fit it, predict the target, check.

A ladder YAML is an ordinary experiment plus a ``ladder:`` section
(:class:`scaling.ladder.LadderConfig`); overrides address either (``ladder.bootstrap=100``).
One invocation resumes whatever an earlier one left: **design** (``plan.json`` and
``experiments/<rung>.yaml``; ``--dry-run`` stops here), **run** the rungs not yet complete
(:mod:`launch.ladder_runner`), **fit** (``law.json``, ``law_approach2.json``), **predict** the
target (``prediction.json``, never rewritten once the target has started), **train** and
**verify** it (``verification.json``), and **report** (``report.md`` and plots).

Across machines: each rung is an independent ``chinchax train LADDER_DIR/experiments/<rung>.yaml``,
so rungs can run on several VMs sharing a bucket (``ladder.rungs_dir: gs://...``); a later
``chinchax ladder CONFIG`` finds the finished rungs there, skips them, fits and predicts
(``ladder.train_target: false`` stops after the prediction).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import yaml
from etils import epath
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from chinchax.errors import ChinchaxError, ConfigError, ScalingError
from launch.args import add_config_arguments, configure_logging
from launch.ladder_runner import Runner, local_copy, run_state
from launch.tables import backtest_table, report_table
from scaling.allocate import BudgetConfig, RunPlan
from scaling.backtest import Backtest
from scaling.fit import FitWarning
from scaling.ladder import (CPU_GUESS_FLOPS_PER_SECOND, PLAN_FILE, PREDICTION_FILE, VERIFICATION_FILE,
                            LadderAnalysis, LadderConfig, LadderPlan, WallTimeModel, analyse_ladder,
                            design_ladder, estimate_seconds, load_prediction, measured_wall_time_model,
                            predict_target, shape_label, verify_target)
from scaling.ladder_backtest import backtest_stop
from scaling.rundir import config_differences, dumps, read_yaml as read_run_yaml

if TYPE_CHECKING:
    from launch.config import ExperimentConfig

log = logging.getLogger("chinchax.ladder")

EXPERIMENTS_DIR = "experiments"
TARGET_NAME = "target"
TARGET_STARTED_FILE = "target_started.json"
TIMINGS_FILE = "timings.json"


# ===================================================================================== CLI
def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ladder",
        help="design, run, fit and verify an isoFLOP scaling ladder",
        description="Run a scaling ladder: isoFLOP rungs planned around a law's optimum, fitted "
        "with approaches 2 and 3, a prediction of a 10x larger target run written before it "
        "starts, the target trained and checked, and a report. Re-running resumes.")
    add_config_arguments(parser, config_help="ladder YAML, e.g. configs/ladder_cpu.yaml",
                         overrides_help="dotted overrides, e.g. ladder.bootstrap=100 train.eval_every=25")
    parser.add_argument("--ladder-dir", help="ladder directory (default: runs/<name>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and write plan.json and the rung experiments; train nothing")
    parser.add_argument("--jobs", type=int, default=1, metavar="K",
                        help="rungs trained at once, as subprocesses on disjoint GPU subsets (default 1)")
    parser.add_argument("--subprocess", action="store_true",
                        help="train each run as a 'chinchax train' subprocess (implied by --jobs > 1)")
    parser.add_argument("--data-parallel", type=int, metavar="N",
                        help="devices each run's batch is split over, for planning (default: the "
                        "mesh section's explicit sizes, as 'chinchax train' plans)")
    parser.add_argument("--flops-per-second", type=float, metavar="R",
                        help="achieved training FLOP/s for the wall-time estimates")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging()
    overrides = list(args.overrides)
    if args.flops_per_second is not None:
        overrides.append(f"ladder.flops_per_second={args.flops_per_second}")
    setup = load_ladder(args.config, overrides, ladder_dir=args.ladder_dir,
                        data_parallel=args.data_parallel)
    run_ladder(setup, dry_run=args.dry_run, jobs=args.jobs, use_subprocess=args.subprocess)
    return 0


# ===================================================================================== set-up
@dataclass(frozen=True)
class LadderSetup:
    """A ladder YAML read and validated, with every directory decided."""

    name: str
    experiment: ExperimentConfig
    ladder: LadderConfig
    budget_template: BudgetConfig
    ladder_dir: Path
    rungs_dir: str
    target_dir: str
    data_parallel: int
    source: str = ""

    def rung_dir(self, name: str) -> epath.Path:
        return epath.Path(self.rungs_dir) / name


def load_ladder_config(section: Mapping[str, Any], overrides: Sequence[str] = ()) -> LadderConfig:
    """The ``ladder:`` section (plus ``key=value`` overrides without the ``ladder.`` prefix)."""
    schema = OmegaConf.structured(LadderConfig)
    OmegaConf.set_readonly(schema, False)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(dict(section)))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ChinchaxError as exc:
        raise ConfigError(str(exc), hint=exc.hint) from None
    except OmegaConfBaseException as exc:
        from launch.config import config_error

        error = config_error(exc)
        raise ConfigError(f"ladder.{error}", hint=error.hint) from None


def load_ladder(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), *,
                ladder_dir: str | Path | None = None, data_parallel: Optional[int] = None) -> LadderSetup:
    """Read a ladder YAML (or dict) with overrides into a :class:`LadderSetup`."""
    from launch.config import data_parallel_size, load_experiment, read_yaml
    from training.data import vocab_size  # the tokenizer decides the vocabulary

    data = dict(source) if isinstance(source, Mapping) else read_yaml(Path(source))
    section = data.pop("ladder", None) or {}
    if not isinstance(section, Mapping):
        raise ConfigError("the ladder: section must be a mapping",
                          hint="e.g. ladder: {budgets: [1.0e11, 3.0e11], sizes_per_budget: 5}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value",
                              hint="write dotted keys, e.g. ladder.bootstrap=100 train.eval_every=25")
    ladder = load_ladder_config(section, [o[len("ladder."):] for o in overrides if o.startswith("ladder.")])
    exp = load_experiment(data, [o for o in overrides if not o.startswith("ladder.")])
    if exp.budget is None:
        raise ConfigError("a ladder config needs a budget: section (the rungs' shape constraints)",
                          hint="add e.g. budget: {multiple_of: 32, head_dims: [32, 64], min_aspect: 16}")
    root = Path(ladder_dir or exp.run_dir or Path("runs") / exp.name)
    template = dataclasses.replace(exp.budget, seq_len=exp.train.seq_len, vocab_size=vocab_size(exp.data))
    if exp.train.global_batch is not None and template.global_batch is None:
        template = dataclasses.replace(template, global_batch=exp.train.global_batch)
    # Devices a batch is split over, as ``chinchax train`` plans: explicit mesh sizes only.
    dp = data_parallel_size(exp.mesh) * exp.train.grad_accum_steps if data_parallel is None else data_parallel
    if dp < 1:
        raise ConfigError(f"--data-parallel must be positive, got {dp}", hint="e.g. --data-parallel 8")
    return LadderSetup(name=exp.name, experiment=exp, ladder=ladder, budget_template=template,
                       ladder_dir=root, rungs_dir=ladder.rungs_dir or str(root / "rungs"),
                       target_dir=ladder.target_dir or str(root / TARGET_NAME), data_parallel=dp,
                       source=str(source) if not isinstance(source, Mapping) else "")


# ============================================================================== experiments
def rung_experiment(setup: LadderSetup, name: str, plan: RunPlan, run_dir: str, seed: int, *,
                    prediction_law: Optional[str] = None) -> ExperimentConfig:
    """An ordinary experiment that trains ``plan``: explicit shape, steps, batch and rate.

    Rungs carry no loss prediction (the design law is only a centre for the sweep, and
    off-optimum rungs would be flagged for nothing); the target carries the fitted law's.
    """
    exp = setup.experiment
    prediction = dataclasses.replace(exp.prediction, enabled=False, law=None)
    if prediction_law is not None:
        prediction = dataclasses.replace(exp.prediction, enabled=True, law=prediction_law,
                                         level=setup.ladder.level)
    eval_every, eval_batches = setup.ladder.eval_cadence(plan.steps, plan.global_batch,
                                                         exp.train.eval_every, exp.train.eval_batches)
    return dataclasses.replace(
        exp, name=name, run_dir=run_dir, seed=seed, model=plan.model, budget=None,
        train=dataclasses.replace(exp.train, steps=plan.steps, global_batch=plan.global_batch,
                                  eval_every=eval_every, eval_batches=eval_batches,
                                  stop_after_steps=None),
        optim=dataclasses.replace(exp.optim, learning_rate=plan.learning_rate),
        prediction=prediction)


def _write_experiment(setup: LadderSetup, name: str, exp: ExperimentConfig, started: bool) -> Path:
    """Write ``experiments/<name>.yaml``; refuse to change the experiment of a started run."""
    path = setup.ladder_dir / EXPERIMENTS_DIR / f"{name}.yaml"
    text = yaml.safe_dump(dataclasses.asdict(exp), sort_keys=False)
    if path.is_file() and path.read_text() != text and started:
        differing = config_differences(read_run_yaml(path) or {}, dataclasses.asdict(exp))
        if differing:  # cadences, logging and the like may change (as for 'chinchax train')
            raise ScalingError(
                f"run {name} was started with a different experiment than this ladder config now "
                f"gives ({path} differs in {', '.join(differing[:5])})",
                hint=f"restore the config, or delete {exp.run_dir} (and {path}) to train it afresh")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


# ================================================================================ the ladder
@dataclass
class LadderOutcome:
    """What :func:`run_ladder` did and where it wrote it."""

    plan: LadderPlan
    ladder_dir: Path
    statuses: dict[str, str] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    analysis: Optional[LadderAnalysis] = None
    prediction: Optional[dict[str, Any]] = None
    verification: Optional[dict[str, Any]] = None
    report: Optional[Path] = None
    stopped: str = ""


def wall_time_model(setup: LadderSetup, summaries: Sequence[Mapping[str, Any]]) -> WallTimeModel:
    cfg = setup.ladder
    if cfg.flops_per_second is not None:
        return WallTimeModel(cfg.flops_per_second, cfg.run_overhead_s, "configured")
    measured = measured_wall_time_model(summaries, cfg.run_overhead_s)
    if measured is not None:
        return measured
    return WallTimeModel(CPU_GUESS_FLOPS_PER_SECOND, cfg.run_overhead_s, "a guess for a small CPU")


def plan_table(setup: LadderSetup, plan: LadderPlan, statuses: Mapping[str, str],
               timing: WallTimeModel) -> Table:
    train = setup.experiment.train
    table = Table(title=f"ladder {setup.name}: {len(plan.rungs)} rungs over {len(plan.budgets)} "
                  f"budgets, target {plan.target_flops:.3g} FLOPs "
                  f"(wall time at {timing.flops_per_second:.3g} FLOP/s, {timing.source})")
    for column, justify in (("run", "left"), ("budget C", "right"), ("N", "right"),
                            ("D (tokens)", "right"), ("D/N", "right"), ("shape", "left"),
                            ("batch×steps", "right"), ("lr", "right"), ("C error", "right"),
                            ("est. time", "right"), ("status", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]

    def row(name: str, budget: float, p: RunPlan, status: str) -> None:
        eval_every, eval_batches = setup.ladder.eval_cadence(p.steps, p.global_batch, train.eval_every,
                                                             train.eval_batches)
        seconds = estimate_seconds(p, timing, eval_every=eval_every, eval_batches=eval_batches)
        table.add_row(name, f"{budget:.3g}", f"{p.n_params:,}", f"{p.tokens:.3g}",
                      f"{p.tokens_per_param:.1f}", shape_label(p.model),
                      f"{p.global_batch}×{p.steps}", f"{p.learning_rate:.2g}",
                      f"{p.flops_error:+.2%}", _duration(seconds), status)

    for rung in plan.rungs:
        row(rung.name, rung.budget, rung.plan, statuses.get(rung.name, "new"))
    row("target*", plan.target_flops, plan.provisional_target, statuses.get(TARGET_NAME, "new"))
    table.caption = "* the target as the design law sizes it; the fitted law re-sizes it before it runs"
    return table


def _console() -> Console:
    """A console wide enough for the plan table even when the output is a file or a pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 180))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(data, indent=1) + "\n")


def run_ladder(setup: LadderSetup, *, dry_run: bool = False, jobs: int = 1,
               use_subprocess: bool = False, console: Optional[Console] = None,
               on_rung_done: Optional[Callable[[str], None]] = None) -> LadderOutcome:
    """Design, run, fit, predict, train the target, verify and report (resuming any of it).

    ``on_rung_done(name)`` is called after each rung finishes training in this invocation
    (progress hooks; raising from it stops the ladder, which the next invocation resumes).
    """
    console = console or _console()
    started = time.perf_counter()
    outcome, summaries, experiments = _design(setup, console)
    if dry_run:
        return outcome

    def done(name: str) -> None:
        outcome.statuses[name] = "complete"
        outcome.trained.append(name)
        if on_rung_done is not None:
            on_rung_done(name)

    if experiments:
        how = f"subprocesses, {jobs} at a time" if use_subprocess or jobs > 1 else "in this process"
        console.print(f"training {len(experiments)} rung(s) ({how})")
    runner = Runner(setup.ladder_dir, jobs=jobs, use_subprocess=use_subprocess)
    runner.train(experiments, done)
    fit_started = time.perf_counter()
    run_dirs = _finished_rungs(setup, outcome.plan, summaries)
    outcome.analysis = _fit(setup, outcome.plan, run_dirs, console)
    fit_seconds = time.perf_counter() - fit_started
    outcome.prediction = _predict(setup, outcome.analysis, console)
    target_status = _train_target(setup, outcome, runner, console)
    target_summary = run_state(setup.target_dir)[1] if target_status == "complete" else None
    timings = {
        "this_invocation_s": time.perf_counter() - started, "fit_s": fit_seconds,
        "rungs_s": sum(float(s.get("wall_time_s") or 0.0) for s in summaries.values()),
        "target_s": float((target_summary or {}).get("wall_time_s") or 0.0),
        "trained_now": list(outcome.trained),
    }
    _write_json(setup.ladder_dir / TIMINGS_FILE, timings)
    from scaling.ladder_report import write_report  # matplotlib only when reporting

    outcome.report = write_report(
        setup.ladder_dir, outcome.plan, outcome.analysis, outcome.prediction, outcome.verification,
        rung_dirs={rung.name: path for rung, path in zip(outcome.plan.rungs, run_dirs)},
        target_dir=local_copy(setup.ladder_dir, setup.target_dir, TARGET_NAME)
        if target_status == "complete" else None,
        summaries=summaries, timings=timings, name=setup.name)
    console.print(f"report: {outcome.report}", highlight=False)
    return outcome


def _design(setup: LadderSetup, console: Console
            ) -> tuple[LadderOutcome, dict[str, dict[str, Any]], list[tuple[str, Path]]]:
    """Plan the rungs, write plan.json and their experiments, and print the plan; returns the
    outcome so far, the finished rungs' summaries and the experiments still to train."""
    plan = design_ladder(setup.ladder, setup.budget_template, setup.data_parallel,
                         setup.experiment.model)
    setup.ladder_dir.mkdir(parents=True, exist_ok=True)
    _write_json(setup.ladder_dir / PLAN_FILE, {"name": setup.name, "config_file": setup.source,
                                               "rungs_dir": setup.rungs_dir,
                                               "target_dir": setup.target_dir, **plan.to_dict()})
    outcome = LadderOutcome(plan=plan, ladder_dir=setup.ladder_dir)
    summaries: dict[str, dict[str, Any]] = {}
    experiments: list[tuple[str, Path]] = []
    for rung in plan.rungs:
        status, summary = run_state(setup.rung_dir(rung.name))
        outcome.statuses[rung.name] = status
        if summary is not None and status == "complete":
            summaries[rung.name] = summary
        exp = rung_experiment(setup, rung.name, rung.plan, str(setup.rung_dir(rung.name)), rung.seed)
        path = _write_experiment(setup, rung.name, exp, started=status != "new")
        if status != "complete":
            experiments.append((rung.name, path))
    outcome.statuses[TARGET_NAME] = run_state(setup.target_dir)[0]
    timing = wall_time_model(setup, list(summaries.values()))
    console.print(plan_table(setup, plan, outcome.statuses, timing))
    for note in plan.notes:
        console.print(f"[dim]note: {note}[/dim]", highlight=False)
    console.print(f"plan: {setup.ladder_dir / PLAN_FILE}; experiments: "
                  f"{setup.ladder_dir / EXPERIMENTS_DIR}/<run>.yaml", highlight=False)
    return outcome, summaries, experiments


def _finished_rungs(setup: LadderSetup, plan: LadderPlan,
                    summaries: dict[str, dict[str, Any]]) -> list[Path]:
    """Every rung's local run directory (mirrored when remote); all must be complete."""
    run_dirs = []
    for rung in plan.rungs:
        status, summary = run_state(setup.rung_dir(rung.name))
        if status != "complete":
            raise ScalingError(f"rung {rung.name} is not complete ({status})",
                               hint="run the ladder again to resume it")
        summaries[rung.name] = summary or {}
        run_dirs.append(local_copy(setup.ladder_dir, str(setup.rung_dir(rung.name)), rung.name))
    return run_dirs


def _fit(setup: LadderSetup, plan: LadderPlan, run_dirs: Sequence[Path],
         console: Console) -> LadderAnalysis:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitWarning)  # shown from the reports below
        analysis = analyse_ladder(setup.ladder_dir, plan, setup.budget_template, run_dirs=run_dirs,
                                  data_parallel=setup.data_parallel,
                                  base_model=setup.experiment.model, name=setup.name,
                                  optim=dataclasses.asdict(setup.experiment.optim))
    _print_fits(console, analysis)
    return analysis


def _predict(setup: LadderSetup, analysis: LadderAnalysis, console: Console) -> dict[str, Any]:
    """Write prediction.json before the target starts; once it has, read it back unchanged."""
    target_status, _ = run_state(setup.target_dir)
    prediction_path = setup.ladder_dir / PREDICTION_FILE
    if target_status == "new" or not prediction_path.is_file():
        if target_status != "new":
            raise ScalingError(f"the target run {setup.target_dir} has started but "
                               f"{prediction_path} is missing",
                               hint="a prediction is only worth something made before the run; "
                               "delete the target run directory to predict and train it again")
        prediction = predict_target(analysis, **_prediction_settings(setup, analysis.target))
        _write_json(prediction_path, prediction)
    else:
        prediction = load_prediction(prediction_path)
    _print_prediction(console, prediction, analysis.target_flops, prediction_path)
    return prediction


def _train_target(setup: LadderSetup, outcome: LadderOutcome, runner: Runner,
                  console: Console) -> str:
    """Train the target (unless ``ladder.train_target`` is false) and verify it when complete."""
    analysis, prediction = outcome.analysis, outcome.prediction
    assert analysis is not None and prediction is not None
    target_status, _ = run_state(setup.target_dir)
    target_exp = rung_experiment(setup, f"{setup.name}-target", analysis.target, setup.target_dir,
                                 setup.ladder.seeds[0],
                                 prediction_law=str(Path(analysis.law_file).resolve()))
    target_path = _write_experiment(setup, TARGET_NAME, target_exp, started=target_status != "new")
    stop = backtest_stop(setup.ladder, prediction)
    if stop and target_status == "new":
        console.print(f"[bold red]stopped before the target:[/bold red] {stop}", highlight=False)
        outcome.stopped = stop
    elif target_status != "complete" and setup.ladder.train_target:
        started_file = setup.ladder_dir / TARGET_STARTED_FILE
        if not started_file.is_file():
            _write_json(started_file, {"started_at": time.time(), "prediction_written_at":
                                       prediction["written_at"]})
        runner.train([(TARGET_NAME, target_path)], lambda name: None)
        outcome.trained.append(TARGET_NAME)
        target_status = "complete"
    outcome.statuses[TARGET_NAME] = target_status
    if target_status == "complete":
        local_target = local_copy(setup.ladder_dir, setup.target_dir, TARGET_NAME)
        outcome.verification = verify_target(prediction, local_target)
        _write_json(setup.ladder_dir / VERIFICATION_FILE, outcome.verification)
        _print_verification(console, outcome.verification)
    elif not stop:
        console.print(f"target not trained (ladder.train_target=false): run "
                      f"'chinchax train {target_path}', then this command again to verify",
                      highlight=False)
    return target_status


def _prediction_settings(setup: LadderSetup, target: RunPlan) -> dict[str, Any]:
    """What :func:`predict_target` needs to predict exactly what the target's trainer will."""
    exp = setup.experiment
    interval = dict(exp.prediction.interval_kwargs(), level=setup.ladder.level)
    eval_every, _ = setup.ladder.eval_cadence(target.steps, target.global_batch, exp.train.eval_every,
                                              exp.train.eval_batches)
    return dict(eval_every=eval_every, schedule=exp.optim.schedule,
                decay_fraction=exp.optim.decay_fraction, wsd_decay_shape=exp.optim.wsd_decay_shape,
                interval=interval)


def _print_fits(console: Console, analysis: LadderAnalysis) -> None:
    for approach, report in sorted(analysis.reports.items(), key=lambda item: str(item[0])):
        console.print(report_table(report))
        for note in report.warnings:
            console.print(f"[yellow]warning:[/yellow] approach {approach}: {note}", highlight=False)
        console.print(f"law: {analysis.law_files[approach]}", highlight=False)
    for approach, reason in sorted(analysis.skipped.items()):
        console.print(f"[yellow]approach {approach} could not be fitted:[/yellow] {reason}", highlight=False)


def _print_prediction(console: Console, prediction: Mapping[str, Any], target_flops: float,
                      path: Path) -> None:
    for finding in prediction.get("findings") or []:
        console.print(f"[bold red]finding:[/bold red] {finding}", highlight=False)
    backtest = prediction.get("backtest")
    if backtest:
        console.print(backtest_table(Backtest.from_dict(backtest)))
    if prediction.get("sizing_note"):
        console.print(f"[yellow]warning:[/yellow] {prediction['sizing_note']}", highlight=False)
    final, target = prediction["final_loss"], prediction["target"]
    console.print(
        f"prediction for the target ({target_flops:.3g} FLOPs, {target['shape']}, "
        f"N={target['n_params']:,}, D={target['tokens']:.3g}): final loss "
        f"{final['estimate']:.4f} [{final['low']:.4f}, {final['high']:.4f}] "
        f"({final['level']:.0%}, {final['method']}); written {prediction['written_at_iso']} -> "
        f"{path}", highlight=False)


def _print_verification(console: Console, verification: Mapping[str, Any]) -> None:
    low, high = verification["interval"]
    inside = "inside" if verification["inside"] else "OUTSIDE"
    console.print(
        f"target: actual final loss {verification['actual_final_loss']:.4f}, predicted "
        f"{verification['predicted_final_loss']:.4f} [{low:.4f}, {high:.4f}]: relative error "
        f"{verification['relative_error']:+.2%}, {inside} the interval", highlight=False)
