"""A run's predicted loss with an interval, and the monitor that says when a run is off its law."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from chinchax.errors import ScalingError
from scaling.laws import PUBLISHED_LAWS, ParametricLaw
from scaling.prediction import (DriftMonitor, PredictionConfig, RunPrediction, predict_run, remaining_decay)

LAW = PUBLISHED_LAWS["chinchilla"]
N = 20_000_000
FINAL = 400_000_000
EVALS = [FINAL * k // 20 for k in range(1, 21)]  # 20 evals, the last at the end


def _bootstrapped(n_samples: int = 200, spread: float = 0.02, seed: int = 0) -> ParametricLaw:
    """The Chinchilla law with bootstrap-like replicates scattered around its coefficients."""
    rng = np.random.default_rng(seed)
    centre = np.array([LAW.E, LAW.A, LAW.B, LAW.alpha, LAW.beta, 0.0])
    rows = centre * (1 + spread * rng.standard_normal((n_samples, 6)))
    rows[:, 5] = 0.0
    return ParametricLaw(
        LAW.E,
        LAW.A,
        LAW.B,
        LAW.alpha,
        LAW.beta,
        name="fitted",
        samples=tuple(tuple(r) for r in rows),
    )


# ------------------------------------------------------------------ the prediction


def test_relative_band_for_a_published_law() -> None:
    prediction = predict_run("chinchilla", N, EVALS, FINAL)
    assert prediction.method == "relative-band" and prediction.n_samples == 0
    assert prediction.final_loss == pytest.approx(LAW.loss(N, FINAL))
    assert prediction.interval == pytest.approx(
        (0.97 * prediction.final_loss, 1.03 * prediction.final_loss)
    )
    assert [p.tokens for p in prediction.curve] == EVALS
    for point in prediction.curve:
        assert point.loss == pytest.approx(LAW.loss(N, point.tokens))
        assert point.law_lower < point.loss < point.law_upper
    losses = [p.loss for p in prediction.curve]
    assert all(a > b for a, b in zip(losses, losses[1:]))  # more tokens, lower loss
    wider = predict_run(LAW, N, EVALS, FINAL, relative_band=0.1)
    assert wider.final.law_upper == pytest.approx(1.1 * wider.final_loss)


def test_bootstrap_interval_is_the_replicates_percentiles() -> None:
    law = _bootstrapped()
    prediction = predict_run(law, N, EVALS, FINAL, level=0.8, noise_floor=0.0)
    assert prediction.method == "bootstrap" and prediction.n_samples == 200
    replicate_losses = np.array([s.loss(N, FINAL) for s in law.sample_laws()])
    assert prediction.final.law_lower == pytest.approx(np.quantile(replicate_losses, 0.1))
    assert prediction.final.law_upper == pytest.approx(np.quantile(replicate_losses, 0.9))
    narrow = predict_run(law, N, EVALS, FINAL, level=0.5, noise_floor=0.0)
    wide = predict_run(law, N, EVALS, FINAL, level=0.98, noise_floor=0.0)
    assert (
        wide.final.law_upper - wide.final.law_lower
        > narrow.final.law_upper - narrow.final.law_lower
    )


def test_noise_floor_widens_a_tight_bootstrap() -> None:
    tight = _bootstrapped(spread=1e-6)
    prediction = predict_run(tight, N, EVALS, FINAL, noise_floor=0.01)
    assert prediction.method == "bootstrap"
    assert prediction.interval == pytest.approx(
        (0.99 * prediction.final_loss, 1.01 * prediction.final_loss)
    )


def test_too_few_replicates_fall_back_to_the_band() -> None:
    prediction = predict_run(_bootstrapped(n_samples=5), N, EVALS, FINAL)
    assert prediction.method == "relative-band"
    assert prediction.interval == pytest.approx(
        (0.97 * prediction.final_loss, 1.03 * prediction.final_loss)
    )


def test_final_point_is_always_on_the_curve_and_evals_are_sorted() -> None:
    prediction = predict_run(LAW, N, [FINAL // 2, FINAL // 4, FINAL // 2], FINAL)
    assert [p.tokens for p in prediction.curve] == [FINAL // 4, FINAL // 2, FINAL]
    assert prediction.final == prediction.curve[-1]


def test_json_round_trip() -> None:
    prediction = predict_run(_bootstrapped(), N, EVALS, FINAL, schedule="wsd")
    text = json.dumps(prediction.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["final"]["loss"] == prediction.final_loss and len(data["curve"]) == len(EVALS)
    assert data["coefficients"]["alpha"] == LAW.alpha
    assert RunPrediction.from_dict(data) == prediction
    with pytest.raises(ScalingError, match="not a run prediction"):
        RunPrediction.from_dict({"law": "x"})


# ------------------------------------------------------------------ schedules


def test_remaining_decay_shapes() -> None:
    assert remaining_decay(0.0) == 1.0 and remaining_decay(1.0) == pytest.approx(0.0)
    assert remaining_decay(0.5) == pytest.approx(0.5)
    assert remaining_decay(0.7, "wsd", decay_fraction=0.2) == 1.0
    assert remaining_decay(0.9, "wsd", decay_fraction=0.2) == pytest.approx(0.5)
    assert remaining_decay(
        0.85, "wsd", decay_fraction=0.2, wsd_decay_shape="cosine"
    ) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert remaining_decay(1.0, "constant") == 1.0
    with pytest.raises(ScalingError, match="unknown schedule"):
        remaining_decay(0.5, "linear")


def test_undecayed_points_get_an_upper_allowance_that_closes_at_the_end() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL, undecayed_slack=0.05)
    allowance = [p.upper / p.law_upper - 1 for p in prediction.curve]
    assert all(a >= b for a, b in zip(allowance, allowance[1:]))
    assert allowance[0] == pytest.approx(0.05 * remaining_decay(EVALS[0] / FINAL))
    assert prediction.final.upper == pytest.approx(prediction.final.law_upper)  # strict at the end
    assert all(p.lower == p.law_lower for p in prediction.curve)  # never below the envelope
    wsd = predict_run(LAW, N, EVALS, FINAL, schedule="wsd", decay_fraction=0.2)
    stable = [p for p in wsd.curve if p.progress <= 0.8]
    assert all(p.upper / p.law_upper == pytest.approx(1.05) for p in stable)
    assert wsd.final.upper == pytest.approx(wsd.final.law_upper)
    constant = predict_run(LAW, N, EVALS, FINAL, schedule="constant")
    assert constant.final.upper == pytest.approx(1.05 * constant.final.law_upper)


def test_early_points_are_not_checked() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL, skip_fraction=0.25)
    assert [p.checked for p in prediction.curve] == [
        p.tokens >= 0.25 * FINAL for p in prediction.curve
    ]


def test_expected_at_interpolates_in_log_tokens() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL)
    a, b = prediction.curve[3], prediction.curve[4]
    middle = int(math.sqrt(a.tokens * b.tokens))
    point = prediction.expected_at(middle)
    assert point is not None and min(a.loss, b.loss) < point.loss < max(a.loss, b.loss)
    assert prediction.expected_at(a.tokens) == a
    assert (
        prediction.expected_at(EVALS[0] - 1) is None and prediction.expected_at(FINAL + 1) is None
    )


# ------------------------------------------------------------------ the monitor


def _cosine_run(
    prediction: RunPrediction, gap: float, noise: float = 0.0, seed: int = 0
) -> list[float]:
    """A run on its law whose undecayed checkpoints sit ``gap × remaining decay`` above it."""
    rng = np.random.default_rng(seed)
    return [
        p.loss * (1 + gap * remaining_decay(p.progress)) * (1 + noise * rng.uniform(-1, 1))
        for p in prediction.curve
    ]


def _feed(monitor: DriftMonitor, prediction: RunPrediction, losses: list[float]) -> list:
    return [
        monitor.observe(step, p.tokens, loss)
        for step, (p, loss) in enumerate(zip(prediction.curve, losses), start=1)
    ]


def test_a_run_that_follows_its_law_raises_nothing() -> None:
    prediction = predict_run(_bootstrapped(spread=1e-6), N, EVALS, FINAL)  # ±1% interval
    losses = _cosine_run(prediction, gap=0.04, noise=0.008)
    monitor = DriftMonitor(prediction)
    assert _feed(monitor, prediction, losses) == [None] * len(losses)
    summary = monitor.summary()
    assert summary["alerts"] == 0 and summary["evals_checked"] == sum(
        p.checked for p in prediction.curve
    )
    # compared strictly, the same undecayed checkpoints would look off the law
    strict = predict_run(_bootstrapped(spread=1e-6), N, EVALS, FINAL, undecayed_slack=0.0)
    alerts = [a for a in _feed(DriftMonitor(strict), strict, losses) if a is not None]
    assert alerts and all(a.direction == "above" for a in alerts)


def test_a_run_that_diverges_raises_an_alert_after_patience() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL)
    losses = [p.loss * (1.15 if p.progress > 0.5 else 1.0) for p in prediction.curve]
    monitor = DriftMonitor(prediction, margin=0.02, patience=3)
    results = _feed(monitor, prediction, losses)
    first_off = next(i for i, p in enumerate(prediction.curve) if p.progress > 0.5)
    assert results[: first_off + 2] == [None] * (first_off + 2)
    alert = results[first_off + 2]
    assert alert is not None and alert.direction == "above" and alert.streak == 3
    point = prediction.curve[first_off + 2]
    assert alert.excess == pytest.approx(losses[first_off + 2] / point.upper - 1)
    assert alert.deviation == pytest.approx(0.15)
    assert "above" in alert.message and "off the law" in alert.message
    assert all(r is not None for r in results[first_off + 2 :])  # it stays off: every eval says so
    assert monitor.summary()["first_alert"]["step"] == first_off + 3


def test_below_the_law_is_reported_as_below() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL)
    losses = [p.loss * 0.85 for p in prediction.curve]
    alerts = [a for a in _feed(DriftMonitor(prediction, patience=2), prediction, losses) if a]
    assert alerts and alerts[0].direction == "below"
    assert alerts[0].excess == pytest.approx(1 - 0.85 / 0.97)


def test_patience_resets_when_the_run_comes_back() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL)
    late = [p for p in prediction.curve if p.checked]
    pattern = [
        1.2,
        1.2,
        1.0,
        1.2,
        1.2,
        0.8,
        1.2,
        1.2,
        1.2,
    ]  # off, off, in, off, off, other side, ...
    monitor = DriftMonitor(prediction, patience=3)
    results = [
        monitor.observe(i, p.tokens, p.loss * f) for i, (p, f) in enumerate(zip(late, pattern))
    ]
    assert results[:8] == [None] * 8
    assert results[8] is not None and results[8].streak == 3


def test_a_diverged_loss_is_off_above() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL)
    monitor = DriftMonitor(prediction, patience=1)
    alert = monitor.observe(20, FINAL, float("nan"))
    assert alert is not None and alert.direction == "above" and math.isinf(alert.excess)
    data = alert.to_dict()
    assert data["excess"] is None and data["measured"] is None and "non-finite" in data["message"]
    json.dumps(data, allow_nan=False)


def test_unchecked_evals_neither_count_nor_reset() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL, skip_fraction=0.1)
    monitor = DriftMonitor(prediction, patience=2)
    early = prediction.curve[0]
    assert not early.checked
    assert monitor.observe(1, early.tokens, 100.0) is None and monitor.streak == 0
    late = prediction.curve[-1]
    assert monitor.observe(2, late.tokens, 2 * late.loss) is None
    assert monitor.observe(3, early.tokens, late.loss) is None and monitor.streak == 1
    assert monitor.observe(4, FINAL * 10, 1.0) is None  # beyond the run: not judged
    assert monitor.observe(5, late.tokens, 2 * late.loss) is not None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=20, max_size=20),
    st.sampled_from(["cosine", "wsd", "constant"]),
)
def test_losses_inside_the_interval_never_alert(positions: list[float], schedule: str) -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL, schedule=schedule)
    monitor = DriftMonitor(prediction, margin=0.0, patience=1)
    for step, (p, u) in enumerate(zip(prediction.curve, positions)):
        assert monitor.observe(step, p.tokens, p.lower + u * (p.upper - p.lower)) is None


def test_compare_final_for_the_summary() -> None:
    prediction = predict_run(LAW, N, EVALS, FINAL)
    good = prediction.compare_final(prediction.final_loss * 1.01)
    assert good["inside"] and good["relative_error"] == pytest.approx(0.01)
    assert good["predicted"] == prediction.final_loss and good["method"] == "relative-band"
    bad = prediction.compare_final(prediction.final_loss * 1.2)
    assert not bad["inside"]
    assert prediction.compare_final(float("nan"))["measured"] is None
    json.dumps(bad, allow_nan=False)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: predict_run("chinchilla-approach1", N, EVALS, FINAL), "predicts no loss"),
        (lambda: predict_run("no-such-law", N, EVALS, FINAL), "unknown law"),
        (lambda: predict_run(LAW, 0, EVALS, FINAL), "n_params"),
        (lambda: predict_run(LAW, N, [0, *EVALS], FINAL), "eval tokens"),
        (lambda: predict_run(LAW, N, [*EVALS, FINAL + 1], FINAL), "beyond"),
        (lambda: predict_run(LAW, N, EVALS, FINAL, level=1.0), "level"),
        (lambda: predict_run(LAW, N, EVALS, FINAL, relative_band=0.0), "relative_band"),
        (lambda: predict_run(LAW, N, EVALS, FINAL, schedule="linear"), "schedule"),
        (lambda: predict_run(LAW, N, EVALS, FINAL, decay_fraction=0.0), "decay_fraction"),
        (lambda: DriftMonitor(predict_run(LAW, N, EVALS, FINAL), patience=0), "patience"),
        (lambda: DriftMonitor(predict_run(LAW, N, EVALS, FINAL), margin=-0.1), "margin"),
        (lambda: PredictionConfig(level=2.0), "prediction.level"),
    ],
)
def test_bad_input_is_one_clear_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ScalingError, match=message) as err:
        call()
    assert err.value.hint and "\n" not in str(err.value)


def test_prediction_config_is_structured() -> None:
    merged = OmegaConf.merge(
        OmegaConf.structured(PredictionConfig),
        OmegaConf.create({"law": "epoch-2024", "patience": 5}),
    )
    config = OmegaConf.to_object(merged)
    assert isinstance(config, PredictionConfig) and config.patience == 5
    prediction = predict_run(config.law, N, EVALS, FINAL, **config.interval_kwargs())
    assert prediction.law == "epoch-2024"
