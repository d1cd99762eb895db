"""Train and eval steps as pure functions of a split state pytree and a batch: plain ``jax.jit``
over ``nnx.split`` is as fast as ``nnx.jit`` and compiles faster.  Gradient accumulation is a
``lax.scan`` inside the step: one big batch's update with less activation memory."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models.loss import loss_fn

TrainState = dict[str, Any]  # {"params", "rest", "opt_state", "step"}
Batch = dict[str, jax.Array]


def _loss_and_grads(graphdef: nnx.GraphDef, params: Any, rest: Any, batch: Batch,
                    z_loss: float, vocab_parallel: bool) -> tuple[jax.Array, Any]:
    def loss_of_params(p: Any) -> jax.Array:
        model = nnx.merge(graphdef, p, rest)
        loss, _aux = loss_fn(model, batch, z_loss=z_loss, vocab_parallel=vocab_parallel)
        return loss

    return jax.value_and_grad(loss_of_params)(params)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    grad_accum_steps: int = 1, z_loss: float = 0.0,
                    skip_nonfinite: bool = False, vocab_parallel: bool = False) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """``skip_nonfinite`` keeps the old state on a non-finite step, decided on device with no
    host sync; ``vocab_parallel`` uses ``shard_map`` so full logits are never gathered."""

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        params, rest = state["params"], state["rest"]
        if grad_accum_steps == 1:
            loss, grads = _loss_and_grads(graphdef, params, rest, batch, z_loss, vocab_parallel)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]),
                batch)

            def accumulate(carry: tuple[jax.Array, Any], mb: Batch) -> tuple[tuple[jax.Array, Any], None]:
                loss_sum, grad_sum = carry
                loss_mb, grads_mb = _loss_and_grads(graphdef, params, rest, mb, z_loss, vocab_parallel)
                return (loss_sum + loss_mb, jax.tree.map(jnp.add, grad_sum, grads_mb)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (loss_sum, grad_sum), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros), micro)
            loss = loss_sum / grad_accum_steps
            grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)

        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_params = jax.tree.map(keep, new_params, params)
            opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
        new_state = {"params": new_params, "rest": rest, "opt_state": opt_state,
                     "step": state["step"] + 1}
        return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

    return step


def make_eval_step(graphdef: nnx.GraphDef) -> Callable[[TrainState, Batch], jax.Array]:
    """Mean next-token loss of one held-out batch (no z-loss: it measures the model)."""

    def eval_step(state: TrainState, batch: Batch) -> jax.Array:
        model = nnx.merge(graphdef, state["params"], state["rest"])
        loss, _aux = loss_fn(model, batch, z_loss=0.0)
        return loss

    return eval_step
