"""The training loop: a resolved RunConfig in, a run directory with metrics and checkpoints out.

What it guarantees:

* **Exact resume.**  The checkpoint holds parameters, optimiser state, the step and the data
  iterator's position; a run killed at any point and started again with the same run directory
  repeats no batch and skips none, so on CPU its per-step losses equal an uninterrupted run's.
* **Preemption.**  SIGTERM (what a TPU VM receives before maintenance or spot reclaim) makes the
  loop save a checkpoint after the current step and return cleanly.
* **No bad checkpoint.**  A step whose loss is not finite is never checkpointed; with
  ``on_nonfinite: stop`` the run ends with the last good checkpoint intact, with ``skip`` the
  update is dropped on device.
* **One FLOP counter.**  Tokens/s, FLOPs spent and MFU all come from ``scaling.flops``.

The loop knows devices only through ``jax``; it knows nothing of TPU VMs or processes beyond
``jax.process_index()``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np
from etils import epath

from chinchax.errors import TrainingError
from models.sharding import activation_sharding, batch_sharding, make_mesh
from scaling.flops import (count_params, count_params_non_embedding, executed_flops_per_token,
                           train_flops_per_token)
from training.checkpoint import Checkpointer
from training.config import RunConfig
from training.init import initialise_state
from training.law_watch import LawWatch
from training.data import build_eval_sets, build_train_iterator, to_global_batch
from training.metrics import MetricsWriter, Progress, mfu
from training.optim import learning_rate_at_step
from training.state import initial_train_state, jit_train_step
from training.step import TrainState, make_eval_step
from training.wandb_sink import open_sinks

log = logging.getLogger("chinchax.train")

SUMMARY_NAME = "summary.json"


class PreemptionGuard:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested.set()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclass
class _Clock:
    """Wall time between log points, excluding compilation."""

    last_time: float
    last_step: int


def _abstract_with_shardings(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _eval_loss(eval_step: Callable, state: TrainState, batches: list[dict], mesh: Any,
               sharding: Any) -> float:
    losses = [eval_step(state, to_global_batch(b, mesh, sharding)) for b in batches]
    return float(np.mean(jax.device_get(losses)))


def train(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) training to ``cfg.train.steps``; return the summary dict."""
    start_wall = time.time()
    run_dir = epath.Path(cfg.run_dir)
    is_lead = jax.process_index() == 0
    if is_lead:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())

    mesh = make_mesh(cfg.mesh)
    data_sharding = batch_sharding(mesh, cfg.mesh.rules)
    n_devices = mesh.devices.size
    device_kind = jax.devices()[0].device_kind
    seq_len, steps = cfg.train.seq_len, cfg.steps
    tokens_per_step = cfg.tokens_per_step
    flops_per_token = train_flops_per_token(cfg.model, seq_len)  # Chinchilla accounting: fits
    executed_per_token = executed_flops_per_token(cfg.model, seq_len)  # what runs: MFU
    executed_causal = executed_flops_per_token(cfg.model, seq_len, causal=True)
    n_params = count_params(cfg.model)

    graphdef, state, tx = initial_train_state(cfg, mesh)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    ckpt = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
    metrics = MetricsWriter(run_dir, enabled=is_lead, sinks=open_sinks(
        cfg.logging, run_dir, cfg.name, cfg.to_dict()) if is_lead else ())
    metrics.log_config(cfg.to_dict())
    data_iter = build_train_iterator(cfg.data, seq_len=seq_len, global_batch=cfg.global_batch,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    # One held-out set per source; the first is the primary one (``eval_loss``).
    eval_sets = build_eval_sets(cfg.data, seq_len=seq_len, batch_size=cfg.global_batch,
                                num_batches=cfg.train.eval_batches,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())

    watch = LawWatch(cfg, run_dir, write=is_lead)  # prediction.json before the first step
    start_step = 0
    latest = ckpt.latest_step()
    init_record: dict | None = None  # where the parameters came from (init.from_run), if not fresh
    if latest is not None:
        state, extra, start_step = ckpt.restore(latest, _abstract_with_shardings(state))
        data_iter.set_state(extra["data"])
        init_record = extra.get("init")
        summary_path = run_dir / SUMMARY_NAME
        if start_step >= cfg.steps and summary_path.exists():  # finished: nothing to redo
            ckpt.close()
            metrics.close()
            log.info("run in %s is already complete (step %d)", run_dir, start_step)
            return json.loads(summary_path.read_text())
        metrics.truncate_after(start_step)
        log.info("resumed from step %d in %s", start_step, run_dir)
    else:  # a run resumes its own state; only a fresh run directory takes init.from_run
        state, init_record = initialise_state(cfg.init, state, cfg.model)

    train_step = jit_train_step(cfg, graphdef, tx, state, mesh, data_sharding)
    eval_step = jax.jit(make_eval_step(graphdef), in_shardings=(state_shardings, data_sharding))

    status = "complete"
    last_loss = float("nan")
    last_eval: float | None = None
    source_losses: dict[str, float] = {}
    compile_time = 0.0
    clock = None
    achieved = 0.0
    tokens_per_s = 0.0
    lr_at = learning_rate_at_step(cfg.optim, steps)
    with PreemptionGuard() as guard, activation_sharding(mesh, cfg.mesh.rules), \
            Progress(total=steps, initial=start_step, enabled=is_lead) as progress:
        step = start_step
        while step < steps:
            batch = to_global_batch(next(data_iter), mesh, data_sharding)
            if clock is None:  # compile once, outside the timed region
                t_compile = time.perf_counter()
                train_step = train_step.lower(state, batch).compile()
                compile_time = time.perf_counter() - t_compile
                clock = _Clock(time.perf_counter(), step)
            state, step_metrics = train_step(state, batch)
            step += 1
            at_end = step == steps
            due_log = step % cfg.train.log_every == 0 or at_end
            due_eval = step % cfg.train.eval_every == 0 or at_end
            due_ckpt = ckpt.due(step) or at_end
            stop_early = cfg.train.stop_after_steps is not None and step >= cfg.train.stop_after_steps
            off_law = False
            preempted = guard.requested.is_set()

            if due_log or due_ckpt or due_eval or preempted or stop_early:
                host = jax.device_get(step_metrics)
                last_loss = float(host["loss"])
                if not bool(host["finite"]) and cfg.train.on_nonfinite == "stop":
                    metrics.log_train({"step": step, "loss": last_loss,
                                       "grad_norm": float(host["grad_norm"])})
                    metrics.close()
                    ckpt.wait()
                    good = ckpt.latest_step()
                    raise TrainingError(
                        f"loss became non-finite at step {step} (loss={last_loss}); "
                        f"last good checkpoint: step {good}",
                        hint="lower optim.learning_rate or raise warmup; set "
                        "train.on_nonfinite=skip to drop such steps instead")
            if due_eval:
                eval_started = time.perf_counter()
                source_losses = {name: _eval_loss(eval_step, state, batches, mesh, data_sharding)
                                 for name, batches in eval_sets.items()}
                last_eval = next(iter(source_losses.values()))
                law_fields, alert = watch.observe(step, step * tokens_per_step, last_eval)
                per_source = ({f"eval_loss/{name}": v for name, v in source_losses.items()}
                              if len(source_losses) > 1 else {})
                metrics.log_eval({"step": step, "tokens": step * tokens_per_step,
                                  "flops": step * tokens_per_step * flops_per_token,
                                  "eval_loss": last_eval, **per_source, **law_fields})
                if alert is not None:
                    metrics.log_alert({"step": step, **alert.to_dict(), "message": alert.message})
                    off_law = watch.should_stop(alert)
                clock.last_time += time.perf_counter() - eval_started  # eval is not training time
            if due_log or due_eval:
                now = time.perf_counter()
                elapsed = max(now - clock.last_time, 1e-9)
                tokens_per_s = (step - clock.last_step) * tokens_per_step / elapsed
                achieved = tokens_per_s * executed_per_token
                clock = _Clock(now, step)
                utilisation = mfu(achieved, device_kind, n_devices)
                record = {"step": step, "loss": last_loss, "grad_norm": float(host["grad_norm"]),
                          "lr": lr_at(step - 1),
                          "tokens": step * tokens_per_step, "flops": step * tokens_per_step * flops_per_token,
                          "tokens_per_s": tokens_per_s, "step_time_s": tokens_per_step / tokens_per_s}
                if utilisation is None:
                    record["achieved_flops_per_s"] = achieved
                else:
                    record["mfu"] = utilisation
                metrics.log_train(record)
                fields = {"loss": last_loss, "tok_s": tokens_per_s}
                if due_eval:
                    fields["eval_loss"] = last_eval
                progress.update(step, **fields)
            stop_early = stop_early or off_law
            if due_ckpt or preempted or stop_early:
                extra = {"data": data_iter.get_state(), **({"init": init_record} if init_record else {})}
                ckpt.save(step, state, extra, force=preempted or stop_early or at_end)
            if preempted or stop_early:
                status = "preempted" if preempted else ("off_law" if off_law else "stopped")
                break
    ckpt.wait()
    ckpt.close()

    tokens = step * tokens_per_step
    summary = {
        "run_name": cfg.name, "status": status, "n_params": n_params,
        "n_params_non_embedding": count_params_non_embedding(cfg.model), "seed": cfg.seed,
        "steps": step, "target_steps": steps, "seq_len": seq_len, "global_batch": cfg.global_batch,
        "tokens": tokens, "flops": tokens * flops_per_token, "flops_per_token": flops_per_token,
        "final_train_loss": last_loss, "final_eval_loss": last_eval,
        **{f"final_eval_loss/{name}": v for name, v in source_losses.items() if len(source_losses) > 1},
        "tokens_per_s": tokens_per_s, "achieved_flops_per_s": achieved,
        "mfu": mfu(achieved, device_kind, n_devices),
        "mfu_causal": mfu(tokens_per_s * executed_causal, device_kind, n_devices),
        "executed_flops_per_token": executed_per_token, "device_kind": device_kind,
        "n_devices": n_devices, "compile_time_s": compile_time,
        "wall_time_s": time.time() - start_wall, "model": cfg.model.to_dict(), "plan": cfg.plan,
        "prediction": watch.summary(last_eval), "init": init_record,
    }
    metrics.write_summary(summary)
    metrics.close()
    return summary

