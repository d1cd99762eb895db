"""Synthetic ladders drawn from a known loss-curve law, with noise: no training, milliseconds each.

Every run follows a cosine schedule, so its mid-run evals sit above an annealed run's loss by
the annealing it has not had yet: the bias that made a real ladder predict 9.7% too high.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scaling.curve_law import CurveLaw, CurvePoints
from scaling.lr_schedule import Schedule
from fixtures import write_run_dir
from scaling.observations import Observations

TRUTH = CurveLaw(E=1.1, A=40.0, B=30.0, alpha=0.4, beta=0.32, C=8e-6)
TOKENS_PER_STEP = 2048.0
BUDGETS = (3e12, 1e13, 3e13, 1e14, 3e14)


@dataclass(frozen=True)
class Ladder:
    points: CurvePoints
    target_n: float
    target_schedule: Schedule
    truth: float


def schedule_for(n_params: float, budget: float, lr: float = 0.01,
                 tokens_per_step: float = TOKENS_PER_STEP) -> Schedule:
    steps = max(20, int(round(budget / (6.0 * n_params * tokens_per_step))))
    return Schedule("cosine", lr, steps, tokens_per_step, warmup=max(1, steps // 20))


def scaled_schedule(n_params: float, budget: float) -> Schedule:
    """A rule like a real ladder's: the rate falls with size, the batch grows with budget."""
    lr = 0.01 * (n_params / 1e6) ** -0.25
    return schedule_for(n_params, budget, lr, TOKENS_PER_STEP * max(1.0, (budget / 3e12) ** 0.35))


def draw_ladder(seed: int, law: CurveLaw = TRUTH, budgets: tuple[float, ...] = BUDGETS,
                sizes: int = 3, evals: int = 8, noise: float = 0.004, run_noise: float = 0.004,
                target_ratio: float = 5.0, rule: Any = schedule_for) -> Ladder:
    """An isoFLOP sweep of ``sizes`` per budget (``N ∝ C**0.5`` around 0.2 C**0.5), every run's
    evals at equal steps after 10%, losses ``law × exp(point noise + run noise)``."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("n", "d", "loss", "run", "step", "s1", "s2")}
    schedules = {}
    for budget in budgets:
        for factor in np.geomspace(0.5, 2.0, sizes):
            n = 0.2 * budget ** 0.5 * factor
            schedule = rule(n, budget)
            name = f"C{budget:.0e}-N{n:.0f}"
            schedules[name] = schedule
            steps = np.unique(np.linspace(schedule.steps / 10, schedule.steps, evals).round().astype(int))
            s1, s2 = schedule.areas_at(steps, law.lam)
            clean = law.loss(n, s1, s2)
            shift = rng.normal(0.0, run_noise)
            for k, step in enumerate(steps):
                cols["n"].append(n)
                cols["d"].append(step * TOKENS_PER_STEP)
                cols["loss"].append(clean[k] * np.exp(shift + rng.normal(0.0, noise)))
                cols["run"].append(name)
                cols["step"].append(int(step))
                cols["s1"].append(s1[k])
                cols["s2"].append(s2[k])
    obs = Observations.from_arrays(n_params=cols["n"], loss=cols["loss"], tokens=cols["d"],
                                   run_id=cols["run"], step=cols["step"])
    points = CurvePoints(obs, np.array(cols["s1"]), np.array(cols["s2"]), schedules, law.lam)
    target_budget = target_ratio * max(budgets)
    target_n = 0.2 * target_budget ** 0.5
    target = rule(target_n, target_budget)
    return Ladder(points, target_n, target, law.final_loss(target_n, target))


def write_ladder_runs(root: Path, ladder: Ladder, tokenizer: str = "byte") -> list[Path]:
    """The ladder as run directories: metrics and summary as the trainer writes them, and a
    ``config.yaml`` whose optim and train sections give each run's schedule."""
    obs, runs = ladder.points.obs, []
    for name, schedule in ladder.points.schedules.items():
        rows = obs.run_id == name
        n = float(obs.n_params[rows][0])
        evals = list(zip(obs.step[rows], obs.tokens[rows], obs.loss[rows]))
        run = write_run_dir(root, name, int(n), evals, seq_len=128,
                            global_batch=int(schedule.tokens_per_step // 128))
        config = {"model": {"vocab_size": 257, "tie_embeddings": True},
                  "data": {"source": "embedded", "tokenizer": tokenizer},
                  "train": {"steps": schedule.steps, "global_batch": int(schedule.tokens_per_step // 128),
                            "seq_len": 128},
                  "optim": {"learning_rate": schedule.peak, "schedule": schedule.kind,
                            "warmup_steps": schedule.warmup, "min_lr_ratio": schedule.min_lr_ratio},
                  "init": {"from_run": None, "grow_from": None}}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        summary = json.loads((run / "summary.json").read_text())  # as the trainer writes it
        (run / "summary.json").write_text(json.dumps({**summary, "status": "complete",
                                                      "flops_per_token": 6.0 * n}))
        runs.append(run)
    return runs
