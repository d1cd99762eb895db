"""Splash attention, the Pallas flash-attention kernel for TPU, behind ``model.attention: splash``.
XLA's path materialises float32 scores ``[B, N, T, T]``; splash keeps memory linear in T and skips
blocks above the diagonal.  It runs under ``shard_map`` because GSPMD cannot split a Pallas call (it
would gather every input); off TPU only Pallas's slow interpreter runs it, for the tests."""

from __future__ import annotations

import functools
import importlib
from typing import Any, Optional

import jax
import jax.numpy as jnp

from chinchax.errors import ModelError
from models.sharding import active_mesh_and_rules, logical_to_mesh_spec, target_platform

SPLASH_MODULE = "jax.experimental.pallas.ops.tpu.splash_attention"
SPLASH_BLOCK = 512  # block edge for queries and keys (forward and backward); T must divide by it
SPLASH_MIN_BLOCK = 128  # the TPU tile: sequences shorter than SPLASH_BLOCK use a multiple of it


def _block_for(seq_len: int) -> int:
    if seq_len % SPLASH_MIN_BLOCK:
        raise ModelError(
            f"splash attention needs the sequence length to be a multiple of {SPLASH_MIN_BLOCK}, "
            f"got {seq_len}",
            hint=f"use train.seq_len divisible by {SPLASH_MIN_BLOCK} (e.g. 2048), or "
            "model.attention=auto",
        )
    block = min(SPLASH_BLOCK, seq_len)
    while seq_len % block:
        block -= SPLASH_MIN_BLOCK
    return block


@functools.lru_cache(maxsize=32)
def _causal_kernel(n_heads: int, seq_len: int, interpret: bool) -> Any:
    """A causal multi-head splash kernel for one sequence (built once per shape)."""
    try:
        splash = importlib.import_module(SPLASH_MODULE)
    except ImportError:
        raise ModelError(
            f"model.attention='splash' needs {SPLASH_MODULE}, which this JAX does not have",
            hint="upgrade jax (it ships the kernel), or use model.attention=auto",
        ) from None
    block = _block_for(seq_len)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    mask = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len))] * n_heads)
    return splash.make_splash_mha(
        mask=mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
    )


def _local_splash(
    q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array, *, interpret: bool
) -> jax.Array:
    """Causal attention of the sequences and heads this device holds."""
    _, T, N, H = q_BTNH.shape
    kernel = _causal_kernel(N, T, interpret)
    scaled_q_BNTH = (jnp.swapaxes(q_BTNH, 1, 2) * (H**-0.5)).astype(q_BTNH.dtype)
    out_BNTH = jax.vmap(kernel)(scaled_q_BNTH, jnp.swapaxes(k_BTKH, 1, 2), jnp.swapaxes(v_BTKH, 1, 2))
    return jnp.swapaxes(out_BNTH, 1, 2)


def splash_attention(
    q_BTNH: jax.Array,
    k_BTKH: jax.Array,
    v_BTKH: jax.Array,
    *,
    interpret: Optional[bool] = None,
) -> jax.Array:
    """Causal ``softmax(q kᵀ / sqrt(H)) v``, same layout and result as
    ``jax.nn.dot_product_attention(is_causal=True)``; ``interpret=None`` interprets off TPU (tests)."""
    if interpret is None:
        interpret = target_platform() != "tpu"
    _block_for(q_BTNH.shape[1])  # one clear error before tracing the kernel
    local = functools.partial(_local_splash, interpret=interpret)
    active = active_mesh_and_rules()
    if active is None:
        return local(q_BTNH, k_BTKH, v_BTKH)
    mesh, rules = active
    q_spec = logical_to_mesh_spec(("batch", None, "heads", None), rules)
    kv_spec = logical_to_mesh_spec(("batch", None, "kv", None), rules)
    return jax.shard_map(
        local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False
    )(q_BTNH, k_BTKH, v_BTKH)
