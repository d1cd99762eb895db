"""The state a train loop shares with its hooks, and hooks with a cadence (Levanter's
``add_hook(fn, every=N)``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import jax
from etils import epath

from scaling.rundir import RunLock, RunPlan
from training.checkpoint import Checkpointer
from training.config import RunConfig
from training.metrics import MetricsWriter, Progress


@dataclass
class Run:
    """What start-up built and what the loop has seen so far."""

    cfg: RunConfig
    plan: RunPlan
    run_dir: epath.Path
    is_lead: bool
    mesh: Any
    data_sharding: Any
    state: Any
    step: int
    ckpt: Checkpointer
    metrics: MetricsWriter
    data_iter: Any
    eval_sets: dict[str, list]
    eval_step: Callable
    train_step: Any
    init_record: Optional[dict] = None
    lock: Optional[RunLock] = None
    start_step: int = 0
    device_kind: str = ""
    n_devices: int = 1
    progress: Optional[Progress] = None
    step_metrics: Any = None
    stop_reason: Optional[str] = None
    last_loss: float = math.nan
    last_eval: Optional[float] = None
    source_losses: dict[str, float] = field(default_factory=dict)
    bytes_per_token: dict[str, float] = field(default_factory=dict)  # per eval source: loss -> bits/byte
    data_identity: Optional[dict] = None  # tokenizer and fingerprints, for summary.json
    eval_fields: dict[str, Any] = field(default_factory=dict)  # hooks add to the eval record
    alerts: list[dict] = field(default_factory=list)  # written after the eval record
    nonfinite: Any = None  # device counters (skipped, in a row, worst row) with on_nonfinite=skip
    nonfinite_skipped: int = 0
    compile_time: float = 0.0
    tokens_per_s: float = 0.0
    clock: Optional[tuple[float, int]] = None  # (time, step) of the last throughput point
    _host: Optional[tuple[int, dict]] = None

    @property
    def steps(self) -> int:
        return self.cfg.steps

    @property
    def at_end(self) -> bool:
        return self.step >= self.cfg.steps

    @property
    def tokens(self) -> int:
        return self.step * self.cfg.tokens_per_step

    def host(self) -> dict:
        """This step's metrics on the host (fetched once per step: a device sync)."""
        if self._host is None or self._host[0] != self.step:
            self._host = (self.step, jax.device_get(self.step_metrics))
            self.last_loss = float(self._host[1]["loss"])
        return self._host[1]

    def close(self) -> None:
        self.metrics.close()
        if self.lock is not None:
            self.lock.release()


@dataclass(frozen=True)
class Hook:
    """``fn(run)`` after every step divisible by one of ``every``, at the last step, and with
    ``at_stop`` also when the run stops early; ``summary(run)`` adds keys to summary.json."""

    fn: Callable[[Run], None]
    every: tuple[int, ...]
    at_stop: bool = False
    summary: Optional[Callable[[Run], dict[str, Any]]] = None

    def due(self, run: Run) -> bool:
        return (run.at_end or (self.at_stop and run.stop_reason is not None)
                or any(run.step % n == 0 for n in self.every))


def hook(fn: Callable[[Run], None], every: int | Sequence[int], *, at_stop: bool = False,
         summary: Optional[Callable[[Run], dict[str, Any]]] = None) -> Hook:
    cadence = (every,) if isinstance(every, int) else tuple(every)
    return Hook(fn, cadence, at_stop, summary)
