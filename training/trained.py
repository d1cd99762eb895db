"""A run's trained model read back onto a mesh, for sampling and export.  Optimiser moments are
restored and dropped: a partial orbax restore would need a second layout."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from chinchax.errors import CheckpointError, ModelError
from models.decode import SamplingConfig, decode_rules, generate
from models.sharding import MeshConfig, activation_sharding, make_mesh
from models.transformer import Transformer
from scaling.rundir import CHECKPOINTS_DIR
from training.checkpoint import CheckpointConfig, Checkpointer
from training.config import RunConfig
from training.state import abstract_train_state
from training.tokenizer import load_tokenizer

log = logging.getLogger("chinchax.trained")


@dataclass
class TrainedModel:
    model: Transformer
    mesh: Mesh
    step: int


def checkpoint_dir(run_dir: epath.PathLike) -> epath.Path:
    directory = epath.Path(run_dir) / CHECKPOINTS_DIR
    if not directory.exists():
        raise CheckpointError(f"{run_dir} has no {CHECKPOINTS_DIR}/ folder",
                              hint="point at a run directory written by chinchax train (it "
                              "saves checkpoints every checkpoint.every_steps and at the end)")
    return directory


def run_mesh(cfg: RunConfig) -> Mesh:
    """Where the run's mesh needs devices this machine lacks (a pod run on a workstation), every
    device on the data axis."""
    try:
        return make_mesh(cfg.mesh)
    except ModelError as error:
        log.warning("the run's mesh does not fit here (%s); putting every device on data", error)
        return make_mesh(MeshConfig(data=-1, rules=cfg.mesh.rules))


def load_trained_model(cfg: RunConfig, run_dir: Optional[epath.PathLike] = None,
                       step: Optional[int] = None, mesh: Optional[Mesh] = None) -> TrainedModel:
    """``step`` None: the newest; ``mesh`` default: :func:`run_mesh`."""
    directory = checkpoint_dir(run_dir if run_dir is not None else cfg.run_dir)
    mesh = run_mesh(cfg) if mesh is None else mesh
    graphdef, abstract, _ = abstract_train_state(cfg, mesh)
    reader = Checkpointer(directory, CheckpointConfig(async_save=False))
    try:
        if reader.latest_step() is None:
            raise CheckpointError(f"{directory} holds no finished checkpoint",
                                  hint="let the run save at least once (checkpoint.every_steps, "
                                  "or the end of the run), then try again")
        restored = reader.restore(step, abstract, fallback=False)
    finally:
        reader.close()
    state = restored.state
    model = nnx.merge(graphdef, state["params"], state["rest"])
    return TrainedModel(model=model, mesh=mesh, step=int(restored.step))


def complete(trained: TrainedModel, cfg: RunConfig, prompt: str, sampling: SamplingConfig) -> str:
    """Text after ``prompt`` up to its first end-of-document; an empty prompt starts a new document."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    ids = [int(i) for i in tokenizer.encode(prompt)] or [tokenizer.eod_id]
    with activation_sharding(trained.mesh, decode_rules(cfg.mesh.rules)):
        new_ids = generate(trained.model, np.asarray([ids], np.int32), sampling,
                           vocab_limit=tokenizer.vocab_size)
    new = [int(i) for i in np.asarray(new_ids)[0]]
    if tokenizer.eod_id in new:
        new = new[:new.index(tokenizer.eod_id)]
    return tokenizer.decode(new)
