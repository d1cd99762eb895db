"""Weights & Biases as a view of ``metrics.jsonl`` with TensorBoard's tag names.  The run id
derives from the run directory, so a resume appends to the same wandb run (which drops steps it
has seen); ``offline`` needs no network (``wandb sync`` uploads later)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from etils import epath

from chinchax.errors import TrainingError
from training.metrics import tensorboard_tag

WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbConfig:
    """``project`` and ``entity`` None: wandb's defaults."""

    project: Optional[str] = None
    entity: Optional[str] = None
    mode: str = "online"

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise TrainingError(f"logging.wandb.mode={self.mode!r} is not one of "
                                f"{', '.join(WANDB_MODES)}",
                                hint="use offline to log without network (wandb sync uploads later)")


@dataclass(frozen=True)
class LoggingConfig:
    """The ``logging:`` section."""

    wandb: Optional[WandbConfig] = None  # unset: no wandb


def wandb_run_id(run_dir: epath.PathLike, name: str) -> str:
    """Name plus a short hash of the full path: stable across resumes."""
    path = os.fspath(run_dir)
    full = path if "://" in path else os.path.abspath(path)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:48] or "run"
    return f"{slug}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"


class WandbSink:
    """Lead process only."""

    def __init__(self, cfg: WandbConfig, run_dir: epath.PathLike, name: str,
                 config: Optional[Mapping[str, Any]] = None) -> None:
        try:
            import wandb
        except ImportError as error:
            raise TrainingError("logging.wandb is set but the wandb package is not installed",
                                hint="pip install 'chinchax[wandb]', or remove logging.wandb") from error
        directory = os.environ.get("WANDB_DIR") or os.fspath(run_dir)
        try:
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=directory, name=name,
                id=wandb_run_id(run_dir, name), resume="allow", config=dict(config or {}),
                settings=wandb.Settings(console="off", x_disable_stats=True))
        except Exception as error:  # no login, no network, bad entity: one line, not a stack
            raise TrainingError(f"wandb could not start ({type(error).__name__}: {error})",
                                hint="run `wandb login`, or set logging.wandb.mode=offline "
                                "(upload later with `wandb sync`)") from error

    def log(self, kind: str, record: Mapping[str, Any], step: int) -> None:
        """Numeric fields under their TensorBoard tags; alerts as text."""
        values: dict[str, Any] = {tensorboard_tag(kind, k): v for k, v in record.items()
                                  if k not in ("kind", "step") and not isinstance(v, bool)
                                  and isinstance(v, (int, float))}
        if kind == "alert" and "message" in record:
            values["alert"] = str(record["message"])
        if values:
            self.run.log(values, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def close(self) -> None:
        """Only after ``teardown`` has wandb written everything (offline: ready for sync)."""
        import wandb

        self.run.finish()
        wandb.teardown()


def open_sinks(cfg: LoggingConfig, run_dir: epath.PathLike, name: str,
               config: Mapping[str, Any]) -> list[WandbSink]:
    if cfg.wandb is None or cfg.wandb.mode == "disabled":
        return []
    return [WandbSink(cfg.wandb, run_dir, name, config)]
