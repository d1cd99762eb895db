"""The training loop.  A checkpoint holds the data position too, so a resumed run repeats and
skips no batch; a non-finite step is never saved; SIGTERM saves after the current step.
Everything but stepping is a hook with a cadence (``training.hooks``)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from chinchax.errors import ChinchaxError, CheckpointError, TrainingError
from models.sharding import activation_sharding
from scaling.rundir import RunSummary, read_records, read_summary
from training.config import RunConfig
from training.data import bits_per_byte, to_global_batch
from training.hooks import Hook, Run, hook
from training.metrics import Progress, mfu
from training.optim import learning_rate_at_step
from training.preemption import PreemptionGuard
from training.startup import notice, open_run

log = logging.getLogger("chinchax.train")


def train(cfg: RunConfig, *, hooks: Sequence[Hook] = (), force: bool = False,
          guard: PreemptionGuard | None = None) -> dict[str, Any]:
    """Run or resume to ``cfg.train.steps``; ``hooks`` (e.g. launch/'s law watch) run after each
    eval; ``force`` continues a run whose settings changed."""
    start_wall = time.time()
    with guard or PreemptionGuard() as guard:
        run = open_run(cfg, force=force)
        try:
            if run.at_end:
                return _finished(run, hooks, start_wall)
            every = (cfg.train.log_every, cfg.train.eval_every, cfg.checkpoint.every_steps)
            loop = [hook(_check_finite, every, at_stop=True), hook(_evaluate, cfg.train.eval_every),
                    *hooks, hook(_write_eval, cfg.train.eval_every),
                    hook(_log_train, (cfg.train.log_every, cfg.train.eval_every)),
                    hook(_checkpoint, cfg.checkpoint.every_steps, at_stop=True)]
            with activation_sharding(run.mesh, cfg.mesh.rules), Progress(
                    total=cfg.steps, initial=run.step, enabled=run.is_lead) as run.progress:
                while not run.at_end:
                    if guard.requested.is_set() and run.step == run.start_step:
                        run.stop_reason = "preempted"  # before the first step: nothing to save
                        break
                    _advance(run)
                    run.stop_reason = _stop_reason(run, guard)
                    for each in loop:
                        if each.due(run):
                            each.fn(run)
                    if run.stop_reason is not None:
                        break
                run.ckpt.wait()
            run.ckpt.close()
        except CheckpointError as error:
            raise _save_failed(run, error) from None
        finally:
            run.close()
        return _write_summary(run, hooks, start_wall)


def _advance(run: Run) -> None:
    """Compiled on the first call, outside the timed region."""
    batch = to_global_batch(next(run.data_iter), run.mesh, run.data_sharding)
    if run.clock is None:
        started = time.perf_counter()
        run.train_step = run.train_step.lower(run.state, batch).compile()
        run.compile_time = time.perf_counter() - started
        run.clock = (time.perf_counter(), run.step)
        if run.cfg.train.on_nonfinite == "skip":
            run.nonfinite = jnp.zeros(3, jnp.int32)
    run.state, run.step_metrics = run.train_step(run.state, batch)
    if run.nonfinite is not None:
        run.nonfinite = _count_nonfinite(run.nonfinite, run.step_metrics["finite"])
    run.step += 1


@jax.jit
def _count_nonfinite(counts: jax.Array, finite: jax.Array) -> jax.Array:
    """(skipped since the last check, in a row now, longest row since the last check)."""
    bad = jnp.logical_not(finite).astype(jnp.int32)
    row = (counts[1] + 1) * bad
    return jnp.stack([counts[0] + bad, row, jnp.maximum(counts[2], row)])


def _stop_reason(run: Run, guard: PreemptionGuard) -> str | None:
    if guard.requested.is_set():
        return "preempted"
    stop_after = run.cfg.train.stop_after_steps
    return "stopped" if stop_after is not None and run.step >= stop_after else None


def _check_finite(run: Run) -> None:
    host, train = run.host(), run.cfg.train
    if not bool(host["finite"]) and train.on_nonfinite == "stop":
        run.metrics.log_train({"step": run.step, "loss": run.last_loss,
                               "grad_norm": float(host["grad_norm"])})
        run.ckpt.wait()
        raise TrainingError(
            f"loss became non-finite at step {run.step} (loss={run.last_loss}); last good "
            f"checkpoint: step {run.ckpt.latest_step()}",
            hint="lower optim.learning_rate or raise warmup; set train.on_nonfinite=skip to drop "
            "such steps instead")
    if run.nonfinite is None:
        return
    new, row, worst = (int(x) for x in jax.device_get(run.nonfinite))
    run.nonfinite = jnp.asarray([0, row, row], jnp.int32)
    if new:
        run.nonfinite_skipped += new
        log.warning("step %d: %d non-finite updates skipped (%d in this run)", run.step, new,
                    run.nonfinite_skipped)
        run.metrics.log_alert({"step": run.step, "message": f"{new} non-finite updates skipped",
                               "nonfinite_skipped": run.nonfinite_skipped})
    if worst >= train.max_nonfinite_in_row and run.stop_reason is None:
        run.stop_reason = "nonfinite"


def _evaluate(run: Run) -> None:
    started = time.perf_counter()
    run.source_losses = {name: _eval_loss(run, batches) for name, batches in run.eval_sets.items()}
    run.last_eval = next(iter(run.source_losses.values()))
    run.eval_fields = {}
    if run.clock is not None:  # eval is not training time
        run.clock = (run.clock[0] + time.perf_counter() - started, run.clock[1])


def _eval_loss(run: Run, batches: list[dict]) -> float:
    losses = [run.eval_step(run.state, to_global_batch(b, run.mesh, run.data_sharding))
              for b in batches]
    return float(np.mean(jax.device_get(losses)))


def _bits_per_byte(run: Run) -> dict[str, float]:
    """``eval_bpb`` (primary source) and ``eval_bpb/<name>`` when there are several."""
    values = {name: bits_per_byte(loss, run.bytes_per_token[name])
              for name, loss in run.source_losses.items() if name in run.bytes_per_token}
    primary = next(iter(run.source_losses), None)
    out = {"eval_bpb": values[primary]} if primary in values else {}
    if len(run.source_losses) > 1:
        out.update({f"eval_bpb/{name}": v for name, v in values.items()})
    return out


def _write_eval(run: Run) -> None:
    per_source = ({f"eval_loss/{name}": v for name, v in run.source_losses.items()}
                  if len(run.source_losses) > 1 else {})
    run.metrics.log_eval({"step": run.step, "tokens": run.tokens,
                          "flops": run.tokens * run.plan.flops_per_token,
                          "eval_loss": run.last_eval, **per_source, **_bits_per_byte(run),
                          **run.eval_fields})
    for alert in run.alerts:
        run.metrics.log_alert(alert)
    run.alerts = []


def _log_train(run: Run) -> None:
    host, now = run.host(), time.perf_counter()
    assert run.clock is not None
    elapsed = max(now - run.clock[0], 1e-9)
    run.tokens_per_s = (run.step - run.clock[1]) * run.cfg.tokens_per_step / elapsed
    run.clock = (now, run.step)
    record = {"step": run.step, "loss": run.last_loss, "grad_norm": float(host["grad_norm"]),
              "lr": learning_rate_at_step(run.cfg.optim, run.steps)(run.step - 1),
              "tokens": run.tokens, "flops": run.tokens * run.plan.flops_per_token,
              "tokens_per_s": run.tokens_per_s,
              "step_time_s": run.cfg.tokens_per_step / max(run.tokens_per_s, 1e-9)}
    utilisation = _mfu(run, run.tokens_per_s)
    if utilisation["mfu"] is None:
        record["achieved_flops_per_s"] = run.tokens_per_s * run.plan.executed_flops_per_token
    else:
        record.update(utilisation)
    run.metrics.log_train(record)
    fields = {"loss": run.last_loss, "tok_s": run.tokens_per_s}
    if run.step % run.cfg.train.eval_every == 0 or run.at_end:
        fields["eval_loss"] = run.last_eval
    assert run.progress is not None
    run.progress.update(run.step, **fields)


def _mfu(run: Run, tokens_per_s: float) -> dict[str, Any]:
    """``mfu`` counts causal attention as half the square (MaxText); ``mfu_full_square`` all of it."""
    causal = mfu(tokens_per_s * run.plan.executed_flops_per_token_causal, run.device_kind, run.n_devices)
    full = mfu(tokens_per_s * run.plan.executed_flops_per_token, run.device_kind, run.n_devices)
    return {"mfu": causal, "mfu_causal": causal, "mfu_full_square": full}


def _checkpoint(run: Run) -> None:
    extra = {"data": run.data_iter.get_state(),
             **({"init": run.init_record} if run.init_record else {}),
             **({"nonfinite_skipped": run.nonfinite_skipped} if run.nonfinite_skipped else {})}
    run.ckpt.save(run.step, run.state, extra, force=run.at_end or run.stop_reason is not None)


def _save_failed(run: Run, error: CheckpointError) -> CheckpointError:
    """Leave a failed save behind (bounded), keep the records, and name the last good step."""
    run.metrics.close()
    run.ckpt.abandon()
    good = run.ckpt.last_good_step()
    failed = CheckpointError(f"{error} (at step {run.step}); last good checkpoint: "
                             f"{'none' if good is None else f'step {good}'}",
                             hint="free space or fix write access to the run directory, then "
                             "run the same command again to resume from there")
    failed.abandoned = True  # background threads may be stuck: the caller should not wait on them
    return failed


def _finished(run: Run, hooks: Sequence[Hook], start_wall: float) -> dict[str, Any]:
    """Re-evaluated if its summary never got written."""
    try:
        summary = read_summary(run.run_dir)
    except ChinchaxError:  # garbled: written again below
        summary = None
    run.ckpt.close()
    if summary is not None and summary.get("status") == "complete":
        run.close()
        notice(run.is_lead, f"run in {run.run_dir} is already complete (step {run.step})")
        return summary
    notice(run.is_lead, f"run in {run.run_dir} reached step {run.step} without a summary: "
           "evaluating it again")
    try:
        with activation_sharding(run.mesh, run.cfg.mesh.rules):
            _evaluate(run)
        last = (read_records(run.run_dir, "train") or [{}])[-1]
        run.last_loss = last.get("loss", math.nan)
        run.tokens_per_s = last.get("tokens_per_s") or 0.0
    finally:
        run.close()
    return _write_summary(run, hooks, start_wall)


def _write_summary(run: Run, hooks: Sequence[Hook], start_wall: float) -> dict[str, Any]:
    plan, cfg = run.plan, run.cfg
    summary = RunSummary(
        run_name=cfg.name, status=run.stop_reason or "complete", n_params=plan.n_params,
        n_params_non_embedding=plan.n_params_non_embedding, seed=cfg.seed, steps=run.step,
        target_steps=cfg.steps, seq_len=cfg.train.seq_len, global_batch=cfg.global_batch,
        tokens=run.tokens, flops=run.tokens * plan.flops_per_token,
        flops_per_token=plan.flops_per_token, final_train_loss=run.last_loss,
        final_eval_loss=run.last_eval, final_eval_bpb=_bits_per_byte(run).get("eval_bpb"),
        eval_losses=run.source_losses if len(run.source_losses) > 1 else {},
        tokens_per_s=run.tokens_per_s,
        achieved_flops_per_s=run.tokens_per_s * plan.executed_flops_per_token,
        **_mfu(run, run.tokens_per_s), executed_flops_per_token=plan.executed_flops_per_token,
        device_kind=run.device_kind, n_devices=run.n_devices, compile_time_s=run.compile_time,
        wall_time_s=time.time() - start_wall, nonfinite_skipped=run.nonfinite_skipped,
        model=cfg.model.to_dict(), plan=plan.allocation, init=run.init_record, data=run.data_identity)
    data = summary.to_dict()
    for each in hooks:
        if each.summary is not None:
            data.update(each.summary(run))
    if run.is_lead:
        run.metrics.write_summary(data)
    return data
