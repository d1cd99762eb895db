"""Metrics: JSON lines, TensorBoard scalars, atomic summary, resume truncation, MFU, progress."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

import training.metrics as metrics_module
from training.metrics import (
    METRICS_NAME,
    SUMMARY_NAME,
    MetricsWriter,
    Progress,
    format_duration,
    mfu,
    read_records,
)
from training.peaks import normalise_device_kind, peak_flops_per_device


def _train_record(step: int, loss: float) -> dict:
    return {
        "step": step,
        "loss": loss,
        "lr": 1e-3,
        "grad_norm": 0.5,
        "tokens": step * 64,
        "flops": step * 64 * 1e6,
        "tokens_per_s": 1000.0,
        "step_time_s": 0.064,
        "achieved_flops_per_s": 1e9,
    }


def _lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines()]


def test_records_are_strict_json_lines_with_their_kind(tmp_path):
    with MetricsWriter(tmp_path, enabled=True, tensorboard=False) as writer:
        writer.log_train(_train_record(10, np.float32(2.5)))
        writer.log_eval({"step": 10, "tokens": 640, "flops": 6.4e8}, eval_loss=np.float64(2.75))
        writer.log_alert(step=11, message="loss spiked", loss=float("nan"))
    records = _lines(tmp_path)
    assert [r["kind"] for r in records] == ["train", "eval", "alert"]
    assert records[0] == {"kind": "train", **_train_record(10, 2.5)}
    assert records[1]["eval_loss"] == 2.75 and records[1]["flops"] == 6.4e8
    assert records[2]["loss"] is None  # NaN is not JSON: written as null
    assert "NaN" not in (tmp_path / METRICS_NAME).read_text()
    assert read_records(tmp_path, "eval") == [records[1]]


def test_a_record_without_step_is_rejected(tmp_path):
    with MetricsWriter(tmp_path, enabled=True, tensorboard=False) as writer:
        with pytest.raises(ValueError, match="step"):
            writer.log_train(loss=1.0)


def test_disabled_writer_is_a_silent_no_op(tmp_path):
    run_dir = tmp_path / "other_host"
    with MetricsWriter(run_dir, enabled=False) as writer:
        writer.log_train(_train_record(1, 1.0))
        writer.write_summary({"final_eval_loss": 1.0})
        assert writer.truncate_after(0) == 0
    assert not run_dir.exists()


def _events(path) -> list:
    """The events of one events file, read with the TFRecord framing by hand (8-byte length,
    4-byte CRC, payload, 4-byte CRC) so the test needs no TensorBoard install."""
    from tensorboardX.proto.event_pb2 import Event

    data, offset, events = path.read_bytes(), 0, []
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    return events


def _event_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in _events(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_gets_the_scalars(tmp_path):
    with MetricsWriter(tmp_path, enabled=True) as writer:
        for step in (1, 2, 3):
            writer.log_train(_train_record(step, 4.0 - step))
        writer.log_eval(step=3, tokens=192, flops=1.9e8, eval_loss=1.5)
    scalars = _event_scalars(tmp_path)
    assert scalars["train/loss"] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert scalars["eval/loss"] == [(3, 1.5)]  # the kind is said once in a tag
    assert "train/kind" not in scalars and "train/step" not in scalars


def test_summary_is_written_atomically_and_replaced_whole(tmp_path):
    with MetricsWriter(tmp_path, enabled=True, tensorboard=False) as writer:
        writer.write_summary({"final_eval_loss": np.float32(2.0), "mfu": None, "n_params": 1000})
        writer.write_summary({"final_eval_loss": 1.5, "flops": 1e15})
    assert json.loads((tmp_path / SUMMARY_NAME).read_text()) == {
        "final_eval_loss": 1.5,
        "flops": 1e15,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_NAME]  # no temp file left


def test_truncate_after_drops_records_past_the_restored_step(tmp_path):
    with MetricsWriter(tmp_path, enabled=True, tensorboard=False) as writer:
        for step in range(1, 8):
            writer.log_train(_train_record(step, 1.0))
        writer.log_eval(step=5, tokens=1, flops=1.0, eval_loss=1.0)
    with open(tmp_path / METRICS_NAME, "a") as handle:
        handle.write('{"kind": "train", "step": 8, "lo')  # torn by the kill
    with MetricsWriter(tmp_path, enabled=True) as resumed:
        assert resumed.truncate_after(5) == 3  # steps 6, 7 and the torn line
        for step in range(6, 9):
            resumed.log_train(_train_record(step, 0.5))
    steps = [(r["kind"], r["step"]) for r in _lines(tmp_path)]
    assert steps == [("train", s) for s in range(1, 6)] + [("eval", 5)] + [
        ("train", s) for s in (6, 7, 8)
    ]
    # TensorBoard files cannot be edited: the resumed events file opens with a purge marker at
    # step 6, which tells TensorBoard to drop older events from step 6 on
    (events_file,) = tmp_path.glob("events.out.tfevents.*")
    starts = [e.step for e in _events(events_file) if e.HasField("session_log")]
    assert starts == [6]


def test_remote_run_dirs_are_rewritten_whole(tmp_path, monkeypatch):
    """Object stores cannot append: the writer keeps the file in memory and rewrites it."""
    monkeypatch.setattr(metrics_module, "is_remote", lambda path: True)
    (tmp_path / METRICS_NAME).write_text(
        json.dumps({"kind": "train", "step": 1})
        + "\n"
        + json.dumps({"kind": "train", "step": 2})
        + "\n"
    )
    writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False, remote_flush_s=3600)
    assert writer.truncate_after(1) == 1
    writer.log_train(step=2, loss=0.25)
    assert [r["step"] for r in _lines(tmp_path)] == [1]  # buffered until flush
    writer.close()
    assert [(r["step"], r.get("loss")) for r in _lines(tmp_path)] == [(1, None), (2, 0.25)]


def test_peak_table_knows_the_accelerators_by_device_kind():
    assert peak_flops_per_device("TPU v4") == 275e12
    assert peak_flops_per_device("TPU v5 lite") == peak_flops_per_device("TPU v5e") == 197e12
    assert peak_flops_per_device("TPU v5") == peak_flops_per_device("TPU v5p") == 459e12
    assert peak_flops_per_device("TPU v6 lite") == peak_flops_per_device("TPU v6e") == 918e12
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_per_device("NVIDIA H200") == 989e12
    assert (
        peak_flops_per_device("NVIDIA A100-SXM4-80GB")
        == peak_flops_per_device("NVIDIA A100 80GB PCIe")
        == 312e12
    )
    assert peak_flops_per_device("cpu") is None and peak_flops_per_device("TPU v4 lite") is None
    assert peak_flops_per_device("Some Future Chip") is None
    assert normalise_device_kind("NVIDIA A100-SXM4-40GB") == "a100 sxm4 40gb"


def test_mfu_divides_by_the_peak_of_all_devices():
    assert mfu(989e12 * 4 * 0.5, "NVIDIA H100 80GB HBM3", 4) == pytest.approx(0.5)
    assert mfu(197e12 * 0.6 * 256, "TPU v5 lite", 256) == pytest.approx(0.6)
    assert mfu(5e10, "cpu", 8) is None


def test_plain_progress_prints_lines_every_n_steps_with_eta_and_loss():
    out = io.StringIO()
    with Progress(total=100, initial=0, log_every=20, stream=out) as progress:
        assert not progress.tty
        for step in range(10, 101, 10):
            progress.update(step, loss=5.0 - step / 50, tok_s=12345.0)
        progress.update(100, eval_loss=2.9)
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == [
        "10/100",
        "30/100",
        "50/100",
        "70/100",
        "90/100",
        "100/100",
        "100/100",
    ]
    assert "loss=4.8" in lines[0] and "tok_s=12.3k" in lines[0]
    assert "eta" in lines[1] and "eta" not in lines[0]  # a rate needs two updates
    assert "eval_loss=2.9" in lines[-1] and "loss=3" in lines[-1]


def test_terminal_progress_draws_a_rich_bar():
    out = io.StringIO()
    with Progress(total=50, initial=10, stream=out, tty=True) as progress:
        progress.update(20, loss=1.25)
        progress.update(50, loss=1.0)
    text = out.getvalue()
    assert "50/50" in text and "loss=1" in text and "eta" in text


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    with Progress(total=10, enabled=False, stream=out) as progress:
        progress.update(10, loss=1.0)
    assert out.getvalue() == ""


def test_eta_and_durations_are_readable(monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: next(clock))
    progress = Progress(total=1000, stream=io.StringIO())
    assert progress.eta_seconds(500) is None
    progress.update(0)  # first update at t=100 starts the rate
    assert progress.eta_seconds(500) == pytest.approx(10.0)  # 500 steps in 10 s, 500 to go
    assert format_duration(3725) == "1h02m05s" and format_duration(65) == "1m05s"
    assert format_duration(4.2) == "4s"
