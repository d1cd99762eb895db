"""Loss-curve law ``L(N, t) = E + A/N**alpha + B/S1(t)**beta - C*S2(t)`` (Tissue et al. 2024).

``S1``, ``S2``: the schedule's forward and annealing areas up to step ``t`` in LR × tokens, so
every eval of every run, mid-run cosine evals included, is a point of one law. At a run's end
it reduces to Chinchilla's ``L(N, D)`` with ``E' = E - C*S2_end``, ``B' = B*(D/S1_end)**beta``
(:meth:`CurveLaw.reduced`), which allocation uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from chinchax.errors import ScalingError
from scaling.laws import ParametricLaw
from scaling.lr_schedule import DEFAULT_LAMBDA, Schedule
from scaling.observations import Observations, read_run_dir
from scaling.rundir import read_config

CURVE_NAMES = ("E", "A", "B", "alpha", "beta", "C")


@dataclass(frozen=True)
class CurveLaw:
    """Coefficients of the curve law; ``samples`` are bootstrap replicates in ``CURVE_NAMES`` order."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    C: float
    lam: float = DEFAULT_LAMBDA
    samples: tuple[tuple[float, ...], ...] = field(default=(), repr=False, compare=False)

    @property
    def coefficients(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in CURVE_NAMES}

    def loss(self, n_params: Any, s1: Any, s2: Any) -> Any:
        return self.E + self.A * np.power(n_params, -self.alpha) + self.B * np.power(s1, -self.beta) \
            - self.C * np.asarray(s2)

    def final_loss(self, n_params: float, schedule: Schedule) -> float:
        s1, s2 = schedule.areas(self.lam)
        return float(self.loss(n_params, s1[-1], s2[-1]))

    def replicate_losses(self, n_params: Any, s1: Any, s2: Any) -> np.ndarray:
        """Each bootstrap replicate's loss at the given points: shape (replicates, points)."""
        n_params, s1, s2 = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (n_params, s1, s2))
        if not self.samples:
            return np.empty((0, np.broadcast(n_params, s1, s2).size))
        e, a, b, alpha, beta, c = (col[:, None] for col in np.asarray(self.samples, dtype=np.float64).T)
        return e + a * n_params ** -alpha + b * s1 ** -beta - c * s2

    def reduced(self, schedule: Schedule, *, name: str = "curve", source: str = "") -> ParametricLaw:
        """Chinchilla's ``L(N, D)`` for runs of ``schedule``'s shape, rate and length (its ``E`` is
        ``E - C*S2_end``, the annealed floor of such runs)."""
        s1, s2 = schedule.areas(self.lam)
        tokens = schedule.steps * schedule.tokens_per_step
        rate = tokens / s1[-1]  # tokens per unit of forward area: D = rate * S1

        def law_of(row: Sequence[float]) -> tuple[float, ...]:
            e, a, b, alpha, beta, c = row
            # E - C*S2 may be negative when E is not identified: clipping it would drop the
            # annealing bonus from every prediction; the loss itself stays positive in range
            return (e - c * s2[-1], a, b * rate ** beta, alpha, beta, 0.0)

        samples = tuple(law_of(row) for row in self.samples)
        return ParametricLaw(*law_of([getattr(self, n) for n in CURVE_NAMES]), name=name,
                             source=source, samples=samples)

    def to_dict(self) -> dict[str, Any]:
        return {"form": "curve", **self.coefficients, "lambda": self.lam,
                "samples": [list(row) for row in self.samples]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CurveLaw":
        samples = tuple(tuple(float(v) for v in row) for row in data.get("samples", ()))
        return cls(**{n: float(data[n]) for n in CURVE_NAMES}, lam=float(data.get("lambda", DEFAULT_LAMBDA)),
                   samples=samples)


@dataclass(frozen=True)
class CurvePoints:
    """Every eval of every run, with the schedule areas at its step; ``schedules`` by run id."""

    obs: Observations
    s1: np.ndarray
    s2: np.ndarray
    schedules: Mapping[str, Schedule]
    lam: float = DEFAULT_LAMBDA

    def __len__(self) -> int:
        return len(self.obs)

    def select(self, mask: Any) -> "CurvePoints":
        obs = self.obs.select(mask)
        return CurvePoints(obs, self.s1[mask], self.s2[mask],
                           {r: self.schedules[r] for r in obs.runs}, self.lam)


def read_curve_points(run_dirs: Sequence[str | Path], drop_early: float = 0.1,
                      lam: float = DEFAULT_LAMBDA, drop_before_step: int = 0) -> CurvePoints:
    if not 0.0 <= drop_early < 1.0:
        raise ScalingError(f"drop-early fraction must lie in [0, 1), got {drop_early}",
                           hint="use e.g. 0.1 to drop the first 10% of each run's tokens")
    if not 0.0 < lam < 1.0:
        raise ScalingError(f"curve lambda must lie in (0, 1), got {lam}",
                           hint="use e.g. 0.99 (a memory of ~100 steps) or 0.999 (~1,000)")
    parts, s1s, s2s, schedules = [], [], [], {}
    for run in map(Path, run_dirs):
        obs = read_run_dir(run)
        config = read_config(run)
        if "optim" not in config or "train" not in config:
            raise ScalingError(f"{run} has no config.yaml with optim and train sections, so its "
                               "learning-rate schedule is unknown",
                               hint="fit it with --approach 3, or rerun it with 'chinchax train'")
        schedule = Schedule.from_config(config)
        if obs.runs[0] in schedules:
            raise ScalingError(f"two runs are named {obs.runs[0]!r}",
                               hint="give runs distinct directory names")
        obs = obs.select(obs.tokens >= drop_early * obs.tokens.max()).drop_before_step(drop_before_step)
        if not len(obs):
            continue  # every eval of this run lies before the step floor
        s1, s2 = schedule.areas_at(obs.step, lam)
        parts.append(obs)
        s1s.append(s1)
        s2s.append(s2)
        schedules[obs.runs[0]] = schedule
    if not parts:
        raise ScalingError("no runs to fit", hint="pass run directories of 'chinchax train' "
                           "(with evals at or after --drop-before-step)")
    return CurvePoints(Observations.concat(parts), np.concatenate(s1s), np.concatenate(s2s),
                       schedules, lam)
