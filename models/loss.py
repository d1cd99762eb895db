"""Next-token cross-entropy in float32, with PaLM's z-loss (``z_loss * logsumexp**2`` keeps the
softmax normaliser near 1).  The vocab-parallel version all-reduces per-token max, sum of
exponentials and target logit instead of gathering ``[B, T, V]``; the chunked one holds one chunk's
logits at a time, at the price of the head's matmul again in the backward (``model.loss_chunk``)."""

from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from chinchax.errors import ModelError
from models.sharding import Rules, active_mesh_and_rules, constrain, logical_to_mesh_spec
from models.transformer import ACTIVATION_BTD, project_to_vocab

Batch = Dict[str, jax.Array]


def mean_over_mask(
    values_BT: jax.Array, mask_BT: Optional[jax.Array]
) -> Tuple[jax.Array, jax.Array]:
    """Masked mean and the number of counted tokens (the mean of nothing is 0)."""
    if mask_BT is None:
        return jnp.mean(values_BT), jnp.asarray(values_BT.size, jnp.float32)
    weight_BT = mask_BT.astype(jnp.float32)
    n_tokens = jnp.sum(weight_BT)
    return jnp.sum(values_BT * weight_BT) / jnp.maximum(n_tokens, 1.0), n_tokens


def target_logits(logits_BTV: jax.Array, ids_BT: jax.Array) -> jax.Array:
    """``logits[b, t, ids[b, t]]`` by compare-and-select (0 where the id is out of range): unlike
    ``take_along_axis`` it does not differentiate into a scatter over a zeroed float32 ``[B, T, V]``.
    Used in low precision only, so the float32 path's gradients stay bit-identical."""
    vocab_V = jax.lax.broadcasted_iota(ids_BT.dtype, (1, 1, logits_BTV.shape[-1]), 2)
    return jnp.sum(jnp.where(vocab_V == ids_BT[..., None], logits_BTV, 0.0), axis=-1)


def _gathered_target_logits(logits_BTV: jax.Array, ids_BT: jax.Array) -> jax.Array:
    """As :func:`target_logits`, by a gather (the float32 path)."""
    shard_width = logits_BTV.shape[-1]
    here_BT = (ids_BT >= 0) & (ids_BT < shard_width)
    picked_BT1 = jnp.take_along_axis(logits_BTV, jnp.clip(ids_BT, 0, shard_width - 1)[..., None], axis=-1)
    return jnp.where(here_BT, picked_BT1[..., 0], 0.0)


def token_losses(logits_BTV: jax.Array, targets_BT: jax.Array, *,
                 select: bool = False) -> Tuple[jax.Array, jax.Array]:
    """Per-token cross-entropy ``ce_BT`` and log-normaliser ``lse_BT`` (float32); ``select``
    picks the target logit by :func:`target_logits` instead of a gather."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    if select:
        return lse_BT - target_logits(logits_BTV, targets_BT), lse_BT
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return lse_BT - target_logit_BT, lse_BT


def vocab_parallel_token_losses(
    logits_BTV: jax.Array, targets_BT: jax.Array, *, mesh: Optional[Mesh] = None,
    rules: Optional[Rules] = None, select: bool = False
) -> Tuple[jax.Array, jax.Array]:
    """:func:`token_losses` in a ``shard_map`` over the vocab axes: max, sum of exponentials and
    target logit combined by ``pmax``/``psum``.  Plain without a mesh or when ``vocab`` is not sharded."""
    if mesh is None:
        return token_losses(logits_BTV, targets_BT, select=select)
    logits_spec = logical_to_mesh_spec(("batch", "seq", "vocab"), rules)
    vocab_axes = logits_spec[2]
    if vocab_axes is None:
        return token_losses(logits_BTV, targets_BT, select=select)
    vocab_axes = (vocab_axes,) if isinstance(vocab_axes, str) else tuple(vocab_axes)
    tokens_spec = PartitionSpec(logits_spec[0], logits_spec[1])

    def local(logits_btv: jax.Array, targets_bt: jax.Array) -> Tuple[jax.Array, jax.Array]:
        logits_btv = logits_btv.astype(jnp.float32)
        shard_width = logits_btv.shape[-1]
        first_id = jax.lax.axis_index(vocab_axes) * shard_width
        # The max only steadies the exponentials; lse does not depend on it, so no gradient.
        max_bt = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits_btv, axis=-1)), vocab_axes)
        sum_exp_bt = jax.lax.psum(
            jnp.sum(jnp.exp(logits_btv - max_bt[..., None]), axis=-1), vocab_axes
        )
        lse_bt = max_bt + jnp.log(sum_exp_bt)
        local_id_bt = targets_bt - first_id
        pick = target_logits if select else _gathered_target_logits
        target_logit_bt = jax.lax.psum(pick(logits_btv, local_id_bt), vocab_axes)
        return lse_bt - target_logit_bt, lse_bt

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(logits_spec, tokens_spec),
        out_specs=(tokens_spec, tokens_spec),
    )(logits_BTV, targets_BT)


def chunked_token_losses(
    x_BTD: jax.Array,
    w_DV: jax.Array,
    targets_BT: jax.Array,
    *,
    chunk: int,
    mesh_and_rules: Optional[Tuple[Mesh, Rules]] = None,
    select: bool = False,
) -> Tuple[jax.Array, jax.Array]:
    """:func:`token_losses` of ``x_BTD @ w_DV`` a ``chunk`` of positions at a time, in a scan whose
    body is checkpointed, so no float32 ``[B, T, V]`` logits or residuals exist.  Pass ``w_DV`` as
    stored (float32) so its gradient sums over chunks in float32; ``select``: low-precision head."""
    B, T, D = x_BTD.shape
    if chunk <= 0 or T % chunk:
        raise ModelError(
            f"model.loss_chunk={chunk} does not divide the sequence length {T}",
            hint="choose a divisor of train.seq_len (e.g. 256 or 512), or 0 to turn chunking off",
        )
    n_chunks = T // chunk
    x_CBcD = jnp.swapaxes(x_BTD.reshape(B, n_chunks, chunk, D), 0, 1)
    targets_CBc = jnp.swapaxes(targets_BT.reshape(B, n_chunks, chunk), 0, 1)

    @partial(jax.checkpoint, prevent_cse=False)  # inside a scan: no CSE to guard against
    def one_chunk(x_BcD: jax.Array, targets_Bc: jax.Array) -> Tuple[jax.Array, jax.Array]:
        # The head pinned to its own sharding *before* the cast: each piece's head gradient
        # is then summed over devices in float32 (a reduce-scatter), not in bf16.
        w_sharded_DV = constrain(w_DV, ("embed", "vocab"))
        logits_BcV = project_to_vocab(constrain(x_BcD, ACTIVATION_BTD), w_sharded_DV,
                                      low_precision_backward=select)
        mesh, rules = mesh_and_rules or (None, None)
        return vocab_parallel_token_losses(logits_BcV, targets_Bc, mesh=mesh, rules=rules, select=select)

    def body(carry: None, xs: Tuple[jax.Array, jax.Array]) -> Tuple[None, Tuple[jax.Array, jax.Array]]:
        return carry, one_chunk(*xs)

    _, (ce_CBc, lse_CBc) = jax.lax.scan(body, None, (x_CBcD, targets_CBc))
    return jnp.swapaxes(ce_CBc, 0, 1).reshape(B, T), jnp.swapaxes(lse_CBc, 0, 1).reshape(B, T)


def model_token_losses(
    model: nnx.Module, inputs_BT: jax.Array, targets_BT: jax.Array, *, vocab_parallel: bool = False
) -> Tuple[jax.Array, jax.Array]:
    """Per-token ``(ce_BT, lse_BT)`` of ``model``: chunked when ``cfg.loss_chunk`` is shorter than
    the sequence, vocab-parallel when asked and a mesh is active, plain otherwise."""
    active = active_mesh_and_rules() if vocab_parallel else None
    cfg = getattr(model, "cfg", None)
    chunk = getattr(cfg, "loss_chunk", 0)
    # Low precision end to end (bf16 head backward, target logit by select) unless asked not to.
    select = (getattr(cfg, "compute_dtype", "float32") != "float32"
              and getattr(cfg, "head_backward", "compute") == "compute")
    if chunk and chunk < inputs_BT.shape[1]:
        return chunked_token_losses(model.hidden_states(inputs_BT), model.output_kernel(),
                                    targets_BT, chunk=chunk, mesh_and_rules=active, select=select)
    logits_BTV = model(inputs_BT)
    mesh, rules = active or (None, None)
    return vocab_parallel_token_losses(logits_BTV, targets_BT, mesh=mesh, rules=rules, select=select)


def loss_fn(
    model: nnx.Module, batch: Batch, *, z_loss: float = 0.0, vocab_parallel: bool = False
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """``(loss, {ce, n_tokens})`` on ``batch = {inputs, targets[, mask]}``; ``ce`` excludes the z-loss.
    ``vocab_parallel`` uses the active :func:`models.sharding.activation_sharding` mesh, if any."""
    ce_BT, lse_BT = model_token_losses(
        model, batch["inputs"], batch["targets"], vocab_parallel=vocab_parallel
    )
    mask_BT = batch.get("mask")
    ce, n_tokens = mean_over_mask(ce_BT, mask_BT)
    loss = ce
    if z_loss:
        loss = loss + z_loss * mean_over_mask(jnp.square(lse_BT), mask_BT)[0]
    return loss, {"ce": ce, "n_tokens": n_tokens}
