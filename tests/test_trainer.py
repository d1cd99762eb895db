"""The training loop: exact resume after a kill, SIGTERM, non-finite losses, the run directory."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from chinchax.errors import TrainingError
from launch.cli import main
from launch.cmd_train import train_with_law_watch
from launch.config import load_experiment, resolve
from training.checkpoint import Checkpointer, CheckpointConfig

from training.data import eval_bytes_per_token
from training.metrics import read_records

REPO = Path(__file__).resolve().parent.parent


def tiny_experiment(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A run of a few seconds: a 2-layer model on the synthetic language."""
    exp: dict[str, Any] = {
        "name": "tiny",
        "run_dir": str(tmp_path / "run"),
        "model": {"vocab_size": 257, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
        "data": {
            "source": "synthetic",
            "cache_dir": str(tmp_path / "cache"),
            "synthetic_documents": 64,
            "synthetic_document_length": 1024,
        },
        "train": {
            "steps": 12,
            "global_batch": 8,
            "seq_len": 32,
            "log_every": 1,
            "eval_every": 4,
            "eval_batches": 2,
        },
        "optim": {"learning_rate": 1e-2, "warmup_steps": 2},
        "checkpoint": {"every_steps": 3, "keep_last": 2},
    }
    for key, value in sections.items():
        exp[key] = {**exp.get(key, {}), **value} if isinstance(value, dict) else value
    return exp


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_records(run_dir, "train")}


def run_in_process(exp: dict[str, Any]) -> dict[str, Any]:
    return train_with_law_watch(resolve(load_experiment(exp)))


def test_run_directory_holds_what_a_fit_needs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = run_in_process(tiny_experiment(tmp_path))
    run_dir = tmp_path / "run"
    assert summary["status"] == "complete" and summary["steps"] == 12
    assert json.loads((run_dir / "summary.json").read_text())["n_params"] == summary["n_params"]
    evals = read_records(run_dir, "eval")
    assert [e["step"] for e in evals] == [4, 8, 12]
    assert all(e["tokens"] == e["step"] * 8 * 32 and e["flops"] > 0 for e in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert summary["final_eval_loss"] == evals[-1]["eval_loss"]
    # every eval also in bits per byte (comparable across tokenizers), and the data recorded
    per_token = eval_bytes_per_token(resolve(load_experiment(tiny_experiment(tmp_path))).data)["synthetic"]
    assert 0.9 < per_token <= 1.0  # bytes, plus one end-of-document token per document
    assert evals[-1]["eval_bpb"] == pytest.approx(evals[-1]["eval_loss"] / (math.log(2) * per_token))
    assert summary["final_eval_bpb"] == evals[-1]["eval_bpb"]
    assert summary["data"]["fingerprint"] and summary["data"]["vocab_size"] == 257
    train_records = read_records(run_dir, "train")
    assert [r["step"] for r in train_records] == list(range(1, 13))
    assert all("achieved_flops_per_s" in r and r["lr"] > 0 for r in train_records)
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())
    # the run directory alone is enough to resume; a finished run stays finished, no step repeats
    capsys.readouterr()
    assert main(["train", str(run_dir)]) == 0
    assert "already complete" in capsys.readouterr().err
    assert [r["step"] for r in read_records(run_dir, "train")] == list(range(1, 13))
    kept = json.loads((run_dir / "summary.json").read_text())
    assert kept["status"] == "complete" and kept["final_eval_loss"] == summary["final_eval_loss"]


def test_stop_and_resume_in_process_repeats_the_same_losses(tmp_path: Path) -> None:
    straight = tiny_experiment(tmp_path / "a")
    run_in_process(straight)
    interrupted = tiny_experiment(tmp_path / "b", train={"stop_after_steps": 5})
    assert run_in_process(interrupted)["status"] == "stopped"
    resumed = tiny_experiment(tmp_path / "b")
    assert run_in_process(resumed)["status"] == "complete"
    assert step_losses(tmp_path / "b" / "run") == step_losses(tmp_path / "a" / "run")


def _write_config(tmp_path: Path, exp: dict[str, Any]) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _launch(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", str(config), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended early:\n{proc.stdout.read() if proc.stdout else ''}")
        if (run_dir / "metrics.jsonl").exists() and max(step_losses(run_dir), default=0) >= step:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"step {step} not reached in {timeout} s")


def test_killed_process_resumes_bit_exact(tmp_path: Path) -> None:
    """SIGKILL a real training process mid-run; the resumed run's losses equal a straight run's."""
    straight = tiny_experiment(tmp_path / "a", train={"steps": 20})
    run_in_process(straight)
    exp = tiny_experiment(tmp_path / "b", train={"steps": 20, "eval_every": 100})
    config = _write_config(tmp_path, exp)
    run_dir = tmp_path / "b" / "run"
    proc = _launch(config)
    _wait_for_step(run_dir, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(step_losses(run_dir))
    assert killed_at < 20, "the process finished before it could be killed"
    done = _launch(config)
    output, _ = done.communicate(timeout=180)
    assert done.returncode == 0, output
    expected = step_losses(tmp_path / "a" / "run")
    assert step_losses(run_dir) == expected  # bit for bit, no duplicate or missing step
    restored = Checkpointer(run_dir / "checkpoints", CheckpointConfig(every_steps=3))
    assert restored.latest_step() == 20
    restored.close()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    exp = tiny_experiment(
        tmp_path, train={"steps": 400, "eval_every": 1000}, checkpoint={"every_steps": 1000}
    )
    config = _write_config(tmp_path, exp)
    run_dir = tmp_path / "run"
    proc = _launch(config)
    _wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and 3 <= summary["steps"] < 400
    ckpt = Checkpointer(run_dir / "checkpoints", CheckpointConfig(every_steps=1000))
    assert ckpt.latest_step() == summary["steps"]  # saved although no save was due
    ckpt.close()
    assert "resume" in output


def test_nonfinite_loss_stops_with_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.optim.MAX_LEARNING_RATE", 1e31)  # configs refuse it; force a divergence
    exp = tiny_experiment(
        tmp_path,
        optim={"learning_rate": 1e30, "warmup_steps": 0, "clip_norm": None},
        train={"log_every": 1},
    )
    with pytest.raises(TrainingError, match="non-finite"):
        run_in_process(exp)
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints", CheckpointConfig(every_steps=3))
    steps = ckpt.all_steps()
    ckpt.close()
    bad = [
        r["step"]
        for r in read_records(tmp_path / "run", "train")
        if r["loss"] is None or r["grad_norm"] is None
    ]
    assert bad, "the loss never became non-finite"
    assert all(s < min(bad) for s in steps)  # nothing saved at or after the first bad step


def test_prediction_is_written_first_and_an_off_law_run_is_flagged(tmp_path: Path) -> None:
    law = tmp_path / "far_off_law.json"  # predicts ~10 nats; the run reaches ~3
    law.write_text(
        json.dumps({"form": "parametric", "E": 10.0, "A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3})
    )
    exp = tiny_experiment(
        tmp_path,
        prediction={"law": str(law), "patience": 2, "skip_fraction": 0.0, "stop_on_alert": True},
        train={"steps": 16, "eval_every": 2},
    )
    summary = run_in_process(exp)
    run_dir = tmp_path / "run"
    prediction = json.loads((run_dir / "prediction.json").read_text())
    assert prediction["final"]["loss"] > 9.0
    first_record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first_record["step"] == 1  # prediction.json existed before any step was logged
    alerts = read_records(run_dir, "alert")
    assert alerts and alerts[0]["direction"] == "below" and "off the law" in alerts[0]["message"]
    assert summary["status"] == "off_law" and summary["steps"] == alerts[0]["step"] < 16
    assert summary["prediction"]["alerts"] >= 1


def test_a_run_that_follows_its_law_raises_no_alert(tmp_path: Path) -> None:
    reference = run_in_process(
        tiny_experiment(tmp_path / "ref", train={"steps": 16, "eval_every": 2})
    )
    evals = read_records(tmp_path / "ref" / "run", "eval")
    # a law whose curve passes through this very run's measured losses, fitted loosely:
    # L(D) = E + B / D**beta with E, B, beta from the first and last evals (N fixed)
    import math

    (t1, l1), (t2, l2) = (evals[1]["tokens"], evals[1]["eval_loss"]), (
        evals[-1]["tokens"],
        evals[-1]["eval_loss"],
    )
    beta, e = 0.5, None
    b = (l1 - l2) / (t1**-beta - t2**-beta)
    e = l2 - b * t2**-beta
    law = tmp_path / "own_law.json"
    law.write_text(
        json.dumps({"form": "parametric", "E": e, "A": 0.0, "B": b, "alpha": 0.3, "beta": beta})
    )
    exp = tiny_experiment(
        tmp_path / "b",
        prediction={"law": str(law), "patience": 2, "relative_band": 0.1},
        train={"steps": 16, "eval_every": 2},
    )
    summary = run_in_process(exp)
    assert summary["final_eval_loss"] == reference["final_eval_loss"]
    assert read_records(tmp_path / "b" / "run", "alert") == []
    assert summary["prediction"]["alerts"] == 0 and math.isfinite(
        summary["prediction"]["evals_checked"]
    )


def test_a_run_directory_is_one_run(tmp_path: Path) -> None:
    """Fresh starts drop stale records; a changed rerun refuses unless forced; a lost summary
    is written again in full."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 99, "loss": 1.0}\n')
    assert run_in_process(tiny_experiment(tmp_path, train={"stop_after_steps": 4}))["steps"] == 4
    assert [r["step"] for r in read_records(run_dir, "train")] == [1, 2, 3, 4]
    changed = tiny_experiment(tmp_path, optim={"learning_rate": 5e-2})
    with pytest.raises(TrainingError, match="optim.learning_rate") as refused:
        run_in_process(changed)
    assert "--force" in (refused.value.hint or "")
    harmless = tiny_experiment(tmp_path, train={"log_every": 2, "stop_after_steps": 8})
    assert run_in_process(harmless)["steps"] == 8
    summary = train_with_law_watch(resolve(load_experiment(changed)), force=True)
    assert summary["status"] == "complete" and summary["steps"] == 12
    (run_dir / "summary.json").unlink()  # killed after the final checkpoint, before the summary
    again = run_in_process(changed)
    assert again["status"] == "complete" and again["final_eval_loss"] == summary["final_eval_loss"]
    assert again["tokens_per_s"] > 0 and again["mfu_causal"] == again["mfu"]


def test_skip_counts_nonfinite_updates_and_stops_after_k_in_a_row(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.optim.MAX_LEARNING_RATE", 1e31)  # configs refuse it; force a divergence
    exp = tiny_experiment(
        tmp_path,
        optim={"learning_rate": 1e30, "warmup_steps": 0, "clip_norm": None},
        train={"on_nonfinite": "skip", "max_nonfinite_in_row": 3, "log_every": 1},
    )
    summary = run_in_process(exp)
    assert summary["status"] == "nonfinite" and summary["steps"] < 12
    assert summary["nonfinite_skipped"] >= 3
    alerts = read_records(tmp_path / "run", "alert")
    assert alerts and alerts[-1]["nonfinite_skipped"] == summary["nonfinite_skipped"]


def test_settings_out_of_range_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for bad in ("train.stop_after_steps=0", "train.stop_after_steps=-1",
                "train.max_nonfinite_in_row=0"):
        assert main(["train", str(_write_config(tmp_path, tiny_experiment(tmp_path))), bad,
                     "--print-config"]) == 2
        assert bad.split("=")[0] in capsys.readouterr().err
    assert main(["grow", str(tmp_path), "--factor", "1e9", "--out", str(tmp_path / "g")]) == 2
    assert "above" in capsys.readouterr().err
