"""A run's predicted loss curve, stated before it starts, and a monitor that flags drift from it.

The interval is bootstrap quantiles widened to ``± noise_floor`` (replicates carry the law's
uncertainty, not seed noise), else ``± relative_band`` (3%, under the Hitchhiker's guide's ~4%
held-out error).  Mid-run checkpoints have not annealed, so the upper bound gains
``undecayed_slack × remaining decay``; the first ``skip_fraction`` of a run is not checked.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from chinchax.errors import ScalingError
from scaling.laws import Law, ParametricLaw, get_law


DEFAULT_LEVEL = 0.9
DEFAULT_RELATIVE_BAND = 0.03
DEFAULT_NOISE_FLOOR = 0.01
DEFAULT_UNDECAYED_SLACK = 0.05
DEFAULT_SKIP_FRACTION = 0.1
DEFAULT_MARGIN = 0.02
DEFAULT_PATIENCE = 3
MIN_BOOTSTRAP_SAMPLES = 10
SCHEDULES = ("cosine", "wsd", "constant")
WSD_DECAY_SHAPES = ("linear", "cosine")


# ==================================================================================== config
@dataclass(frozen=True)
class PredictionConfig:
    """A run's ``prediction:`` settings; ``law=None`` falls back to the ``budget:`` law.

    ``margin`` is the relative distance outside the interval that counts, ``patience`` how many
    evals in a row.
    """

    enabled: bool = True
    law: Optional[str] = None
    level: float = DEFAULT_LEVEL
    relative_band: float = DEFAULT_RELATIVE_BAND
    noise_floor: float = DEFAULT_NOISE_FLOOR
    undecayed_slack: float = DEFAULT_UNDECAYED_SLACK
    skip_fraction: float = DEFAULT_SKIP_FRACTION
    margin: float = DEFAULT_MARGIN
    patience: int = DEFAULT_PATIENCE
    stop_on_alert: bool = False

    def __post_init__(self) -> None:
        _check_interval_settings(self.level, self.relative_band, self.noise_floor,
                                 self.undecayed_slack, self.skip_fraction, prefix="prediction.")
        _check_monitor_settings(self.margin, self.patience, prefix="prediction.")

    def interval_kwargs(self) -> dict[str, float]:
        return dict(level=self.level, relative_band=self.relative_band,
                    noise_floor=self.noise_floor, undecayed_slack=self.undecayed_slack,
                    skip_fraction=self.skip_fraction)


def _fraction(name: str, value: Any, *, low_open: bool, high_open: bool, hint: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ScalingError(f"{name} must be in {interval}, got {value!r}", hint=hint)


def _check_interval_settings(level: Any, relative_band: Any, noise_floor: Any, undecayed_slack: Any,
                             skip_fraction: Any, prefix: str = "") -> None:
    for name, value, low_open, hint in (
            ("level", level, True, "use e.g. 0.9 for a 90% interval"),
            ("relative_band", relative_band, True, "use e.g. 0.03 for ±3%"),
            ("noise_floor", noise_floor, False, "use e.g. 0.01 for at least ±1%"),
            ("undecayed_slack", undecayed_slack, False, "use e.g. 0.05, or 0 to compare mid-run checkpoints strictly"),
            ("skip_fraction", skip_fraction, False, "use e.g. 0.1 to leave the first 10% of the run unchecked")):
        _fraction(f"{prefix}{name}", value, low_open=low_open, high_open=True, hint=hint)


def _check_monitor_settings(margin: Any, patience: Any, prefix: str = "") -> None:
    _fraction(f"{prefix}margin", margin, low_open=False, high_open=True,
              hint="use e.g. 0.02 for 2% outside the interval")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ScalingError(f"{prefix}patience must be a positive integer, got {patience!r}",
                              hint="use e.g. 3 (evals in a row outside the interval)")


# ==================================================================================== schedule
def remaining_decay(progress: float, schedule: str = "cosine", *, decay_fraction: float = 0.2,
                    wsd_decay_shape: str = "linear") -> float:
    """Fraction of the learning-rate decay still ahead at ``progress`` ∈ [0, 1]; warmup ignored.

    Schedules as in ``training/optim.py``.
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "wsd":
        start = 1.0 - decay_fraction
        if p <= start:
            return 1.0
        into = (p - start) / decay_fraction
        return 1.0 - into if wsd_decay_shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * into))
    raise ScalingError(f"unknown schedule {schedule!r}", hint=f"use one of {', '.join(SCHEDULES)}")


# ==================================================================================== prediction
@dataclass(frozen=True)
class PredictedPoint:
    """``L(N, D_t)`` with the law's interval and the monitor's (``upper`` carries the slack)."""

    tokens: int
    progress: float
    loss: float
    law_lower: float
    law_upper: float
    lower: float
    upper: float
    checked: bool


@dataclass(frozen=True)
class RunPrediction:
    """A run's predicted final loss and loss curve; :meth:`to_dict` is ``prediction.json``."""

    law: str
    law_source: str
    coefficients: Dict[str, float]
    n_params: int
    final_tokens: int
    level: float
    method: str  # "bootstrap" or "relative-band"
    n_samples: int
    relative_band: float
    noise_floor: float
    schedule: str
    decay_fraction: float
    wsd_decay_shape: str
    undecayed_slack: float
    skip_fraction: float
    final: PredictedPoint
    curve: Tuple[PredictedPoint, ...] = field(default=())
    # fields where the law was fitted on something else than the run (tokenizer, data, ...)
    identity_differences: Tuple[str, ...] = field(default=())

    @property
    def informational(self) -> bool:
        """A law of another identity predicts a loss of another kind: shown, never alerted on."""
        return bool(self.identity_differences)

    @property
    def final_loss(self) -> float:
        return self.final.loss

    @property
    def interval(self) -> tuple[float, float]:
        return (self.final.law_lower, self.final.law_upper)

    def expected_at(self, tokens: float) -> Optional[PredictedPoint]:
        """A curve point or a log-linear interpolation; ``None`` outside the curve."""
        positions = [p.tokens for p in self.curve]
        if not positions or tokens < positions[0] or tokens > positions[-1]:
            return None
        i = bisect.bisect_left(positions, tokens)
        if positions[i] == tokens:
            return self.curve[i]
        before, after = self.curve[i - 1], self.curve[i]
        w = math.log(tokens / before.tokens) / math.log(after.tokens / before.tokens)
        mix = {name: (1 - w) * getattr(before, name) + w * getattr(after, name)
               for name in ("loss", "law_lower", "law_upper", "lower", "upper")}
        progress = tokens / self.final_tokens
        return PredictedPoint(tokens=int(tokens), progress=progress, checked=progress >= self.skip_fraction,
                              **mix)

    def compare_final(self, measured: float) -> dict[str, Any]:
        """For ``summary.json``; ``inside`` is against the law's interval, without slack."""
        finite = isinstance(measured, (int, float)) and math.isfinite(measured)
        return {
            "law": self.law,
            "predicted": self.final.loss,
            "lower": self.final.law_lower,
            "upper": self.final.law_upper,
            "level": self.level if self.method == "bootstrap" else None,
            "method": self.method,
            "measured": float(measured) if finite else None,
            "relative_error": (measured / self.final.loss - 1.0) if finite else None,
            "inside": bool(finite and self.final.law_lower <= measured <= self.final.law_upper),
            **({"informational": True, "identity_differences": list(self.identity_differences)}
               if self.informational else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["curve"] = [asdict(p) for p in self.curve]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunPrediction":
        try:
            values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            values["final"] = PredictedPoint(**data["final"])
            values["curve"] = tuple(PredictedPoint(**p) for p in data.get("curve", ()))
            values["identity_differences"] = tuple(data.get("identity_differences", ()))
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise ScalingError(f"not a run prediction ({exc})",
                                  hint="regenerate prediction.json by starting the run again") from None


def _loss_model(law: Union[str, Path, Law]) -> ParametricLaw:
    if isinstance(law, (str, Path)):
        law = get_law(law)
    if not isinstance(law, ParametricLaw):
        raise ScalingError(
            f"law {getattr(law, 'name', law)!r} predicts no loss, so a run cannot be predicted with it",
            hint="use a parametric law ('chinchilla', 'epoch-2024') or an approach-3 law file")
    return law


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ScalingError(f"{name} must be a positive number, got {value!r}",
                              hint="pass the run's parameter count and token counts (> 0)")
    return float(value)


def bootstrap_bounds(replicates: np.ndarray, loss: np.ndarray, level: float,
                     noise_floor: float = DEFAULT_NOISE_FLOOR) -> tuple[np.ndarray, np.ndarray, int]:
    """Quantiles of the finite replicate rows (replicates × points), widened to ``± noise_floor``
    around ``loss``; empty bounds when fewer than ``MIN_BOOTSTRAP_SAMPLES`` replicates are finite."""
    rows = replicates.reshape(len(replicates), -1) if len(replicates) else np.empty((0, 0))
    rows = rows[np.isfinite(rows).all(axis=1)]
    if len(rows) < MIN_BOOTSTRAP_SAMPLES:
        return np.array([]), np.array([]), len(rows)
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(rows, [tail, 1.0 - tail], axis=0)
    return (np.minimum(lower, loss * (1.0 - noise_floor)), np.maximum(upper, loss * (1.0 + noise_floor)),
            len(rows))


def _check_schedule(schedule: str, decay_fraction: float, wsd_decay_shape: str) -> None:
    if schedule not in SCHEDULES:
        raise ScalingError(f"unknown schedule {schedule!r}", hint=f"use one of {', '.join(SCHEDULES)}")
    if wsd_decay_shape not in WSD_DECAY_SHAPES:
        raise ScalingError(f"unknown WSD decay shape {wsd_decay_shape!r}",
                           hint=f"use one of {', '.join(WSD_DECAY_SHAPES)}")
    _fraction("decay_fraction", decay_fraction, low_open=True, high_open=False,
              hint="the share of the run spent decaying, e.g. 0.2")


def _law_bounds(model: ParametricLaw, n: float, tokens: np.ndarray, loss: np.ndarray, level: float,
                relative_band: float, noise_floor: float) -> tuple[str, np.ndarray, np.ndarray, int]:
    replicates = np.array([sample.loss(n, tokens) for sample in model.sample_laws()], dtype=np.float64)
    lower, upper, n_samples = bootstrap_bounds(replicates, loss, level, noise_floor)
    if lower.size:
        return "bootstrap", lower, upper, n_samples
    return "relative-band", loss * (1.0 - relative_band), loss * (1.0 + relative_band), n_samples


def predict_run(
    law: Union[str, Path, Law],
    n_params: float,
    tokens_at_evals: Sequence[float],
    final_tokens: float,
    *,
    level: float = DEFAULT_LEVEL,
    relative_band: float = DEFAULT_RELATIVE_BAND,
    noise_floor: float = DEFAULT_NOISE_FLOOR,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
    wsd_decay_shape: str = "linear",
    undecayed_slack: float = DEFAULT_UNDECAYED_SLACK,
    skip_fraction: float = DEFAULT_SKIP_FRACTION,
) -> RunPrediction:
    """The law's curve at ``tokens_at_evals`` (each in ``(0, final_tokens]``) plus the final point."""
    model = _loss_model(law)
    n = _positive("n_params", n_params)
    final = _positive("final_tokens", final_tokens)
    _check_interval_settings(level, relative_band, noise_floor, undecayed_slack, skip_fraction)
    _check_schedule(schedule, decay_fraction, wsd_decay_shape)
    points = sorted({_positive("eval tokens", t) for t in tokens_at_evals} | {final})
    if points[-1] > final:
        raise ScalingError(f"an eval point at {points[-1]:.6g} tokens lies beyond the run's "
                              f"final {final:.6g} tokens",
                              hint="pass only evals within the run (tokens = step × batch × seq_len)")
    tokens = np.array(points, dtype=np.float64)
    loss = np.asarray(model.loss(n, tokens), dtype=np.float64)
    if not np.all(np.isfinite(loss)):
        raise ScalingError(f"law {model.name} predicts a non-finite loss for N={n:.4g}",
                           hint="check the law's coefficients (E, A, B, alpha, beta) are finite")
    method, law_lower, law_upper, n_samples = _law_bounds(model, n, tokens, loss, level,
                                                          relative_band, noise_floor)
    curve = []
    for i, t in enumerate(points):
        progress = t / final
        slack = undecayed_slack * remaining_decay(progress, schedule, decay_fraction=decay_fraction,
                                                  wsd_decay_shape=wsd_decay_shape)
        curve.append(PredictedPoint(
            tokens=int(round(t)), progress=progress, loss=float(loss[i]),
            law_lower=float(law_lower[i]), law_upper=float(law_upper[i]),
            lower=float(law_lower[i]), upper=float(law_upper[i] * (1.0 + slack)),
            checked=progress >= skip_fraction))
    return RunPrediction(
        law=model.name, law_source=model.source,
        coefficients={k: float(getattr(model, k)) for k in ("E", "A", "B", "alpha", "beta", "gamma")},
        n_params=int(round(n)), final_tokens=int(round(final)), level=float(level), method=method,
        n_samples=n_samples, relative_band=float(relative_band), noise_floor=float(noise_floor),
        schedule=schedule, decay_fraction=float(decay_fraction), wsd_decay_shape=wsd_decay_shape,
        undecayed_slack=float(undecayed_slack), skip_fraction=float(skip_fraction),
        final=curve[-1], curve=tuple(curve),
    )


# ==================================================================================== monitor
@dataclass(frozen=True)
class Alert:
    """``patience`` or more evals in a row outside the interval by ``margin``; ``excess`` is
    relative to the bound, ``deviation`` to the prediction."""

    step: int
    tokens: int
    measured: float
    predicted: float
    lower: float
    upper: float
    direction: str
    excess: float
    deviation: float
    streak: int
    margin: float

    @property
    def message(self) -> str:
        where = f"at step {self.step} ({self.tokens:.3g} tokens)"
        interval = f"the predicted interval [{self.lower:.4g}, {self.upper:.4g}] (law: {self.predicted:.4g})"
        if math.isfinite(self.excess):
            what = f"eval loss {self.measured:.4g} {where} is {self.excess:.1%} {self.direction} {interval}"
        else:
            what = f"eval loss {self.measured} {where} is non-finite, far {self.direction} {interval}"
        return f"off the law: {what} for {self.streak} eval{'s' if self.streak != 1 else ''} in a row"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in asdict(self).items()}
        out["message"] = self.message
        return out


class DriftMonitor:
    """Alerts on each eval that extends a streak of ``patience`` off evals on one side.

    Unchecked evals neither count nor reset the streak; a non-finite loss counts as above.
    """

    def __init__(self, prediction: RunPrediction, *, margin: float = DEFAULT_MARGIN,
                 patience: int = DEFAULT_PATIENCE) -> None:
        _check_monitor_settings(margin, patience)
        self.prediction = prediction
        self.margin = float(margin)
        self.patience = patience
        self.streak = 0
        self.direction: Optional[str] = None
        self.checked = 0
        self.alerts = 0
        self.first_alert: Optional[Alert] = None

    def observe(self, step: int, tokens: float, eval_loss: float) -> Optional[Alert]:
        point = self.prediction.expected_at(tokens)
        if point is None or not point.checked:
            return None
        self.checked += 1
        loss = float(eval_loss)
        if not math.isfinite(loss):
            direction, excess = "above", math.inf
        elif loss > point.upper * (1.0 + self.margin):
            direction, excess = "above", loss / point.upper - 1.0
        elif loss < point.lower * (1.0 - self.margin):
            direction, excess = "below", 1.0 - loss / point.lower
        else:
            self.streak, self.direction = 0, None
            return None
        self.streak = self.streak + 1 if direction == self.direction else 1
        self.direction = direction
        if self.streak < self.patience:
            return None
        alert = Alert(step=int(step), tokens=int(tokens), measured=loss, predicted=point.loss,
                      lower=point.lower, upper=point.upper, direction=direction, excess=excess,
                      deviation=loss / point.loss - 1.0 if math.isfinite(loss) else math.inf,
                      streak=self.streak, margin=self.margin)
        self.alerts += 1
        if self.first_alert is None:
            self.first_alert = alert
        return alert

    def summary(self) -> dict[str, Any]:
        return {"evals_checked": self.checked, "alerts": self.alerts, "margin": self.margin,
                "patience": self.patience,
                "first_alert": None if self.first_alert is None else self.first_alert.to_dict()}
