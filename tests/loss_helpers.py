"""Mean losses over a whole batch, the expected values tests hold ``models.loss`` to."""

from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from models.loss import mean_over_mask, token_losses, vocab_parallel_token_losses
from models.sharding import Rules


def cross_entropy(
    logits_BTV: jax.Array,
    targets_BT: jax.Array,
    mask_BT: Optional[jax.Array] = None,
    *,
    z_loss: float = 0.0,
) -> Tuple[jax.Array, jax.Array]:
    """Mean next-token loss (cross-entropy plus ``z_loss * lse**2``) and the token count."""
    ce_BT, lse_BT = token_losses(logits_BTV, targets_BT)
    return mean_over_mask(ce_BT + z_loss * jnp.square(lse_BT), mask_BT)


def vocab_parallel_cross_entropy(
    logits_BTV: jax.Array,
    targets_BT: jax.Array,
    mask_BT: Optional[jax.Array] = None,
    *,
    mesh: Mesh,
    rules: Rules,
    z_loss: float = 0.0,
) -> Tuple[jax.Array, jax.Array]:
    """:func:`cross_entropy` computed vocab-parallel (see :func:`models.loss.vocab_parallel_token_losses`)."""
    ce_BT, lse_BT = vocab_parallel_token_losses(logits_BTV, targets_BT, mesh=mesh, rules=rules)
    return mean_over_mask(ce_BT + z_loss * jnp.square(lse_BT), mask_BT)
