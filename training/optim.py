"""AdamW with masked decoupled weight decay, a schedule and clipping.  Schedules are optax's
shifted by one, so warmup never spends an update at rate zero and the last uses the final rate."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from chinchax.errors import TrainingError

if TYPE_CHECKING:  # JAX and optax load when an optimiser is built, not with the config
    import optax


SCHEDULES = ("cosine", "wsd", "constant")
MAX_LEARNING_RATE = 10.0  # far above any AdamW peak that trains; larger is a typo
WSD_DECAY_SHAPES = ("linear", "cosine")

# Parameter names never decayed: norm scales and biases (whatever their stacked rank).
NO_DECAY_NAME = re.compile(r"(norm|bias|scale)", re.IGNORECASE)
# Path components that mark a leading axis stacked over layers (``nnx.scan`` / vmap'd init).
STACKED_AXIS_NAMES = ("layers", "blocks", "scan", "stack")


@dataclass(frozen=True)
class OptimConfig:
    """``warmup_steps`` (updates) wins over ``warmup_fraction``; ``min_lr_ratio``: final rate over peak
    (``cosine``, ``wsd``); ``clip_norm`` None or 0: no clipping; ``z_loss`` weighs ``log(Z)^2``."""

    learning_rate: float = 3e-3
    schedule: str = "cosine"
    warmup_steps: Optional[int] = None
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    wsd_decay_shape: str = "linear"
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: Optional[float] = 1.0
    z_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"optim.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}",
                             hint=f"use one of: {', '.join(SCHEDULES)}")
        if self.wsd_decay_shape not in WSD_DECAY_SHAPES:
            raise TrainingError(
                f"optim.wsd_decay_shape={self.wsd_decay_shape!r} is not one of "
                f"{', '.join(WSD_DECAY_SHAPES)}", hint=f"use one of: {', '.join(WSD_DECAY_SHAPES)}")
        _check_range("learning_rate", self.learning_rate, "a value like 3e-3", MAX_LEARNING_RATE)
        if self.warmup_steps is not None and not 0 <= self.warmup_steps < 2**31:
            raise TrainingError(f"optim.warmup_steps must lie in 0..2**31-1, got {self.warmup_steps}",
                                hint="set optim.warmup_steps to 0 or more, or leave it unset "
                                "to use optim.warmup_fraction")
        _check_fraction("warmup_fraction", self.warmup_fraction, allow_one=False)
        _check_fraction("decay_fraction", self.decay_fraction, allow_one=True)
        _check_fraction("min_lr_ratio", self.min_lr_ratio, allow_one=True)
        for name in ("b1", "b2"):
            _check_fraction(name, getattr(self, name), allow_one=False)
        _check_range("eps", self.eps, "1e-8", 1.0)
        _check_range("weight_decay", self.weight_decay, "0 for no decay, or a value like 0.1", 100.0,
                     zero_ok=True)
        if self.clip_norm is not None:
            _check_range("clip_norm", self.clip_norm, "1.0, or 0 / null to turn clipping off", zero_ok=True)
        _check_range("z_loss", self.z_loss, "0 to turn it off, or a small weight like 1e-4", 10.0,
                     zero_ok=True)


def _check_range(name: str, value: float, example: str, upper: float = math.inf, *,
                 zero_ok: bool = False) -> None:
    """``value`` in ``(0, upper]``, or ``[0, upper]`` when ``zero_ok``; NaN and inf fail too."""
    if not (math.isfinite(value) and (0 <= value if zero_ok else 0 < value) and value <= upper):
        kind = "finite, >= 0" if zero_ok else "positive, finite"
        raise TrainingError(f"optim.{name} must be {kind} and at most {upper:g}, got {value}",
                            hint=f"use {example}")


def _check_fraction(name: str, value: float, *, allow_one: bool) -> None:
    upper_ok = value <= 1 if allow_one else value < 1
    if not (0 <= value and upper_ok):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise TrainingError(f"optim.{name} must lie in {bound}, got {value}",
                            hint=f"set optim.{name} to a fraction in {bound}")


def warmup_updates(cfg: OptimConfig, total_updates: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return int(round(cfg.warmup_fraction * total_updates))


def make_schedule(cfg: OptimConfig, total_updates: int) -> optax.Schedule:
    """Linear warmup, then ``cosine``, ``wsd`` (decay over the last ``decay_fraction``, so the
    stable phase can branch into shorter runs) or ``constant``."""
    import optax

    if total_updates < 1:
        raise TrainingError(f"the run has {total_updates} optimiser updates; it needs at least one",
                         hint="raise train.steps")
    peak = cfg.learning_rate
    final = peak * cfg.min_lr_ratio
    warmup = warmup_updates(cfg, total_updates)
    if warmup >= total_updates and cfg.schedule != "constant":
        raise TrainingError(
            f"warmup of {warmup} updates does not fit in a run of {total_updates} updates",
            hint="lower optim.warmup_steps / optim.warmup_fraction or raise train.steps")

    if cfg.schedule == "cosine":
        base = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total_updates,
            end_value=final)
    elif cfg.schedule == "constant":
        # optax's warmup_constant_schedule stays at init_value when warmup_steps == 0
        base = optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    else:
        decay = max(1, int(round(cfg.decay_fraction * total_updates)))
        stable_end = total_updates - decay
        if stable_end < warmup:
            raise TrainingError(
                f"WSD warmup ({warmup} updates) and decay ({decay} updates) overlap in a run of "
                f"{total_updates} updates",
                hint="lower optim.warmup_fraction or optim.decay_fraction, or raise train.steps")
        if cfg.wsd_decay_shape == "linear":
            decay_schedule = optax.linear_schedule(peak, final, decay)
        else:
            decay_schedule = optax.cosine_decay_schedule(peak, decay, alpha=cfg.min_lr_ratio)
        base = optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak), decay_schedule],
            boundaries=[warmup, stable_end])

    def schedule(count: Any) -> Any:
        return base(count + 1)

    return schedule


def learning_rate_at_step(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The rate at 0-based trainer step ``s``, for logging."""
    schedule = make_schedule(cfg, total_steps)
    return lambda step: float(schedule(step))


def key_name(key: Any) -> str:
    """A pytree path component as text; checkpoints and ``init.from_run`` name leaves by it."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def should_decay(path: Sequence[Any], leaf: Any) -> bool:
    """Matrices decay, embeddings included; norms and biases do not.  Rank is counted without a
    stacked-layers axis, so a scanned RMSNorm scale ``[n_layers, d_model]`` is rank 1."""
    names = [key_name(k) for k in path]
    if any(NO_DECAY_NAME.search(name) for name in names):
        return False
    rank = len(getattr(leaf, "shape", ()))
    if any(name in STACKED_AXIS_NAMES for name in names):
        rank -= 1
    return rank >= 2


def decay_mask(params: Any) -> Any:
    import jax

    return jax.tree_util.tree_map_with_path(should_decay, params)


def make_optimizer(cfg: OptimConfig, total_steps: int, params: Any = None) -> optax.GradientTransformation:
    """``total_steps`` counts updates."""
    import optax

    del params  # the mask is a function of the tree passed to init/update
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
