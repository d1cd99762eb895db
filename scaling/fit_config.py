"""What a fit is asked to do: the coefficients, the start grid, and the fit's settings."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from chinchax.errors import ScalingError

PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta", "gamma")
# E, A and B are optimised as their logarithms e, a, b (positive by construction, and the
# scale on which Chinchilla's start grid is written).
LOG_SCALED = ("E", "A", "B")
GRID_AXIS = {"E": "e", "A": "a", "B": "b", "alpha": "alpha", "beta": "beta", "gamma": "gamma"}
APPROACHES = (1, 2, 3, "curve")
# Every quantity a report may hold, in the order tables show them.
LABEL_ORDER = ("E", "A", "B", "C", "alpha", "beta", "gamma", "a", "b", "n_coef", "d_coef", "n_opt",
               "tokens_opt", "loss_opt")


class FitWarning(UserWarning):
    """A fit that worked but deserves a look (an optimum at a grid edge, a skipped budget)."""


# ===================================================================================== config
@dataclass(frozen=True)
class StartGrid:
    """Start values per coordinate (E, A, B as their logs); defaults: Chinchilla D.2's 4,500 starts."""

    e: List[float] = field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0])
    a: List[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    b: List[float] = field(default_factory=lambda: [0.0, 5.0, 10.0, 15.0, 20.0, 25.0])
    alpha: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])
    beta: List[float] = field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0])
    gamma: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])

    def __post_init__(self) -> None:
        for axis in GRID_AXIS.values():
            values = getattr(self, axis)
            if not values or not all(math.isfinite(float(v)) for v in values):
                raise ScalingError(f"start grid axis {axis!r} must hold finite values, got {values!r}",
                               hint="give every axis at least one start value")

    def axis(self, name: str) -> np.ndarray:
        return np.asarray(getattr(self, GRID_AXIS[name]), dtype=np.float64)

    def points(self, free: Sequence[str]) -> np.ndarray:
        return np.array(list(itertools.product(*(self.axis(n) for n in free))), dtype=np.float64)


def coarse_grid() -> StartGrid:
    """A 2 x 3 x 3 x 3 x 3 = 162-start grid spanning the default ranges, for quick fits and tests."""
    return StartGrid(e=[-1.0, 1.0], a=[0.0, 12.5, 25.0], b=[0.0, 12.5, 25.0],
                     alpha=[0.0, 1.0, 2.0], beta=[0.0, 1.0, 2.0], gamma=[0.0, 0.5])


@dataclass(frozen=True)
class FitConfig:
    """``fixed`` is in natural units (``{"E": 1.55}``); ``bootstrap_starts`` best optima of the full fit
    seed each resample (0: the whole grid, slow); ``target_flops`` defaults to 10× the largest budget.
    """

    approach: int = 3
    huber_delta: float = 1e-3
    grid: StartGrid = field(default_factory=StartGrid)
    fixed: Dict[str, float] = field(default_factory=dict)
    free_gamma: bool = False
    max_iter: int = 1000
    memory: int = 10
    gtol: float = 1e-10
    ftol: float = 1e-12
    search_dtype: str = "float32"
    polish_starts: int = 32
    bootstrap: int = 0
    bootstrap_starts: int = 8
    confidence: float = 0.95
    seed: int = 0
    target_flops: Optional[float] = None
    budget_tolerance: float = 0.1
    envelope_points: int = 1500
    envelope_smoothing: int = 3

    def __post_init__(self) -> None:
        if self.approach not in APPROACHES:
            raise ScalingError(f"approach must be 1, 2, 3 or curve, got {self.approach}",
                           hint="1: envelope, 2: isoFLOP parabolas, 3: parametric Huber fit")
        positive = {"huber_delta": self.huber_delta, "max_iter": self.max_iter,
                    "memory": self.memory, "budget_tolerance": self.budget_tolerance,
                    "envelope_points": self.envelope_points}
        for name, value in positive.items():
            if not value > 0:
                raise ScalingError(f"fit.{name} must be positive, got {value}",
                               hint=f"use the default {getattr(FitConfig, name, '')}".rstrip())
        if self.search_dtype not in ("float32", "float64"):
            raise ScalingError(f"search_dtype must be 'float32' or 'float64', got {self.search_dtype!r}",
                           hint="float32 screens the start grid fast; the best starts are "
                           "always polished in float64")
        if self.polish_starts < 1:
            raise ScalingError(f"polish_starts must be at least 1, got {self.polish_starts}",
                           hint="use the default 32")
        if self.envelope_smoothing < 0:
            raise ScalingError(f"envelope_smoothing must be 0 or more, got {self.envelope_smoothing}",
                           hint="0 keeps the raw curves; 3 fits a cubic in ln C per run")
        if self.bootstrap < 0 or self.bootstrap_starts < 0:
            raise ScalingError("bootstrap and bootstrap_starts must be non-negative",
                           hint="use 0 to skip the bootstrap, e.g. 1000 for intervals")
        if not 0.0 < self.confidence < 1.0:
            raise ScalingError(f"confidence must lie in (0, 1), got {self.confidence}",
                           hint="use 0.95 for 95% intervals")
        if self.target_flops is not None and not self.target_flops > 0:
            raise ScalingError(f"target_flops must be positive, got {self.target_flops}",
                           hint="give the budget in FLOPs, e.g. 1e21")
        for name, value in self.fixed.items():
            if name not in PARAMETER_NAMES:
                raise ScalingError(f"cannot fix unknown coefficient {name!r}",
                               hint="fixable coefficients: " + ", ".join(PARAMETER_NAMES))
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number) or (name in LOG_SCALED and number <= 0):
                raise ScalingError(f"fixed {name}={value} is not usable",
                               hint="E, A and B must be positive; all values finite")

    @property
    def free_parameters(self) -> tuple[str, ...]:
        return tuple(n for n in PARAMETER_NAMES if n not in self.fixed_values)

    @property
    def fixed_values(self) -> dict[str, float]:
        """Fixed coefficients, gamma = 0 included unless it is free or fixed elsewhere."""
        values = {k: float(v) for k, v in self.fixed.items()}
        if not self.free_gamma:
            values.setdefault("gamma", 0.0)
        return values


def _emit(notes: Sequence[str]) -> None:
    for note in notes:
        warnings.warn(note, FitWarning, stacklevel=3)
