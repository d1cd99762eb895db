"""The trainer's learning-rate schedules in NumPy, and the areas a loss curve depends on.

Areas follow Tissue et al. (2024): ``S1 = sum lr_i``, ``S2 = sum m_i`` with ``m_i = lam m_(i-1)
+ max(lr_(i-1) - lr_i, 0)``, both in LR × tokens because batch grows across budgets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from chinchax.errors import ScalingError

SCHEDULE_KINDS = ("cosine", "wsd", "constant")
DEFAULT_LAMBDA = 0.999


@dataclass(frozen=True)
class Schedule:

    kind: str
    peak: float
    steps: int
    tokens_per_step: float
    warmup: int
    decay_fraction: float = 0.2
    wsd_decay_shape: str = "linear"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ScalingError(f"unknown schedule {self.kind!r}",
                               hint=f"use one of {', '.join(SCHEDULE_KINDS)}")
        if not (self.steps >= 1 and self.peak > 0 and self.tokens_per_step > 0):
            raise ScalingError(f"schedule needs steps >= 1, a positive rate and batch, got "
                               f"{self.steps} steps, lr {self.peak}, {self.tokens_per_step} tokens/step",
                               hint="check the run's config.yaml (train.steps, optim.learning_rate)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], steps: int | None = None) -> "Schedule":
        optim, train = config.get("optim") or {}, config.get("train") or {}
        total = int(steps if steps is not None else train["steps"])
        warmup = optim.get("warmup_steps")
        if warmup is None:
            warmup = int(round(float(optim.get("warmup_fraction", 0.05)) * total))
        return cls(kind=str(optim.get("schedule", "cosine")), peak=float(optim["learning_rate"]),
                   steps=total, tokens_per_step=float(train["global_batch"]) * float(train["seq_len"]),
                   warmup=int(warmup), decay_fraction=float(optim.get("decay_fraction", 0.2)),
                   wsd_decay_shape=str(optim.get("wsd_decay_shape", "linear")),
                   min_lr_ratio=float(optim.get("min_lr_ratio", 0.1)))

    def rates(self) -> np.ndarray:
        count = np.arange(1, self.steps + 1, dtype=np.float64)  # the trainer evaluates count + 1
        peak, final, warmup = self.peak, self.peak * self.min_lr_ratio, self.warmup
        ramp = peak * np.minimum(count, warmup) / warmup if warmup > 0 else np.full_like(count, peak)
        if self.kind == "constant":
            rest = np.full_like(count, peak)
        elif self.kind == "cosine":
            span = max(self.steps - warmup, 1)
            rest = _cosine(peak, np.minimum(count - warmup, span) / span, self.min_lr_ratio)
        else:
            decay = max(1, int(round(self.decay_fraction * self.steps)))
            stable_end = self.steps - decay
            into = np.clip(count - stable_end, 0, decay) / decay
            tail = (peak + (final - peak) * into if self.wsd_decay_shape == "linear"
                    else _cosine(peak, into, self.min_lr_ratio))
            rest = np.where(count < stable_end, peak, tail)
        return np.where(count < warmup, ramp, rest)

    def areas(self, lam: float = DEFAULT_LAMBDA) -> tuple[np.ndarray, np.ndarray]:
        rates = self.rates()
        drops = np.maximum(-np.diff(rates, prepend=rates[0]), 0.0)  # warmup is no annealing
        momentum = _momentum(drops, lam)
        return (np.cumsum(rates) * self.tokens_per_step,
                np.cumsum(momentum) * self.tokens_per_step)

    def areas_at(self, steps: np.ndarray, lam: float = DEFAULT_LAMBDA) -> tuple[np.ndarray, np.ndarray]:
        """``(S1, S2)`` after ``steps`` updates (each in ``1 … self.steps``)."""
        s1, s2 = self.areas(lam)
        index = np.clip(np.asarray(steps, dtype=np.int64), 1, self.steps) - 1
        return s1[index], s2[index]


def _cosine(peak: float, progress: np.ndarray, alpha: float) -> np.ndarray:
    return peak * ((1.0 - alpha) * 0.5 * (1.0 + np.cos(math.pi * progress)) + alpha)


def _momentum(drops: np.ndarray, lam: float) -> np.ndarray:
    """``m_i = lam m_(i-1) + drop_i`` as a linear filter (exact, no Python loop)."""
    from scipy.signal import lfilter

    return lfilter([1.0], [1.0, -lam], drops)
