"""wandb beside TensorBoard: offline runs (no network), config and hparams in both, tag names."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from chinchax.errors import TrainingError
from launch.config import load_experiment, resolve
from training.metrics import MetricsWriter, tensorboard_tag
from training.trainer import train
from training.wandb_sink import WandbConfig, WandbSink, wandb_run_id


def _summaries(run_dir: Path) -> dict[str, list]:
    """Tag -> summary values of every TensorBoard events file (TFRecord framing read by hand)."""
    from tensorboardX.proto.event_pb2 import Event

    values: dict[str, list] = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            for value in Event.FromString(data[offset + 12:offset + 12 + length]).summary.value:
                values.setdefault(value.tag, []).append(value)
            offset += 12 + length + 4
    return values


def _offline_run_file(wandb_dir: Path, run_id: str) -> bytes:
    (path,) = wandb_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    return path.read_bytes()


def test_tags_name_the_kind_once() -> None:
    assert tensorboard_tag("eval", "eval_loss") == "eval/loss"
    assert tensorboard_tag("eval", "eval_loss/python") == "eval/loss/python"
    assert tensorboard_tag("train", "loss") == "train/loss"
    assert tensorboard_tag("train", "tokens_per_s") == "train/tokens_per_s"


def test_config_goes_to_tensorboard_as_text_and_hparams(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, enabled=True) as writer:
        writer.log_config({"name": "tiny", "model": {"d_model": 32, "n_kv_heads": None}})
    values = _summaries(tmp_path)
    (text,) = values["config/text_summary"]
    assert b'"d_model": 32' in text.tensor.string_val[0]
    (start,) = values["_hparams_/session_start_info"]
    assert b"model.d_model" in start.metadata.plugin_data.content


def test_offline_sink_logs_records_and_config_without_network(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    sink = WandbSink(WandbConfig(project="chinchax-test", mode="offline"), tmp_path / "run",
                     "tiny", {"model": {"d_model": 32}})
    sink.log("train", {"kind": "train", "step": 1, "loss": 3.0, "finite": True}, 1)
    sink.log("eval", {"kind": "eval", "step": 2, "eval_loss": 2.5}, 2)
    sink.log_config({"seed": 7})
    assert sink.run.config["model"]["d_model"] == 32 and sink.run.config["seed"] == 7
    sink.close()  # commits the last step's row
    raw = _offline_run_file(tmp_path / "wb", wandb_run_id(tmp_path / "run", "tiny"))
    assert b"train/loss" in raw and b"eval/loss" in raw and b"chinchax-test" in raw
    assert b"finite" not in raw and b"eval_loss" not in raw  # booleans skipped, tags as in TB


def test_wandb_settings_are_checked() -> None:
    with pytest.raises(TrainingError, match="mode"):
        WandbConfig(mode="sometimes")
    assert wandb_run_id("runs/a b", "a b") == wandb_run_id("runs/a b", "a b") != wandb_run_id(
        "runs/other", "a b")


def test_a_training_run_logs_to_wandb_offline_and_tensorboard(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    exp = {
        "name": "tiny", "run_dir": str(tmp_path / "run"),
        "model": {"vocab_size": 257, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32},
        "data": {"source": "synthetic", "cache_dir": str(tmp_path / "cache"),
                 "synthetic_documents": 16, "synthetic_document_length": 256},
        "train": {"steps": 2, "global_batch": 8, "seq_len": 16, "eval_every": 2, "eval_batches": 1,
                  "log_every": 1},
        "logging": {"wandb": {"project": "chinchax-test", "mode": "offline"}},
    }
    cfg = resolve(load_experiment(exp))
    assert cfg.logging.wandb == WandbConfig(project="chinchax-test", mode="offline")
    train(cfg)
    raw = _offline_run_file(tmp_path, wandb_run_id(tmp_path / "run", "tiny"))
    assert b"train/loss" in raw and b"eval/loss" in raw and b"d_model" in raw
    values = _summaries(tmp_path / "run")
    assert "eval/loss" in values and "eval/eval_loss" not in values
    assert "config/text_summary" in values
