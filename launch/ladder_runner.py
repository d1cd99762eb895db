"""Training a ladder's runs: in this process or as ``chinchax train`` subprocesses on disjoint
GPU groups, reading their run directories' state, and mirroring remote ones locally."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from etils import epath

from chinchax.errors import ScalingError
from scaling.ladder import rung_status
from scaling.rundir import (CHECKPOINTS_DIR, METRICS_NAME, PREDICTION_NAME, SUMMARY_NAME, RunDirError,
                            is_remote, read_summary)

LOGS_DIR = "logs"
MIRROR_DIR = "mirror"


def run_state(run_dir: str | epath.Path) -> tuple[str, Optional[dict[str, Any]]]:
    """``(status, summary)`` of a run directory: ``complete``, ``partial`` or ``new``."""
    path = epath.Path(run_dir)
    if not path.exists():
        return "new", None
    try:
        summary = read_summary(path)
    except RunDirError:
        summary = None  # absent or unreadable: the rung resumes and rewrites it
    checkpoints = path / CHECKPOINTS_DIR
    return rung_status(summary, checkpoints.exists() and any(True for _ in checkpoints.iterdir())), summary


def local_copy(ladder_dir: Path, run_dir: str, name: str) -> Path:
    """The run directory itself when local; else its summary and metrics copied under mirror/."""
    if not is_remote(run_dir):
        return Path(run_dir)
    local = ladder_dir / MIRROR_DIR / name
    local.mkdir(parents=True, exist_ok=True)
    for file in (SUMMARY_NAME, METRICS_NAME, PREDICTION_NAME):
        remote = epath.Path(run_dir) / file
        if remote.exists():
            (local / file).write_text(remote.read_text())
    return local


# ================================================================================== runners
class Runner:
    """Trains experiments: in this process, or as ``chinchax train`` subprocesses."""

    def __init__(self, ladder_dir: Path, *, jobs: int = 1, use_subprocess: bool = False) -> None:
        if jobs < 1:
            raise ScalingError(f"--jobs must be at least 1, got {jobs}", hint="use --jobs 1 (default)")
        self.ladder_dir = ladder_dir
        self.jobs = jobs
        self.use_subprocess = use_subprocess or jobs > 1

    def train(self, items: Sequence[tuple[str, Path]], on_done: Callable[[str], None]) -> None:
        """Train each ``(name, experiment file)``; ``on_done(name)`` after each one finishes."""
        if not self.use_subprocess:
            for name, path in items:
                _train_in_process(path)
                on_done(name)
            return
        slots: "queue.Queue[dict[str, str]]" = queue.Queue()
        for env in device_groups(self.jobs):
            slots.put(env)

        def work(name: str, path: Path) -> str:
            env = slots.get()
            try:
                _train_subprocess(path, self.ladder_dir / LOGS_DIR / f"{name}.log", env)
            finally:
                slots.put(env)
            return name

        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(work, name, path) for name, path in items]
            for future in concurrent.futures.as_completed(futures):
                on_done(future.result())


def _train_in_process(experiment_path: Path) -> dict[str, Any]:
    from launch.cmd_train import train_with_law_watch  # JAX is imported only when something trains
    from launch.config import load_experiment, resolve

    summary = train_with_law_watch(resolve(load_experiment(experiment_path)))
    if summary["status"] != "complete":
        raise ScalingError(f"run {summary['run_name']} ended with status {summary['status']!r} at "
                          f"step {summary['steps']}",
                          hint="run the same ladder command again to resume it")
    return summary


def _train_subprocess(experiment_path: Path, log_path: Path, env: Mapping[str, str]) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "launch.cli", "train", str(experiment_path)]
    with log_path.open("a") as handle:
        handle.write(f"$ {' '.join(command)}  # {dict(env)}\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, **env}, check=False)
    if result.returncode != 0:
        raise ScalingError(f"'chinchax train {experiment_path}' failed (exit {result.returncode})",
                          hint=f"see {log_path}; run the ladder again to resume")


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``'s count."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def device_groups(jobs: int, gpus: Optional[Sequence[str]] = None) -> list[dict[str, str]]:
    """Disjoint ``CUDA_VISIBLE_DEVICES`` groups for ``jobs`` concurrent runs (none without
    GPUs: CPU runs share the cores; a TPU VM runs one rung at a time)."""
    gpus = visible_gpus() if gpus is None else list(gpus)
    if not gpus:
        return [{} for _ in range(jobs)]
    if len(gpus) < jobs:
        raise ScalingError(f"--jobs {jobs} needs at least {jobs} GPUs, {len(gpus)} visible",
                          hint=f"use --jobs {len(gpus)} or fewer")
    per_job = len(gpus) // jobs
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[j * per_job:(j + 1) * per_job])}
            for j in range(jobs)]
