"""What a run reports.  ``metrics.jsonl`` (``train``, ``eval``, ``alert`` records) is the record
of truth that scaling fits read; TensorBoard, wandb and the progress bar are views of it.
Only process 0 writes; object stores cannot append, so they get the whole file rewritten."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping, Optional, Sequence, TextIO

import numpy as np
from etils import epath

from scaling.rundir import (METRICS_NAME, SUMMARY_NAME, RunSummary, dumps, is_remote,
                            keep_records_through, plain, read_records, read_text, write_summary,
                            write_text)
from training.peaks import peak_flops_per_device

log = logging.getLogger("chinchax.metrics")


def mfu(flops_per_s: float, device_kind: str, n_devices: int) -> Optional[float]:
    """Achieved model FLOP/s over the devices' dense bf16 peak; None where no peak is known."""
    peak = peak_flops_per_device(device_kind)
    if peak is None or n_devices <= 0:
        return None
    return float(flops_per_s) / (peak * n_devices)


def tensorboard_tag(kind: str, name: str) -> str:
    """``eval`` + ``eval_loss/python`` -> ``eval/loss/python``: the kind is said once."""
    return f"{kind}/{name.removeprefix(kind + '_')}"


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"d_model": 64}}`` -> ``{"model.d_model": 64}``, other types as text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class MetricsWriter:
    """TensorBoard events go to ``run_dir`` itself, so ``tensorboard --logdir runs/`` lists runs by
    name; a disabled writer (not process 0) is a no-op, so callers need no checks."""

    def __init__(self, run_dir: epath.PathLike, *, enabled: bool, tensorboard: bool = True,
                 remote_flush_s: float = 30.0, sinks: Sequence[Any] = ()) -> None:
        self.run_dir = epath.Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / METRICS_NAME
        self._remote = is_remote(self.run_dir)
        self._remote_flush_s = remote_flush_s
        self._tensorboard_wanted = tensorboard
        self._tensorboard: Any = None
        self._purge_step: Optional[int] = None
        self._file: Optional[Any] = None
        self._lines: list[str] = []  # remote: the whole file, rewritten on flush
        self._dirty = False
        self._last_flush = time.monotonic()
        self.sinks = list(sinks)  # e.g. training.wandb_sink.WandbSink: log, log_config, close
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._remote and self.path.exists():
            self._lines = read_text(self.path).splitlines(keepends=True)

    def log_train(self, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> dict:
        return self.write("train", record, **fields)

    def log_eval(self, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> dict:
        return self.write("eval", record, **fields)

    def log_alert(self, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> dict:
        """Something a person should see later; also logged as a warning."""
        written = self.write("alert", record, **fields)
        if self.enabled:
            log.warning("step %s: %s", written.get("step"), written.get("message", ""))
        return written

    def write(self, kind: str, record: Optional[Mapping[str, Any]] = None, **fields: Any) -> dict:
        """Returns the record as written (non-finite floats as ``null``)."""
        merged = {"kind": kind, **dict(record or {}), **fields}
        if "step" not in merged:
            raise ValueError(f"a {kind} record needs a 'step' field, got keys {sorted(merged)}")
        merged["step"] = int(merged["step"])
        line = dumps(merged)
        written = json.loads(line)
        if not self.enabled:
            return written
        self._append_line(line + "\n")
        self._write_tensorboard(kind, written)
        for sink in self.sinks:
            sink.log(kind, written, written["step"])
        return written

    def log_config(self, config: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        writer = self._tensorboard_writer()
        if writer is not None:
            from tensorboardX.summary import hparams

            values = plain(config)
            writer.add_text("config", "```\n" + dumps(values, indent=2) + "\n```", 0)
            for summary in hparams(flat_hparams(values), {"eval/loss": 0.0}):
                writer.file_writer.add_summary(summary)
            writer.flush()
        for sink in self.sinks:
            sink.log_config(config)

    def _append_line(self, line: str) -> None:
        if self._remote:
            self._lines.append(line)
            self._dirty = True
            if time.monotonic() - self._last_flush >= self._remote_flush_s:
                self.flush()
            return
        if self._file is None:
            self._file = self.path.open("a")
        self._file.write(line)
        self._file.flush()

    def _write_tensorboard(self, kind: str, record: Mapping[str, Any]) -> None:
        writer = self._tensorboard_writer()
        if writer is None:
            return
        step = record["step"]
        for name, value in record.items():
            if name in ("kind", "step") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                writer.add_scalar(tensorboard_tag(kind, name), value, step)
        if kind == "alert" and "message" in record:
            writer.add_text("alert", str(record["message"]), step)
        writer.flush()

    def _tensorboard_writer(self) -> Any:
        if self._tensorboard is None and self._tensorboard_wanted:
            try:
                from tensorboardX import SummaryWriter

                self._tensorboard = SummaryWriter(logdir=os.fspath(self.run_dir),
                                                  purge_step=self._purge_step, flush_secs=30)
            except Exception as error:  # e.g. gs:// without google-cloud-storage installed
                log.warning("TensorBoard events disabled for %s: %s", self.run_dir, error)
                self._tensorboard_wanted = False
        return self._tensorboard

    def truncate_after(self, step: int) -> int:
        """Drop records past ``step`` (a resume writes them again).  TensorBoard files cannot be
        edited, so the next one starts with a purge marker at ``step + 1``."""
        if not self.enabled:
            return 0
        self._purge_step = step + 1
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._remote:
            lines = self._lines
        else:
            lines = read_text(self.path).splitlines() if self.path.exists() else []
        kept = keep_records_through(lines, step)
        if self._remote:
            self._lines, self._dirty = kept, True
            self.flush()
        elif lines:
            write_text(self.path, "".join(kept))
        return len(lines) - len(kept)

    def write_summary(self, summary: RunSummary | Mapping[str, Any]) -> None:
        if self.enabled:
            write_summary(self.run_dir, summary)

    def flush(self) -> None:
        if not self.enabled:
            return
        if self._remote and self._dirty:
            self.path.write_text("".join(self._lines))
            self._dirty = False
        self._last_flush = time.monotonic()
        if self._tensorboard is not None:
            self._tensorboard.flush()

    def close(self) -> None:
        """Safe to call twice."""
        if not self.enabled:
            return
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    for threshold, unit, suffix in ((1e12, 1e12, "T"), (1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if magnitude >= threshold:
            return f"{value / unit:.3g}{suffix}"
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """``3725 -> '1h02m05s'``, ``65 -> '1m05s'``, ``4.2 -> '4s'``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """A rich bar in a terminal; otherwise a line every ``log_every`` steps and at every ``eval*``
    field, so batch logs stay short but never miss a held-out loss."""

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, log_every: int = 1,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None) -> None:
        self.total = total
        self.initial = initial
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.stream = stream if stream is not None else sys.stdout
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.fields: dict[str, Any] = {}
        self._rich: Any = None
        self._task: Any = None
        self._last_printed: Optional[int] = None
        self._rate_origin: Optional[tuple[float, int]] = None  # (time, step) of the first update

    def __enter__(self) -> "Progress":
        if self.enabled and self.tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream, force_terminal=True), transient=False)
            self._rich.start()
            self._task = self._rich.add_task("train", total=self.total,
                                             completed=self.initial, info="")
        return self

    def eta_seconds(self, step: int) -> Optional[float]:
        """At the rate seen since the first update."""
        if self._rate_origin is None:
            return None
        start_time, start_step = self._rate_origin
        done = step - start_step
        if done <= 0:
            return None
        rate = done / max(time.monotonic() - start_time, 1e-9)
        return (self.total - step) / rate

    def _info(self) -> str:
        return "  ".join(f"{name}={_format_value(value)}" for name, value in self.fields.items())

    def line(self, step: int) -> str:
        percent = 100.0 * step / self.total if self.total else 100.0
        eta = self.eta_seconds(step)
        eta_text = f"  eta {format_duration(eta)}" if eta is not None else ""
        info = self._info()
        return f"train step {step}/{self.total} ({percent:.0f}%){eta_text}" + (
            f"  {info}" if info else "")

    def update(self, step: int, **fields: Any) -> None:
        if not self.enabled:
            return
        self.fields.update(fields)
        if self._rate_origin is None:
            self._rate_origin = (time.monotonic(), step)
        if self._rich is not None:
            self._rich.update(self._task, completed=step, info=self._info())
            return
        fresh_eval = any(name.startswith("eval") for name in fields)
        due = (self._last_printed is None or step - self._last_printed >= self.log_every
               or (step >= self.total and step != self._last_printed))
        if due or fresh_eval:
            print(self.line(step), file=self.stream, flush=True)
            self._last_printed = step

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
