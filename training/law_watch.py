"""A run's prediction from its scaling law, written before step 1 and checked at every eval.

Wraps :mod:`scaling.prediction` for the trainer: ``prediction.json`` in the run directory
holds the predicted final loss with its interval and the predicted curve ``L(N, D_t)`` at each
eval point; each eval is fed to a :class:`~scaling.prediction.DriftMonitor` whose "off the law"
alerts go to the terminal, ``metrics.jsonl`` and TensorBoard; ``summary.json`` gets predicted vs
actual.  On resume the prediction is read back, never recomputed, so it stays the one written
before the run began.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

from etils import epath

from chinchax.errors import ChinchaxError
from scaling.flops import count_params
from scaling.prediction import Alert, DriftMonitor, PredictionConfig, RunPrediction, predict_run
from training.config import RunConfig

log = logging.getLogger("chinchax.train")

PREDICTION_NAME = "prediction.json"


class LawWatch:
    """Prediction and drift monitoring for one run; a no-op when no law applies."""

    def __init__(self, cfg: RunConfig, run_dir: epath.Path, *, write: bool) -> None:
        self.cfg: PredictionConfig = cfg.prediction
        self.prediction: Optional[RunPrediction] = None
        self.monitor: Optional[DriftMonitor] = None
        if not self.cfg.enabled or self.cfg.law is None:
            return
        path = run_dir / PREDICTION_NAME
        if path.exists():
            self.prediction = RunPrediction.from_dict(json.loads(path.read_text()))
        else:
            self.prediction = self._predict(cfg)
            if self.prediction is None:
                return
            if write:
                path.write_text(json.dumps(self.prediction.to_dict(), indent=1))
            final = self.prediction.final
            log.info("predicted final loss %.4f [%.4f, %.4f] under law %s", final.loss,
                     final.lower, final.upper, self.prediction.law)
        self.monitor = DriftMonitor(self.prediction, margin=self.cfg.margin,
                                    patience=self.cfg.patience)

    def _predict(self, cfg: RunConfig) -> Optional[RunPrediction]:
        tokens_per_step = cfg.tokens_per_step
        evals = [s * tokens_per_step for s in range(1, cfg.steps + 1)
                 if s % cfg.train.eval_every == 0 or s == cfg.steps]
        try:
            return predict_run(self.cfg.law, count_params(cfg.model), evals,
                               cfg.steps * tokens_per_step, schedule=cfg.optim.schedule,
                               decay_fraction=cfg.optim.decay_fraction,
                               wsd_decay_shape=cfg.optim.wsd_decay_shape,
                               **self.cfg.interval_kwargs())
        except ChinchaxError as exc:  # e.g. a power law, which predicts no loss
            log.warning("no loss prediction for this run: %s", exc)
            return None

    def observe(self, step: int, tokens: int, eval_loss: float) -> tuple[dict[str, Any], Optional[Alert]]:
        """Fields to add to the eval record, and an alert if the run left its law."""
        if self.prediction is None or self.monitor is None:
            return {}, None
        fields: dict[str, Any] = {}
        expected = self.prediction.expected_at(tokens)
        if expected is not None:
            fields.update(predicted_loss=expected.loss, predicted_lower=expected.lower,
                          predicted_upper=expected.upper)
        alert = self.monitor.observe(step, tokens, eval_loss)
        if alert is not None:
            fields["off_law"] = alert.to_dict()
        return fields, alert

    def should_stop(self, alert: Optional[Alert]) -> bool:
        return alert is not None and self.cfg.stop_on_alert

    def summary(self, final_eval_loss: Optional[float]) -> Optional[dict[str, Any]]:
        if self.prediction is None or self.monitor is None:
            return None
        out = dict(self.monitor.summary())
        if final_eval_loss is not None:
            out.update(self.prediction.compare_final(final_eval_loss))
        return out
