"""The train state and its jitted step, built one way for training and for ahead-of-time
compilation, so ``chinchax compile`` measures exactly the program ``chinchax train`` runs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.build import abstract_model, create_sharded_model
from models.sharding import state_shardings, vocab_is_sharded
from training.config import RunConfig
from training.optim import make_optimizer
from training.step import TrainState, make_train_step


def abstract(tree: Any, shardings: Any = None) -> Any:
    """A restore target or compile input, nothing allocated; shardings default to the leaves'."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _optimizer_shardings(tx: optax.GradientTransformation, params: Any, replicated: NamedSharding) -> Any:
    """Moments mirror the parameters' shardings; counters and other scalars are replicated."""
    return optax.tree_utils.tree_map_params(
        tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, params),
        jax.tree.map(lambda x: x.sharding, params), transform_non_params=lambda _: replicated)


def initial_train_state(cfg: RunConfig, mesh: Mesh) -> tuple[nnx.GraphDef, TrainState, optax.GradientTransformation]:
    """A freshly initialised, sharded state (parameters never materialised on one device)."""
    model = create_sharded_model(cfg.model, mesh, cfg.mesh.rules, cfg.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg.optim, cfg.steps, params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = jax.jit(tx.init, out_shardings=_optimizer_shardings(tx, params, replicated))(params)
    rest = jax.device_put(rest, replicated) if jax.tree.leaves(rest) else rest
    state: TrainState = {"params": params, "rest": rest, "opt_state": opt_state,
                         "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}
    return graphdef, state, tx


def abstract_train_state(cfg: RunConfig, mesh: Mesh) -> tuple[nnx.GraphDef, TrainState, optax.GradientTransformation]:
    """The tree of :func:`initial_train_state` as ShapeDtypeStructs with shardings."""
    replicated = NamedSharding(mesh, PartitionSpec())
    model = abstract_model(cfg.model, cfg.seed)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = abstract(params, state_shardings(params, mesh, cfg.mesh.rules))
    rest = abstract(rest, jax.tree.map(lambda _: replicated, rest))
    tx = make_optimizer(cfg.optim, cfg.steps, params)
    opt_state = abstract(jax.eval_shape(tx.init, params), _optimizer_shardings(tx, params, replicated))
    state: TrainState = {"params": params, "rest": rest, "opt_state": opt_state,
                         "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}
    return graphdef, state, tx


def jit_train_step(cfg: RunConfig, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   state: TrainState, mesh: Mesh, data_sharding: NamedSharding) -> Any:
    """The state is donated.  Lower or call it inside :func:`models.sharding.activation_sharding`,
    or the model's activation constraints do not apply."""
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        make_train_step(graphdef, tx, grad_accum_steps=cfg.train.grad_accum_steps,
                        z_loss=cfg.optim.z_loss, skip_nonfinite=cfg.train.on_nonfinite == "skip",
                        vocab_parallel=vocab_is_sharded(mesh, cfg.mesh.rules)),
        in_shardings=(shardings, data_sharding),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
