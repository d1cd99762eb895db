"""The trainer's own train step, built for a benchmark: sharded state, donated, jitted.
``training.config`` and ``training.state`` are imported lazily, so benchmarks import without the
data stack."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import NamedSharding

from chinchax.errors import ChinchaxError
from models.config import ModelConfig
from models.sharding import MeshConfig, batch_sharding, make_mesh
from training.optim import OptimConfig


class BenchmarkError(ChinchaxError, ValueError):
    """A benchmark setting that cannot run (unknown preset or shape, bad count)."""


@dataclass
class TrainerStep:
    """The jitted train step with its state and batch sharding, as the trainer has them."""

    step: Any
    state: Dict[str, Any]
    data_sharding: NamedSharding
    mesh: Any
    rules: List[List[str]]


def build_trainer_step(model_cfg: ModelConfig, devices: Sequence[Any], *,
                       optim: Optional[OptimConfig] = None, global_batch: int = 1,
                       seq_len: int = 256, total_steps: int = 100, seed: int = 0,
                       grad_accum_steps: int = 1) -> TrainerStep:
    """The train step of ``training/trainer.py`` for ``model_cfg`` on ``devices`` (FSDP over all);
    lower and call it inside ``activation_sharding(result.mesh, result.rules)``, as the trainer."""
    from training.config import RunConfig, TrainConfig
    from training.state import initial_train_state, jit_train_step

    mesh_cfg = MeshConfig(data=1, fsdp=-1, tensor=1)
    mesh = make_mesh(mesh_cfg, list(devices))
    train = TrainConfig(steps=total_steps, global_batch=global_batch, seq_len=seq_len,
                        grad_accum_steps=grad_accum_steps)
    run = RunConfig(name="benchmark", run_dir="", model=model_cfg, train=train,
                    optim=optim or OptimConfig(), mesh=mesh_cfg, seed=seed)
    graphdef, state, tx = initial_train_state(run, mesh)
    data_sharding = batch_sharding(mesh, mesh_cfg.rules)
    step = jit_train_step(run, graphdef, tx, state, mesh, data_sharding)
    return TrainerStep(step, state, data_sharding, mesh, mesh_cfg.rules)


def random_batch(vocab_size: int, batch: int, seq_len: int, sharding: NamedSharding,
                 seed: int = 0) -> Dict[str, jax.Array]:
    """Uniform random ``inputs``/``targets`` tokens, placed with the batch sharding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (batch, seq_len + 1), dtype=np.int32)
    return {"inputs": jax.device_put(tokens[:, :-1], sharding),
            "targets": jax.device_put(tokens[:, 1:], sharding)}


def time_steps(run_step: Any, state: Any, batch: Any, *, steps: int,
               repeats: int) -> Tuple[Any, Any, List[float]]:
    """Seconds per step of each repeat (``steps`` dispatches, then one device sync)."""
    per_step = []
    metrics = None
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            state, metrics = run_step(state, batch)
        jax.block_until_ready((state, metrics))
        per_step.append((time.perf_counter() - started) / steps)
    return state, metrics, per_step
