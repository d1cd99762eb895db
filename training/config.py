"""Run settings the trainer reads: ``TrainConfig`` and the fully resolved ``RunConfig``.

``RunConfig`` is what a run *is* once every choice has been made (the allocator has turned a
budget into a shape, batch and steps).  The trainer never sees a budget or a YAML file: those
live in ``launch/``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import yaml

from chinchax.errors import TrainingError
from models.config import ModelConfig

from models.sharding import MeshConfig
from scaling.prediction import PredictionConfig
from training.checkpoint import CheckpointConfig
from training.data import DataConfig
from training.init import InitConfig
from training.optim import OptimConfig
from training.wandb_sink import LoggingConfig

NONFINITE_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class TrainConfig:
    """Length, batch and cadence of a run.

    ``steps`` and ``global_batch`` may be left unset when a ``budget:`` section is given: the
    allocator fills them in.  ``grad_accum_steps`` splits each global batch into that many
    micro-batches inside the compiled step (same update, less activation memory).
    """

    steps: Optional[int] = None
    global_batch: Optional[int] = None
    seq_len: int = 256
    grad_accum_steps: int = 1
    eval_every: int = 100
    eval_batches: int = 8
    log_every: int = 10
    on_nonfinite: str = "stop"
    stop_after_steps: Optional[int] = None  # end the process early (resumable) after this step

    def __post_init__(self) -> None:
        for name in ("seq_len", "grad_accum_steps", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) <= 0:
                raise TrainingError(f"train.{name} must be positive, got {getattr(self, name)}",
                                    hint=f"set train.{name} to a positive integer")
        for name in ("steps", "global_batch"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise TrainingError(f"train.{name} must be positive, got {value}",
                                    hint=f"set train.{name}, or give a budget: section instead")
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
class RunConfig:
    """Everything one training run needs, with every budget-derived value filled in."""

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
    plan: Optional[dict] = None  # the allocator's plan (budget, law, predicted loss), if any

    @property
    def steps(self) -> int:
        assert self.train.steps is not None, "RunConfig.train.steps is resolved by launch/"
        return self.train.steps

    @property
    def global_batch(self) -> int:
        assert self.train.global_batch is not None
        return self.train.global_batch

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.train.seq_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML: the run directory's ``config.yaml``."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
