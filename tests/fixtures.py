"""Synthetic runs for tests: run directories in the ``chinchax train`` format and simulated
observations of a known law (so fitters can be checked against the truth)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from scaling.observations import Observations
from scaling.rundir import METRICS_NAME, SUMMARY_NAME, dumps, write_json, write_text


def write_run_dir(
    root: str | Path,
    run_name: str,
    n_params: int,
    evals: Sequence[tuple[int, float, float]],
    seed: int = 0,
    seq_len: int = 256,
    global_batch: int = 16,
    model: Mapping[str, Any] | None = None,
    flops_per_token: float | None = None,
) -> Path:
    """Write a run directory in the ``chinchax train`` format from ``(step, tokens, loss)`` evals.

    The mirror of ``scaling.observations.read_run_dir``, for synthetic ladders in tests and demos: FLOPs are
    ``flops_per_token * tokens`` (default ``6 N``), and a train record precedes each eval as
    in a real run so readers are exercised on mixed files.
    """
    run = Path(root) / run_name
    run.mkdir(parents=True, exist_ok=True)
    per_token = 6.0 * n_params if flops_per_token is None else flops_per_token
    lines = []
    for step, tokens, loss in evals:
        lines.append(dumps({"kind": "train", "step": int(step), "tokens": int(tokens),
                            "loss": float(loss) * 1.01}))
        lines.append(dumps({"kind": "eval", "step": int(step), "tokens": int(tokens),
                            "flops": per_token * float(tokens), "eval_loss": float(loss)}))
    write_text(run / METRICS_NAME, "\n".join(lines) + "\n")
    last_step, last_tokens, last_loss = evals[-1]
    summary = {
        "run_name": run_name, "n_params": int(n_params), "seed": int(seed),
        "tokens": int(last_tokens), "flops": per_token * float(last_tokens),
        "final_eval_loss": float(last_loss), "steps": int(last_step), "seq_len": seq_len,
        "global_batch": global_batch, "model": dict(model or {}),
    }
    write_json(run / SUMMARY_NAME, summary)
    return run


def isoflop_design(law: Any, budgets: Sequence[float], sizes_per_budget: int = 7,
                   spread: float = 4.0) -> list[tuple[float, float]]:
    """``(N, D)`` of an isoFLOP sweep: per budget, sizes log-spaced within ``spread`` of the optimum.

    ``law`` is anything with ``optimal_params(flops)``; ``D = C / (6 N)``.
    """
    shapes = []
    for budget in budgets:
        centre = law.optimal_params(budget)
        for factor in np.geomspace(1.0 / spread, spread, sizes_per_budget):
            n = centre * factor
            shapes.append((float(n), float(budget / (6.0 * n))))
    return shapes


def simulate_runs(
    law: Any,
    shapes: Sequence[tuple[float, float]],
    evals_per_run: int = 1,
    noise: float = 0.0,
    run_noise: float = 0.0,
    seed: int = 0,
) -> Observations:
    """Observations of runs ``(N, final D)`` whose losses follow ``law.loss`` with noise.

    Each run has ``evals_per_run`` evals at equal token intervals ending at its final tokens.
    ``noise`` is the per-point and ``run_noise`` the per-run (seed-like) standard deviation of
    a multiplicative log-normal factor.  For tests, benchmarks and demos of the fitters.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for index, (n, final_tokens) in enumerate(shapes):
        tokens = final_tokens * np.arange(1, evals_per_run + 1) / evals_per_run
        offset = rng.normal(0.0, run_noise) if run_noise else 0.0
        jitter = rng.normal(0.0, noise, size=tokens.size) if noise else np.zeros(tokens.size)
        loss = np.asarray(law.loss(np.full(tokens.size, n), tokens)) * np.exp(offset + jitter)
        parts.append(Observations.from_arrays(
            n_params=np.full(tokens.size, float(n)), loss=loss, tokens=tokens,
            run_id=[f"run{index:03d}"] * tokens.size, seed=[seed] * tokens.size,
            step=np.arange(1, evals_per_run + 1), source="simulation"))
    return Observations.concat(parts)
