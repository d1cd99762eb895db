"""Start-up: one writer (the lock), then restore or init.  A run directory is one run: a rerun
whose settings differ from ``config.started.yaml`` is refused unless forced, and a resume drops
records past the restored step, so no step is written twice."""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

import jax
import yaml
from etils import epath

from chinchax.errors import ChinchaxError, TrainingError
from models.sharding import batch_sharding, make_mesh
from scaling.rundir import (CHECKPOINTS_DIR, CONFIG_NAME, STARTED_CONFIG_NAME, SUMMARY_NAME, RunLock,
                            config_differences, make_run_dir, read_yaml, write_text)
from training.checkpoint import Checkpointer, has_steps
from training.config import RunConfig
from training.data import build_eval_sets, build_train_iterator, data_identity, eval_bytes_per_token
from training.grow import initialise_state
from training.hooks import Run
from training.metrics import MetricsWriter
from training.state import abstract, initial_train_state, jit_train_step
from training.step import make_eval_step
from training.wandb_sink import open_sinks

log = logging.getLogger("chinchax.train")


def notice(run_is_lead: bool, message: str) -> None:
    """A line the user must see (resume, completion), whatever the logging level."""
    if run_is_lead:
        print(message, file=sys.stderr, flush=True)


def check_same_run(cfg: RunConfig, run_dir: epath.Path, *, force: bool, write: bool) -> bool:
    """Returns whether the run resumes."""
    resumes = has_steps(run_dir / CHECKPOINTS_DIR)
    started = (read_yaml(run_dir / STARTED_CONFIG_NAME) or read_yaml(run_dir / CONFIG_NAME)
               if resumes else None)
    current = cfg.to_yaml()
    if started is not None:
        differing = config_differences(started, yaml.safe_load(current))
        if differing and not force:
            shown = ", ".join(differing[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
            raise TrainingError(
                f"{run_dir} holds a run started with other settings: {shown} differ",
                hint="use a new run directory, or pass --force to continue this run under the "
                "new settings")
    if write:
        if started is None or force:
            write_text(run_dir / STARTED_CONFIG_NAME, current)
        write_text(run_dir / CONFIG_NAME, current)
    return resumes


def _restore_or_init(run: Run, state: Any, resumes: bool) -> Any:
    if not resumes:  # a run resumes its own state; only a fresh run takes init.from_run/grow_from
        state, run.init_record = initialise_state(run.cfg.init, state, run.cfg.model)
        run.metrics.truncate_after(0)
        stale = run.run_dir / SUMMARY_NAME
        if run.is_lead and stale.exists():
            stale.unlink()
        return state
    state, extra, run.step = run.ckpt.restore(None, abstract(state), require=("data",))
    run.data_iter.set_state(extra["data"])
    run.init_record = extra.get("init")
    run.nonfinite_skipped = int(extra.get("nonfinite_skipped", 0))
    run.metrics.truncate_after(run.step)
    return state


def open_run(cfg: RunConfig, *, force: bool = False) -> Run:
    """Everything the loop needs, resumed if it can be."""
    is_lead = jax.process_index() == 0
    run_dir = make_run_dir(cfg.run_dir) if is_lead else epath.Path(cfg.run_dir)
    lock = RunLock(run_dir).acquire() if is_lead else None
    try:
        return _build(cfg, run_dir, is_lead, lock, force)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _metrics_writer(cfg: RunConfig, run_dir: epath.Path, is_lead: bool) -> MetricsWriter:
    sinks = open_sinks(cfg.logging, run_dir, cfg.name, cfg.to_dict()) if is_lead else ()
    metrics = MetricsWriter(run_dir, enabled=is_lead, sinks=sinks)
    metrics.log_config(cfg.to_dict())
    return metrics


def _data_facts(cfg: RunConfig) -> tuple[dict[str, float], Optional[dict]]:
    """Bytes per token per eval source (bits per byte compare across tokenizers), and the data
    identity."""
    try:
        return eval_bytes_per_token(cfg.data), data_identity(cfg.data)
    except ChinchaxError as exc:  # e.g. a source that cannot say how many bytes it holds
        log.warning("no bits per byte for this run: %s", exc)
        return {}, None


def _build(cfg: RunConfig, run_dir: epath.Path, is_lead: bool, lock: Optional[RunLock],
           force: bool) -> Run:
    resumes = check_same_run(cfg, run_dir, force=force, write=is_lead)
    mesh = make_mesh(cfg.mesh)
    data_sharding = batch_sharding(mesh, cfg.mesh.rules)
    graphdef, state, tx = initial_train_state(cfg, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    place = dict(process_index=jax.process_index(), process_count=jax.process_count())
    run = Run(
        cfg=cfg, plan=cfg.run_plan, run_dir=run_dir, is_lead=is_lead, mesh=mesh,
        data_sharding=data_sharding, state=None, step=0,
        ckpt=Checkpointer(run_dir / CHECKPOINTS_DIR, cfg.checkpoint),
        metrics=_metrics_writer(cfg, run_dir, is_lead),
        data_iter=build_train_iterator(cfg.data, seq_len=cfg.train.seq_len,
                                       global_batch=cfg.global_batch, **place),
        # one held-out set per source; the first is the primary one (``eval_loss``)
        eval_sets=build_eval_sets(cfg.data, seq_len=cfg.train.seq_len, batch_size=cfg.global_batch,
                                  num_batches=cfg.train.eval_batches, **place),
        eval_step=jax.jit(make_eval_step(graphdef), in_shardings=(shardings, data_sharding)),
        train_step=jit_train_step(cfg, graphdef, tx, state, mesh, data_sharding),
        lock=lock, device_kind=jax.devices()[0].device_kind, n_devices=mesh.devices.size)
    run.bytes_per_token, run.data_identity = _data_facts(cfg)
    run.state = _restore_or_init(run, state, resumes)
    run.start_step = run.step
    if resumes:
        notice(is_lead, f"resuming {run_dir} from step {run.step} of {cfg.steps}")
    return run
