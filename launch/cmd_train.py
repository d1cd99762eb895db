"""``chinchax train CONFIG [key=value ...]``: resolve an experiment and run (or resume) it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from chinchax.errors import CheckpointError, ConfigError
from launch.args import add_config_arguments, configure_logging
from scaling.rundir import CONFIG_NAME
from training.preemption import PreemptionGuard


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train (or resume) a run from a YAML experiment",
        description="Train a model from a YAML experiment. A budget: section lets the allocator "
        "choose shape, batch and steps. Re-running with the same run directory resumes.",
    )
    add_config_arguments(parser, config_help="experiment YAML (e.g. configs/cpu_tiny.yaml), or a run "
                         "directory to resume with its own resolved config.yaml")
    parser.add_argument("--run-dir", help="run directory (default: runs/<name>); may be gs://...")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit without training")
    parser.add_argument("--force", action="store_true",
                        help="continue a run directory whose run was started with other settings")
    parser.set_defaults(func=run)


class _NoTraceback(logging.Filter):
    """orbax reports a failed background save with a traceback; ours names it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def _closed_loop(error: Optional[BaseException]) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


class _NoOrphanedReads(logging.Filter):
    """orbax reads a step's arrays concurrently; when a damaged step fails, the restore raises the
    first error (and falls back), and asyncio prints its siblings' errors whenever their tasks are
    collected.  Those go to the debug log, not the user's screen."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Task exception was never retrieved"):
            return True
        logging.getLogger("chinchax.checkpoint").debug("%s", record.getMessage(), exc_info=record.exc_info)
        return False


# One instance each: addFilter skips a filter already attached, so repeated runs in one process
# do not stack them.
_NO_TRACEBACK, _NO_ORPHANED_READS = _NoTraceback(), _NoOrphanedReads()


def _quiet_closed_loops() -> None:
    """A save abandoned or restored past leaves checkpoint I/O callbacks that find orbax's event
    loop closed, and reads whose errors nobody retrieves; they are noise after the one-line report,
    so they print nothing."""
    excepthook, thread_hook, unraisable = sys.excepthook, threading.excepthook, sys.unraisablehook
    sys.excepthook = lambda t, e, tb: None if _closed_loop(e) else excepthook(t, e, tb)
    threading.excepthook = lambda a: None if _closed_loop(a.exc_value) else thread_hook(a)
    sys.unraisablehook = lambda u: None if _closed_loop(u.exc_value) else unraisable(u)
    logging.getLogger("asyncio").addFilter(_NO_ORPHANED_READS)


def run(args: argparse.Namespace) -> int:
    configure_logging()
    logging.getLogger("absl").addFilter(_NO_TRACEBACK)
    _quiet_closed_loops()
    try:
        return _run(args)
    except CheckpointError as error:
        if not getattr(error, "abandoned", False):
            raise
        # a save thread may never return: report as the CLI does, then leave without joining it
        print(f"chinchax train: error: {error}\n  hint: {error.hint}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)


def _run(args: argparse.Namespace) -> int:
    from launch.config import data_parallel_size, load_experiment, resolve, run_config_to_yaml

    with PreemptionGuard() as guard:  # before start-up: a SIGTERM from here on is a clean stop
        overrides = list(args.overrides)
        if args.run_dir:
            overrides.append(f"run_dir={args.run_dir}")
        if Path(args.config).is_dir():  # a run directory: resume it exactly as it was resolved
            return _resume_run_dir(Path(args.config), overrides, args.force, guard)
        experiment = load_experiment(args.config, overrides)
        if args.print_config:
            print(run_config_to_yaml(resolve(experiment)), end="")
            return 0

        from launch.runtime_env import apply_runtime

        apply_runtime(experiment.runtime)  # XLA flags and memory share, before JAX starts
        import jax  # JAX is imported only when training

        from launch.distributed import initialize_distributed
        from launch.memory import check_memory

        initialize_distributed(experiment.distributed)  # before any JAX computation; says where
        run_cfg = resolve(experiment, data_parallel=data_parallel_size(experiment.mesh, jax.device_count()))
        check_memory(run_cfg)  # one line before compile, not RESOURCE_EXHAUSTED after it
        return _report(train_with_law_watch(run_cfg, force=args.force, guard=guard))


def train_with_law_watch(run_cfg: Any, *, force: bool = False,
                         guard: Optional[PreemptionGuard] = None) -> dict:
    """Train with the law watch: prediction.json before step 1, drift alerts after."""
    import jax

    from launch.law_watch import law_watch_hooks
    from training.trainer import train

    hooks = law_watch_hooks(run_cfg, write=jax.process_index() == 0)
    return train(run_cfg, hooks=hooks, force=force, guard=guard)


def _report(summary: dict) -> int:
    keys = ("run_name", "status", "steps", "n_params", "tokens", "flops", "final_eval_loss",
            "tokens_per_s", "mfu", "wall_time_s")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=1))
    if summary["status"] != "complete":
        print(f"run {summary['status']} at step {summary['steps']}; checkpoint saved. "
              "Run the same command again to resume.", file=sys.stderr)
    return 0


def _resume_run_dir(run_dir: Path, overrides: list[str], force: bool,
                    guard: PreemptionGuard) -> int:
    """Resume RUN_DIR itself (not the run_dir recorded inside), to the end of its schedule."""
    config = run_dir / CONFIG_NAME
    if not config.is_file():
        raise ConfigError(f"{run_dir} is a directory without a {CONFIG_NAME}",
                          hint="pass an experiment YAML, or the directory of a run chinchax wrote")
    if overrides:
        raise ConfigError("a run directory resumes with its own resolved config; overrides are not applied",
                          hint="edit the experiment YAML and start a new run directory instead")
    from launch.config import load_run_config
    from launch.distributed import initialize_distributed

    initialize_distributed()
    run_cfg = load_run_config(config)
    run_cfg = dataclasses.replace(run_cfg, run_dir=str(run_dir),
                                  train=dataclasses.replace(run_cfg.train, stop_after_steps=None))
    return _report(train_with_law_watch(run_cfg, force=force, guard=guard))
