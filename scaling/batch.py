"""Batch size, learning rate and steps from the budget: DeepSeek LLM's fits (DeepSeek-AI 2024, §3.1),
made on 1e17–3e20 FLOPs; the optimum is broad, so a config may override them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from chinchax.errors import ScalingError


DEEPSEEK_BATCH_COEF = 0.2920
DEEPSEEK_BATCH_EXPONENT = 0.3271
DEEPSEEK_LR_COEF = 0.3118
DEEPSEEK_LR_EXPONENT = -0.1250
MAX_BATCH_CANDIDATES = 20_000


def _check_flops(flops: float) -> None:
    if not (isinstance(flops, (int, float)) and math.isfinite(flops) and flops > 0):
        raise ScalingError(f"compute budget must be a positive number of FLOPs, got {flops!r}",
                              hint="pass e.g. 1e19")


def optimal_batch_tokens(flops: float) -> float:
    _check_flops(flops)
    return DEEPSEEK_BATCH_COEF * flops**DEEPSEEK_BATCH_EXPONENT


def optimal_learning_rate(flops: float) -> float:
    _check_flops(flops)
    return DEEPSEEK_LR_COEF * flops**DEEPSEEK_LR_EXPONENT


def optimal_batch_sequences(flops: float, seq_len: int, multiple: int = 1) -> int:
    if seq_len <= 0 or multiple <= 0:
        raise ScalingError(f"seq_len and data-parallel size must be positive, got {seq_len}, {multiple}",
                              hint="use e.g. seq_len 2048 and the number of data-parallel devices")
    # the nearest positive multiple of ``multiple`` (at least ``multiple`` itself)
    return max(1, round(optimal_batch_tokens(flops) / seq_len / multiple)) * multiple


@dataclass(frozen=True)
class StepPlan:
    """``tokens = steps · batch · seq_len`` (batch in sequences)."""

    global_batch: int
    steps: int
    seq_len: int

    @property
    def tokens(self) -> int:
        return self.steps * self.global_batch * self.seq_len

    def relative_error(self, target_tokens: float) -> float:
        return self.tokens / target_tokens - 1.0


def fit_steps(
    target_tokens: float,
    seq_len: int,
    preferred_batch: int,
    *,
    multiple: int = 1,
    tolerance: float = 0.01,
    min_steps: int = 1,
    fixed_batch: bool = False,
) -> StepPlan:
    """Steps and batch within ``tolerance`` of ``target_tokens``: rounding steps is off by at most
    ``0.5 / steps``, so short runs also try multiples of ``multiple`` up to 2× ``preferred_batch``.
    """
    sequences = target_tokens / seq_len

    def plan(batch: int) -> StepPlan:
        return StepPlan(batch, max(1, round(sequences / batch)), seq_len)

    def good(p: StepPlan) -> bool:
        return p.steps >= min_steps and abs(p.relative_error(target_tokens)) <= tolerance

    first = plan(preferred_batch)
    if fixed_batch or good(first):
        return first
    batches: Sequence[int] = range(multiple, 2 * preferred_batch + 1, multiple)
    if len(batches) > MAX_BATCH_CANDIDATES:  # a geometric sample keeps huge batches instant
        top = len(batches)
        batches = sorted({multiple * round(top ** (i / MAX_BATCH_CANDIDATES))
                          for i in range(MAX_BATCH_CANDIDATES + 1)})
    candidates = [plan(b) for b in batches]
    return min(
        candidates,
        key=lambda p: (not good(p), p.steps < min_steps, abs(p.relative_error(target_tokens)),
                       abs(math.log(p.global_batch / preferred_batch)), p.global_batch),
    )
