"""The transformer built straight into its shards: no device ever holds the whole model."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from models.config import ModelConfig
from models.sharding import Rules, state_shardings
from models.transformer import Transformer


def abstract_model(cfg: ModelConfig, seed: int = 0) -> nnx.Module:
    """The model with ``ShapeDtypeStruct`` leaves (shapes and logical names, nothing allocated)."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))


def create_sharded_model(cfg: ModelConfig, mesh: Mesh, rules: Rules, seed: int = 0) -> nnx.Module:
    """Initialise under ``jax.jit`` with ``out_shardings`` from the logical names; the values
    equal those of an unsharded ``Transformer(cfg, rngs=nnx.Rngs(seed))``."""

    def init() -> nnx.State:
        return nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)))

    graphdef, abstract_state = nnx.split(abstract_model(cfg, seed))
    state = jax.jit(init, out_shardings=state_shardings(abstract_state, mesh, rules))()
    return nnx.merge(graphdef, state)
