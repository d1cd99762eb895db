"""Fault injection: kills, signals, unwritable and full checkpoint folders, a second trainer, and
damaged checkpoint files.  Every fault ends in a resumable run or in one line, never a hang.

What is real and what is simulated: SIGKILL and SIGTERM are real signals to a real
``chinchax train`` process.  A read-only folder is made immutable with ``chattr +i`` when the
tests run as root (root ignores permission bits), else by ``chmod``.  A full disk is simulated
with ``RLIMIT_FSIZE``: a write past the limit fails with EFBIG ("File too large") rather than
ENOSPC, through the same failing-write path in the checkpoint writer.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import numpy as np
import pytest
import yaml

from launch import cmd_train
from launch.config import load_run_config
from models.sharding import make_mesh
from scaling.rundir import RunLock, RunDirError, read_records
from training.checkpoint import CheckpointFallbackWarning, Checkpointer
from training.state import abstract_train_state

REPO = Path(__file__).resolve().parent.parent
STEPS = 40


def _config(root: Path, **train: Any) -> Path:
    exp = {
        "name": "faults", "run_dir": str(root / "run"),
        "model": {"vocab_size": 257, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
        "data": {"source": "synthetic", "cache_dir": str(root / "cache"),
                 "synthetic_documents": 64, "synthetic_document_length": 1024},
        "train": {"steps": STEPS, "global_batch": 8, "seq_len": 32, "log_every": 1,
                  "eval_every": 10, "eval_batches": 2, **train},
        "optim": {"learning_rate": 1e-2, "warmup_steps": 2},
        "checkpoint": {"every_steps": 5, "keep_last": 2},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def _launch(config: Path | str, *extra: str, file_size_limit: Optional[int] = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "launch.cli", "train", str(config), *extra]
    if file_size_limit is not None:  # a write past the limit fails with EFBIG (SIGXFSZ ignored)
        command = ["bash", "-c", f'ulimit -f {file_size_limit // 512}; trap "" XFSZ; exec "$@"',
                   "bash", *command]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _run(config: Path | str, *extra: str, timeout: float = 300, **kw: Any) -> tuple[int, str]:
    proc = _launch(config, *extra, **kw)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_records(run_dir, "train")}


def _final_state(run_dir: Path) -> list[np.ndarray]:
    cfg = load_run_config(run_dir / "config.yaml")
    _, target, _ = abstract_train_state(cfg, make_mesh(cfg.mesh))
    with Checkpointer(run_dir / "checkpoints", cfg.checkpoint) as ckpt:
        restored = ckpt.restore(None, target)
    assert restored.step == cfg.steps
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(restored.state))]


def _assert_one_line_error(out: str, *needles: str) -> None:
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("chinchax train: error:")]
    assert len(errors) == 1, out[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, float], list[np.ndarray]]:
    """An uninterrupted run: its per-step losses and final state."""
    root = tmp_path_factory.mktemp("reference")
    rc, out = _run(_config(root))
    assert rc == 0, out[-3000:]
    return _losses(root / "run"), _final_state(root / "run")


def _wait(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> bool:
    """Poll until ``predicate``; False if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the trainer neither reached the point nor ended")


def _saving(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any("tmp" in p.name for p in folder.iterdir())


@pytest.mark.slow
def test_sigkill_at_random_steps_and_during_saves_resumes_bit_identical(tmp_path, reference) -> None:
    config, run_dir = _config(tmp_path), tmp_path / "run"
    rng = random.Random(0)
    kills = during_save = 0
    while kills < 10:
        proc = _launch(config)
        start = max(_losses(run_dir), default=0)
        if kills % 2:  # during a checkpoint write
            hit = _wait(lambda: _saving(run_dir), proc)
        else:  # at a random step
            target = start + rng.randint(1, 6)
            hit = _wait(lambda: max(_losses(run_dir), default=0) >= target, proc)
        if not hit:
            break  # finished before the kill: fewer trials than planned (asserted below)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        during_save += kills % 2 == 0
    assert kills == 10, f"only {kills} kills landed before the run finished"
    rc, out = _run(config)
    assert rc == 0, out[-3000:]
    losses, state = reference
    assert _losses(run_dir) == losses
    assert all(np.array_equal(a, b) for a, b in zip(_final_state(run_dir), state, strict=True))


def _holds_lock(run_dir: Path, pid: int) -> bool:
    lock = run_dir / ".lock"
    return lock.exists() and f"pid {pid} " in lock.read_text()


def test_sigterm_during_startup_and_compile_exits_cleanly_and_resumes(tmp_path, reference) -> None:
    """SIGTERM right after the trainer takes the lock: it lands while the state is built, data
    is opened and the step compiles; each time the process exits 0 and the run resumes."""
    config, run_dir = _config(tmp_path), tmp_path / "run"
    for _ in range(2):  # a fresh start, then a resume
        proc = _launch(config)
        assert _wait(lambda: _holds_lock(run_dir, proc.pid), proc)
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=240)
        assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
        assert '"status": "preempted"' in out
    rc, out = _run(config)
    assert rc == 0, out[-3000:]
    assert _losses(run_dir) == reference[0]


def _unwritable(path: Path) -> Callable[[], None]:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(path)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o555)
    return lambda: path.chmod(0o755)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["read_only", "full"])
def test_a_failed_save_exits_in_seconds_naming_the_last_good_step(tmp_path, fault, reference) -> None:
    config, run_dir = _config(tmp_path), tmp_path / "run"
    rc, out = _run(config, "train.stop_after_steps=10")
    assert rc == 0, out[-3000:]
    undo: Callable[[], None] = lambda: None
    limit = None
    if fault == "read_only":
        undo = _unwritable(run_dir / "checkpoints")
    else:
        limit = 40_960  # checkpoint data files are larger; records and events are not
    try:
        proc = _launch(config, file_size_limit=limit)
        assert proc.stdout is not None
        last_step_seen = time.time()
        lines = []
        for line in proc.stdout:  # time from the last step printed to the exit
            lines.append(line)
            if line.startswith("train step"):
                last_step_seen = time.time()
        proc.wait(timeout=60)
        exit_after = time.time() - last_step_seen
    finally:
        undo()
    out = "".join(lines)
    assert proc.returncode != 0
    assert exit_after < 30, f"took {exit_after:.1f} s to exit"
    _assert_one_line_error(out, "last good checkpoint: step 10")
    print(f"{fault}: exited {exit_after:.1f} s after the last step")
    assert max(_losses(run_dir)) > 10  # the records were flushed
    rc, out = _run(config)  # writable again: resumes from step 10 to the same result
    assert rc == 0, out[-3000:]
    assert _losses(run_dir) == reference[0]


def test_a_second_trainer_on_one_run_directory_refuses_in_one_line(tmp_path) -> None:
    config, run_dir = _config(tmp_path, steps=100_000, log_every=100), tmp_path / "run"
    first = _launch(config)
    try:
        _wait(lambda: (run_dir / "config.started.yaml").exists(), first)
        rc, out = _run(config, timeout=240)
        assert rc == 2
        _assert_one_line_error(out, "is in use by pid", str(first.pid))
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=240)
    assert first.returncode == 0
    with RunLock(run_dir):  # released by the first trainer's exit (a crash releases it too)
        with pytest.raises(RunDirError, match="is in use by pid"):
            RunLock(run_dir).acquire()


@pytest.fixture(scope="module")
def stopped_at_10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped at step 10: checkpoints at steps 5 and 10."""
    root = tmp_path_factory.mktemp("stopped")
    rc, out = _run(_config(root), "train.stop_after_steps=10")
    assert rc == 0, out[-3000:]
    return root


def _truncate_data(step_dir: Path) -> None:
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:7])


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "extra_metadata_empty": lambda d: (d / "extra" / "metadata").write_text("{}"),
    "extra_metadata_garbled": lambda d: (d / "extra" / "metadata").write_bytes(b"\xff\x00{"),
    "state_metadata_garbled": lambda d: (d / "state" / "_METADATA").write_text("{not json"),
    "state_manifest_removed": lambda d: [p.unlink() for p in (d / "state").rglob("manifest.ocdbt")],
    "state_data_truncated": _truncate_data,
    "sharding_garbled": lambda d: (d / "state" / "_sharding").write_text("garbage"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, stopped_at_10, kind) -> None:
    shutil.copytree(stopped_at_10, tmp_path / "copy")
    run_dir = tmp_path / "copy" / "run"
    CORRUPTIONS[kind](run_dir / "checkpoints" / "10")
    cfg = load_run_config(run_dir / "config.yaml")
    _, target, _ = abstract_train_state(cfg, make_mesh(cfg.mesh))
    with Checkpointer(run_dir / "checkpoints", cfg.checkpoint) as ckpt:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            restored = ckpt.restore(None, target, require=("data",))
    assert restored.step == 5 and "data" in restored.extra
    assert any(issubclass(w.category, CheckpointFallbackWarning) for w in caught)


def test_a_read_error_nobody_retrieves_goes_to_the_debug_log_not_the_screen(caplog) -> None:
    # What orbax leaves behind when one of a damaged step's concurrent reads fails: a sibling task
    # whose error asyncio reports (with its traceback) once the task is collected.
    async def damaged_read() -> None:
        raise ValueError('OUT_OF_RANGE: Error opening "zarr" driver')

    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(cmd_train._NO_ORPHANED_READS)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="chinchax.checkpoint")  # an earlier run may have set INFO
    try:
        loop = asyncio.new_event_loop()
        task = loop.create_task(damaged_read())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert task.done()
        del task
        gc.collect()
        loop.close()
    finally:
        asyncio_log.removeFilter(cmd_train._NO_ORPHANED_READS)
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]
    kept = [r for r in caplog.records if r.name == "chinchax.checkpoint"]
    assert len(kept) == 1 and kept[0].levelno == logging.DEBUG
    assert "never retrieved" in kept[0].getMessage() and kept[0].exc_info[0] is ValueError


@pytest.mark.parametrize("kind", ["extra_metadata_empty", "state_data_truncated"])
def test_the_trainer_resumes_past_a_damaged_step_without_stray_tracebacks(tmp_path, stopped_at_10,
                                                                          kind) -> None:
    shutil.copytree(stopped_at_10, tmp_path / "copy")
    run_dir = tmp_path / "copy" / "run"
    CORRUPTIONS[kind](run_dir / "checkpoints" / "10")
    rc, out = _run(run_dir)  # the run directory form: trains into this copy, to the end
    assert rc == 0 and "Traceback" not in out and "Event loop is closed" not in out, out[-3000:]
    assert "resuming" in out and "from step 5 of 40" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == STEPS
    assert max(_losses(stopped_at_10 / "run")) == 10  # the original is untouched
