"""A run's prediction from its scaling law, written before step 1 and checked at every eval.

A trainer hook built here, in launch/, so training/ never imports :mod:`scaling.prediction`.
 ``prediction.json`` in the run directory
holds the predicted final loss with its interval and the predicted curve ``L(N, D_t)`` at each
eval point; each eval is fed to a :class:`~scaling.prediction.DriftMonitor` whose "off the law"
alerts go to the terminal, ``metrics.jsonl`` and TensorBoard; ``summary.json`` gets predicted vs
actual.  On resume the prediction is read back, never recomputed, so it stays the one written
before the run began.

A law fitted on other data (another tokenizer, sequence length, corpus or model family) predicts
a loss of another kind: its prediction is written as informational and raises no alert.  A
curve-law file (``chinchax fit --approach curve``) is reduced at this run's own schedule.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

from etils import epath

from chinchax.errors import ChinchaxError
from scaling.curve_law import CurveLaw
from scaling.identity import identity_differences, identity_of, law_identity
from scaling.laws import Law, get_law, law_file_data
from scaling.lr_schedule import Schedule
from scaling.prediction import Alert, DriftMonitor, PredictionConfig, RunPrediction, predict_run
from scaling.rundir import PREDICTION_NAME, make_run_dir, read_json, write_json
from training.config import RunConfig
from training.data import data_fingerprint
from training.hooks import Hook, Run, hook

log = logging.getLogger("chinchax.train")


class LawWatch:
    """Prediction and drift monitoring for one run; a no-op when no law applies."""

    def __init__(self, cfg: RunConfig, run_dir: epath.Path, *, write: bool) -> None:
        self.cfg: PredictionConfig = cfg.prediction
        self.prediction: Optional[RunPrediction] = None
        self.monitor: Optional[DriftMonitor] = None
        if not self.cfg.enabled or self.cfg.law is None:
            return
        path = run_dir / PREDICTION_NAME
        stored = read_json(path)
        if stored is not None:
            self.prediction = RunPrediction.from_dict(stored)
        else:
            self.prediction = self._predict(cfg)
            if self.prediction is None:
                return
            if write:
                make_run_dir(run_dir)
                write_json(path, self.prediction.to_dict())
            final = self.prediction.final
            log.info("predicted final loss %.4f [%.4f, %.4f] under law %s", final.loss,
                     final.law_lower, final.law_upper, self.prediction.law)
        if self.prediction.informational:
            log.info("law %s was fitted on other data (%s): its prediction is informational, "
                     "no off-the-law alerts", self.prediction.law,
                     "; ".join(self.prediction.identity_differences))
            return
        self.monitor = DriftMonitor(self.prediction, margin=self.cfg.margin,
                                    patience=self.cfg.patience)

    def _predict(self, cfg: RunConfig) -> Optional[RunPrediction]:
        tokens_per_step = cfg.tokens_per_step
        evals = [s * tokens_per_step for s in range(1, cfg.steps + 1)
                 if s % cfg.train.eval_every == 0 or s == cfg.steps]
        try:
            data = law_file_data(str(self.cfg.law))
            prediction = predict_run(_law_for_run(str(self.cfg.law), data, cfg), cfg.run_plan.n_params,
                                     evals, cfg.steps * tokens_per_step, schedule=cfg.optim.schedule,
                                     decay_fraction=cfg.optim.decay_fraction,
                                     wsd_decay_shape=cfg.optim.wsd_decay_shape,
                                     **self.cfg.interval_kwargs())
        except ChinchaxError as exc:  # e.g. a power law, which predicts no loss
            log.warning("no loss prediction for this run: %s", exc)
            return None
        differences = identity_differences(law_identity(data, str(self.cfg.law)), planned_identity(cfg),
                                           ignore=("compute",))  # a loss in N and D: no C in it
        return dataclasses.replace(prediction, identity_differences=tuple(differences))

    def observe(self, step: int, tokens: int, eval_loss: float) -> tuple[dict[str, Any], Optional[Alert]]:
        """Fields to add to the eval record, and an alert if the run left its law."""
        if self.prediction is None:
            return {}, None
        fields: dict[str, Any] = {}
        expected = self.prediction.expected_at(tokens)
        if expected is not None:
            fields.update(predicted_loss=expected.loss, predicted_lower=expected.lower,
                          predicted_upper=expected.upper)
        if self.monitor is None:  # informational: shown, not checked
            return fields, None
        alert = self.monitor.observe(step, tokens, eval_loss)
        if alert is not None:
            fields["off_law"] = alert.to_dict()
        return fields, alert

    def should_stop(self, alert: Optional[Alert]) -> bool:
        return alert is not None and self.cfg.stop_on_alert

    def summary(self, final_eval_loss: Optional[float]) -> Optional[dict[str, Any]]:
        if self.prediction is None:
            return None
        out = {} if self.monitor is None else dict(self.monitor.summary())
        if final_eval_loss is not None:
            out.update(self.prediction.compare_final(final_eval_loss))
        return out


def planned_identity(cfg: RunConfig) -> dict[str, str]:
    """What a law fitted on this run would record (``scaling.identity``), before it trains."""
    config = cfg.to_dict()
    try:
        fingerprint = data_fingerprint(cfg.data) if not cfg.data.mixture else None
    except ChinchaxError:
        fingerprint = None
    return identity_of(config, {"seq_len": cfg.train.seq_len, "model": config["model"],
                                "flops_per_token": cfg.run_plan.flops_per_token,
                                "data": {"fingerprint": fingerprint} if fingerprint else {}})


def _law_for_run(name: str, data: Optional[dict[str, Any]], cfg: RunConfig) -> Law:
    """A curve-law file at this run's schedule (rate, batch, length); any other law as it is."""
    if data is None or not isinstance(data.get("curve"), dict):
        return get_law(name)
    schedule = Schedule.from_config(cfg.to_dict())  # as a fit reads this run's config.yaml
    return CurveLaw.from_dict(data["curve"]).reduced(schedule, name=name,
                                                     source=str(data.get("source", "law file")))


def law_watch_hooks(cfg: RunConfig, *, write: bool) -> list[Hook]:
    """The law watch as a trainer hook: eval records gain the predicted loss, an off-law run
    raises an alert (and stops with ``prediction.stop_on_alert``), summary.json the comparison."""
    watch = LawWatch(cfg, epath.Path(cfg.run_dir), write=write)

    def on_eval(run: Run) -> None:
        if run.last_eval is None:
            return
        fields, alert = watch.observe(run.step, run.tokens, run.last_eval)
        run.eval_fields.update(fields)
        if alert is not None:
            run.alerts.append({"step": run.step, **alert.to_dict(), "message": alert.message})
            if watch.should_stop(alert) and run.stop_reason is None:
                run.stop_reason = "off_law"

    return [hook(on_eval, cfg.train.eval_every,
                 summary=lambda run: {"prediction": watch.summary(run.last_eval)})]
