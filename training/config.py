"""The fully resolved ``RunConfig``: budgets and YAML stay in ``launch/``, the trainer sees only
a shape, batch and steps.  Plain dataclasses, so importing this loads no orbax."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import yaml

from chinchax.errors import ChinchaxError, CheckpointError, TrainingError
from models import grow_shape
from models.config import ModelConfig
from models.sharding import MeshConfig
from scaling.prediction import PredictionConfig
from scaling.rundir import RunPlan, plan_for
from training.data import DataConfig
from training.optim import OptimConfig
from training.wandb_sink import LoggingConfig

NONFINITE_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class TrainConfig:
    """``steps`` and ``global_batch`` unset: the allocator fills them from a ``budget:`` section."""

    steps: Optional[int] = None
    global_batch: Optional[int] = None
    seq_len: int = 256
    grad_accum_steps: int = 1
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    on_nonfinite: str = "stop"
    stop_after_steps: Optional[int] = None  # end the process early (resumable) after this step
    max_nonfinite_in_row: int = 10  # with on_nonfinite=skip: stop after this many in a row

    def __post_init__(self) -> None:
        for name in ("seq_len", "grad_accum_steps", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) <= 0:
                raise TrainingError(f"train.{name} must be positive, got {getattr(self, name)}",
                                    hint=f"set train.{name} to a positive integer")
        for name in ("steps", "global_batch", "stop_after_steps", "max_nonfinite_in_row"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TrainingError(f"train.{name} must be positive, got {value}",
                                    hint=f"set train.{name} to a positive integer (steps and "
                                    "global_batch may instead come from a budget: section)")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise TrainingError(
                f"train.on_nonfinite={self.on_nonfinite!r} is not one of {NONFINITE_POLICIES}",
                hint="'stop' ends the run keeping the last good checkpoint; 'skip' drops the update")
        if self.global_batch is not None and self.global_batch % self.grad_accum_steps:
            raise TrainingError(
                f"train.global_batch={self.global_batch} is not divisible by "
                f"train.grad_accum_steps={self.grad_accum_steps}",
                hint="choose a batch that splits evenly into micro-batches")


@dataclass(frozen=True)
class CheckpointConfig:
    """The newest ``keep_last`` steps are kept, and every multiple of ``keep_every`` for good
    (intermediate checkpoints for scaling fits)."""

    every_steps: int = 100
    keep_last: int = 3
    keep_every: Optional[int] = None
    async_save: bool = True
    save_timeout_s: float = 60.0  # a failed or stuck save is abandoned after this long

    def __post_init__(self) -> None:
        for name, hint in (("every_steps", "a positive number of steps"),
                           ("keep_last", "1 or more (keep at least the newest checkpoint)"),
                           ("keep_every", "a positive step count, or null")):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CheckpointError(f"checkpoint.{name} must be >= 1, got {value}",
                                      hint=f"set checkpoint.{name} to {hint}")
        if not self.save_timeout_s > 0:
            raise CheckpointError(f"checkpoint.save_timeout_s must be > 0, got {self.save_timeout_s}",
                                  hint="set it to the seconds a save may take, e.g. 60")


@dataclass(frozen=True)
class InitConfig:
    """A new run's parameters: random, ``from_run`` (same shape), or ``grow_from`` a smaller run
    widened ``factor`` times by HyperCloning."""

    from_run: Optional[str] = None
    grow_from: Optional[str] = None
    factor: int = 1
    variant: str = "symmetric"
    noise_scale: float = grow_shape.DEFAULT_NOISE_SCALE  # noise std / cloned block std
    noise_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("from_run", "grow_from"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise TrainingError(f"init.{name} is an empty path", hint=f"name a run directory, "
                                    f"e.g. init.{name}=runs/python, or leave it unset")
        if self.from_run is not None and self.grow_from is not None:
            raise TrainingError("init.from_run and init.grow_from are both set",
                                hint="from_run loads a model of the same shape, grow_from widens "
                                "a smaller one: keep one of them")
        if self.factor < 1:
            raise TrainingError(f"init.factor={self.factor} must be a positive integer",
                                hint="the widening factor is 2, 3, ... (1 means no widening)")
        if self.factor != 1 and self.grow_from is None:
            raise TrainingError(f"init.factor={self.factor} is set without init.grow_from",
                                hint="set init.grow_from to the smaller run to widen, or drop "
                                "init.factor")
        if self.grow_from is not None and self.factor < 2:
            raise TrainingError(f"init.grow_from is set but init.factor={self.factor}",
                                hint="set init.factor to the widening factor (2, 3, ...); to load "
                                "a model of the same shape use init.from_run instead")
        try:
            grow_shape.check_variant(self.variant, self.noise_scale)
            if self.grow_from is not None:
                grow_shape.check_factor(self.factor)
        except ChinchaxError as error:
            raise TrainingError(f"init: {error}", hint=error.hint) from None

    @property
    def active(self) -> bool:
        return self.from_run is not None or self.grow_from is not None


@dataclass(frozen=True)
class RunConfig:
    """One training run, every budget-derived value filled in."""

    name: str
    run_dir: str
    model: ModelConfig
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    init: InitConfig = field(default_factory=InitConfig)  # start from another run's parameters
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # wandb beside TensorBoard
    seed: int = 0
    plan: Optional[RunPlan] = None  # counts (N, FLOPs per token) and the allocator's plan, if any
    runtime: Optional[dict] = None  # XLA flags and allocator launch/ set (a record, not read)

    @property
    def steps(self) -> int:
        assert self.train.steps is not None, "RunConfig.train.steps is resolved by launch/"
        return self.train.steps

    @property
    def global_batch(self) -> int:
        assert self.train.global_batch is not None
        return self.train.global_batch

    @property
    def run_plan(self) -> RunPlan:
        """launch/'s plan, or this model's counts when none was given."""
        return self.plan if self.plan is not None else plan_for(self.model, self.train.seq_len)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.train.seq_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        """The run directory's ``config.yaml``."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
