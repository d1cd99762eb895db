"""A real two-process ``chinchax train`` on shards: each process reads only its rows of every
global batch (its slice), so together they train exactly like one process reading whole
batches -- were the slices not disjoint and complete, the global batches and losses would differ."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from launch.multihost_local import check_outcomes, run_processes, train_command
from training.tokenize_job import TokenizeJob, run_tokenize

REPO = Path(__file__).resolve().parent.parent
DEADLINE_S = 240.0


@pytest.mark.slow
def test_two_processes_read_disjoint_rows_of_shards_and_train_like_one(tmp_path: Path) -> None:
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"line {i} " + "abc def " * (i % 11 + 3)}) + "\n"
                            for i in range(400)))
    run_tokenize(TokenizeJob(inputs=(str(text),), out=str(tmp_path / "shards"), num_shards=2), progress=False)
    config = tmp_path / "experiment.yaml"
    config.write_text(
        "name: shards2\nseed: 0\n"
        "model: {vocab_size: 257, d_model: 32, n_layers: 2, n_heads: 2, d_ff: 64}\n"
        f"data: {{source: shards, path: {tmp_path / 'shards'}}}\n"
        "train: {steps: 3, global_batch: 8, seq_len: 32, log_every: 1, eval_every: 3, eval_batches: 1}\n"
        "mesh: {data: -1}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    losses = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"run{processes}"
        outcomes = run_processes(processes, lambda i: train_command(str(config), [], str(run_dir)),
                                 run_dir / "logs", cpu_devices=4 // processes, timeout_s=DEADLINE_S, base_env=env)
        check_outcomes(outcomes, DEADLINE_S)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[processes] = [r["loss"] for r in records if r.get("kind") == "train"]
    assert len(losses[1]) == 3
    np.testing.assert_allclose(losses[2], losses[1], rtol=2e-5)
