"""Remat policies, and the attention residuals a policy can keep by name.
A fused attention kernel's residuals (output, log-sum-exp) come from its ``custom_vjp``, not a dot,
so ``dots_no_batch`` drops them and the backward reruns the kernel; ``attention_dots`` (MaxText's
``minimal_with_context``) keeps them.  With XLA attention they include ``[B, N, T, T]`` scores."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import jax
from jax.ad_checkpoint import checkpoint_name

ATTENTION = "attention"
_policies = jax.checkpoint_policies
POLICIES: Dict[str, Optional[Callable[..., Any]]] = {
    "full": None,  # save nothing: recompute the whole block on the backward pass
    "dots": _policies.checkpoint_dots,
    "dots_no_batch": _policies.checkpoint_dots_with_no_batch_dims,
    "save_attention": _policies.save_only_these_names(ATTENTION),
    "attention_dots": _policies.save_from_both_policies(
        _policies.checkpoint_dots_with_no_batch_dims, _policies.save_only_these_names(ATTENTION)),
}
SAVES_ATTENTION = ("save_attention", "attention_dots")


def with_named_residuals(fn: Callable[..., jax.Array], name: str = ATTENTION) -> Callable[..., jax.Array]:
    """``fn`` with the same value and gradient, its backward's residuals named ``name``."""

    @jax.custom_vjp
    def call(*args: jax.Array) -> jax.Array:
        return fn(*args)

    def forward(*args: jax.Array) -> tuple[jax.Array, Any]:
        out, vjp_fn = jax.vjp(fn, *args)
        return out, jax.tree.map(lambda r: checkpoint_name(r, name), vjp_fn)

    def backward(vjp_fn: Any, g: jax.Array) -> tuple[jax.Array, ...]:
        return vjp_fn(g)

    call.defvjp(forward, backward)
    return call
