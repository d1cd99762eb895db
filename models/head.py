"""The output head's product, kept off float32 matrix units in low-precision compute.
Autodiff of a bf16 einsum with float32 output feeds a float32 ``[B, T, V]`` gradient into two
vocabulary-sized float32 products; here the backward casts it to the compute dtype first (as
MaxText's bf16 head does), products summed in float32.  Logits stay float32."""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp


def _product(x_BTD: jax.Array, w_DV: jax.Array) -> jax.Array:
    return jnp.einsum("btd,dv->btv", x_BTD, w_DV.astype(x_BTD.dtype),
                      preferred_element_type=jnp.float32)


@jax.custom_vjp
def _low_precision_product(x_BTD: jax.Array, w_DV: jax.Array) -> jax.Array:
    return _product(x_BTD, w_DV)


def _forward(x_BTD: jax.Array, w_DV: jax.Array) -> Tuple[jax.Array, Tuple[jax.Array, jax.Array]]:
    return _product(x_BTD, w_DV), (x_BTD, w_DV)


def _backward(res: Tuple[jax.Array, jax.Array], g_BTV: jax.Array) -> Tuple[jax.Array, jax.Array]:
    x_BTD, w_DV = res
    g_BTV = g_BTV.astype(x_BTD.dtype)
    w_low_DV = w_DV.astype(x_BTD.dtype)
    dx_BTD = jnp.einsum("btv,dv->btd", g_BTV, w_low_DV, preferred_element_type=jnp.float32)
    # The head's gradient leaves in its stored dtype, summed in float32 (never rounded to bf16).
    dw_DV = jnp.einsum("btd,btv->dv", x_BTD, g_BTV, preferred_element_type=jnp.float32)
    return dx_BTD.astype(x_BTD.dtype), dw_DV.astype(w_DV.dtype)


_low_precision_product.defvjp(_forward, _backward)


def head_logits(x_BTD: jax.Array, w_DV: jax.Array, *, low_precision_backward: bool = True) -> jax.Array:
    """Float32 logits ``x @ w`` (``w`` as stored, cast to ``x``'s dtype for the product)."""
    if x_BTD.dtype == jnp.float32 or not low_precision_backward:
        return _product(x_BTD, w_DV)
    return _low_precision_product(x_BTD, w_DV)
