"""Autoregressive decoding with a key/value cache ``[L, B, S, K, H]``, filled by one prefill pass.
Token ``i`` is drawn with ``split(key(seed), max_tokens)[i]`` with or without the cache, so
``use_cache=False`` is the reference the cached path is tested against.  Call inside
:func:`models.sharding.activation_sharding`; :func:`decode_rules` replicates the tiny batch."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from chinchax.errors import ModelError
from models.sharding import constrain
from models.transformer import ACTIVATION_BTD, Block, Transformer, apply_rope, project_to_vocab, rope_tables


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn: ``temperature`` 0 is greedy; ``top_p`` < 1 is nucleus sampling."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise ModelError(f"max_tokens must be a positive integer, got {self.max_tokens!r}",
                             hint="ask for at least one new token, e.g. --max-tokens 64")
        if self.temperature < 0:
            raise ModelError(f"temperature must be >= 0, got {self.temperature}",
                             hint="use 0 for greedy decoding or a value like 0.8")
        if not 0.0 < self.top_p <= 1.0:
            raise ModelError(f"top_p must be in (0, 1], got {self.top_p}",
                             hint="use 1.0 to sample from the whole distribution, or e.g. 0.9")


class KVCache(NamedTuple):
    """In the compute dtype."""

    k_LBSKH: jax.Array
    v_LBSKH: jax.Array


def decode_rules(rules: Sequence[Sequence[str]]) -> list[list[str]]:
    """Parameters stay sharded as in training; a batch of one prompt is not split over data devices."""
    return [[name, "" if name == "batch" else axes] for name, axes in rules]


def init_cache(model: Transformer, batch: int, length: int) -> KVCache:
    cfg = model.cfg
    shape = (cfg.n_layers, batch, length, cfg.kv_heads, cfg.resolved_head_dim)
    zeros = jnp.zeros(shape, jnp.dtype(cfg.compute_dtype))
    return KVCache(zeros, zeros)


def _cached_attention(block: Block, x_BTD: jax.Array, sin_TH2: jax.Array, cos_TH2: jax.Array,
                      k_BSKH: jax.Array, v_BSKH: jax.Array,
                      start: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Writes positions ``start..start+T-1``'s k, v into the cache, then attends over it."""
    B, T, _ = x_BTD.shape
    N, K, H = block.n_heads, block.n_kv_heads, block.head_dim
    q_BTNH = apply_rope(block.q(x_BTD).reshape(B, T, N, H), sin_TH2, cos_TH2)
    k_BTKH = apply_rope(block.k(x_BTD).reshape(B, T, K, H), sin_TH2, cos_TH2)
    v_BTKH = block.v(x_BTD).reshape(B, T, K, H)
    k_BSKH = jax.lax.dynamic_update_slice(k_BSKH, k_BTKH.astype(k_BSKH.dtype), (0, start, 0, 0))
    v_BSKH = jax.lax.dynamic_update_slice(v_BSKH, v_BTKH.astype(v_BSKH.dtype), (0, start, 0, 0))
    S = k_BSKH.shape[1]
    visible_TS = jnp.arange(S)[None, :] <= (start + jnp.arange(T))[:, None]
    out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BSKH.astype(q_BTNH.dtype),
                                            v_BSKH.astype(q_BTNH.dtype),
                                            mask=visible_TS[None, None])
    out_BTQ = constrain(out_BTNH.reshape(B, T, N * H), ("batch", "seq", "heads"))
    return block.o(out_BTQ), k_BSKH, v_BSKH


def _block_step(block: Block, x_BTD: jax.Array, sin_TH2: jax.Array, cos_TH2: jax.Array,
                k_BSKH: jax.Array, v_BSKH: jax.Array,
                start: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    h_BTD, k_BSKH, v_BSKH = _cached_attention(block, block.attn_norm(x_BTD), sin_TH2, cos_TH2,
                                              k_BSKH, v_BSKH, start)
    x_BTD = x_BTD + h_BTD
    x_BTD = x_BTD + block.mlp(block.mlp_norm(x_BTD))
    return constrain(x_BTD, ACTIVATION_BTD), k_BSKH, v_BSKH


def _blocks_cached(model: Transformer, x_BTD: jax.Array, sin_TH2: jax.Array, cos_TH2: jax.Array,
                   cache: KVCache, start: jax.Array) -> Tuple[jax.Array, KVCache]:
    if model.cfg.scan_layers:
        graphdef, state_L = nnx.split(model.blocks)

        def body(x: jax.Array, layer: tuple) -> tuple:
            state, k, v = layer
            x, k, v = _block_step(nnx.merge(graphdef, state), x, sin_TH2, cos_TH2, k, v, start)
            return x, (k, v)

        x_BTD, (k_L, v_L) = jax.lax.scan(body, x_BTD, (state_L, cache.k_LBSKH, cache.v_LBSKH))
        return x_BTD, KVCache(k_L, v_L)
    ks, vs = [], []
    for i, block in enumerate(model.blocks):
        x_BTD, k, v = _block_step(block, x_BTD, sin_TH2, cos_TH2, cache.k_LBSKH[i],
                                  cache.v_LBSKH[i], start)
        ks.append(k)
        vs.append(v)
    return x_BTD, KVCache(jnp.stack(ks), jnp.stack(vs))


def forward_cached(model: Transformer, tokens_BT: jax.Array, cache: KVCache,
                   start: jax.Array) -> Tuple[jax.Array, KVCache]:
    """Float32 logits and the updated cache; positions before ``start`` must be cached."""
    cfg = model.cfg
    T, S = tokens_BT.shape[1], cache.k_LBSKH.shape[2]
    sin_SH2, cos_SH2 = rope_tables(S, cfg.resolved_head_dim, cfg.rope_theta)
    sin_TH2 = jax.lax.dynamic_slice_in_dim(sin_SH2, start, T)
    cos_TH2 = jax.lax.dynamic_slice_in_dim(cos_SH2, start, T)
    embed_VD = constrain(model.embed[...], ("vocab", None))
    x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(jnp.dtype(cfg.compute_dtype))
    x_BTD, cache = _blocks_cached(model, constrain(x_BTD, ACTIVATION_BTD), sin_TH2, cos_TH2,
                                  cache, start)
    return project_to_vocab(model.final_norm(x_BTD), model.output_kernel()), cache


def sample_logits(logits_BV: jax.Array, key: jax.Array, temperature: float, top_p: float,
                  vocab_limit: Optional[int] = None) -> jax.Array:
    """Argmax at temperature 0, else nucleus sampling; ids at or above ``vocab_limit`` never chosen."""
    logits_BV = logits_BV.astype(jnp.float32)
    if vocab_limit is not None and vocab_limit < logits_BV.shape[-1]:
        logits_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_limit, logits_BV, -jnp.inf)
    if temperature == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV / temperature
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        keep_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV < top_p  # mass before this token
        cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV >= cutoff_B1, logits_BV, -jnp.inf)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def _generate_cached(model: Transformer, prompt_BT: jax.Array, keys: jax.Array,
                     sampling: SamplingConfig, vocab_limit: Optional[int]) -> jax.Array:
    B, T = prompt_BT.shape
    n = sampling.max_tokens
    draw = lambda logits, key: sample_logits(logits, key, sampling.temperature,  # noqa: E731
                                             sampling.top_p, vocab_limit)
    logits_BTV, cache = forward_cached(model, prompt_BT, init_cache(model, B, T + n), jnp.int32(0))
    first_B = draw(logits_BTV[:, -1], keys[0])
    out_BN = jnp.zeros((B, n), jnp.int32).at[:, 0].set(first_B)

    def step(i: jax.Array, carry: tuple) -> tuple:
        out_BN, cache = carry
        logits_B1V, cache = forward_cached(model, out_BN[:, i - 1, None], cache, T + i - 1)
        return out_BN.at[:, i].set(draw(logits_B1V[:, 0], keys[i])), cache

    out_BN, _ = jax.lax.fori_loop(1, n, step, (out_BN, cache))
    return out_BN


def _generate_uncached(model: Transformer, prompt_BT: jax.Array, keys: jax.Array,
                       sampling: SamplingConfig, vocab_limit: Optional[int]) -> jax.Array:
    B, T = prompt_BT.shape
    n = sampling.max_tokens
    buffer_BS = jnp.zeros((B, T + n), jnp.int32).at[:, :T].set(prompt_BT)

    def step(i: jax.Array, buffer_BS: jax.Array) -> jax.Array:
        logits_BV = jax.lax.dynamic_index_in_dim(model(buffer_BS), T + i - 1, axis=1, keepdims=False)
        token_B = sample_logits(logits_BV, keys[i], sampling.temperature, sampling.top_p,
                                vocab_limit)
        return jax.lax.dynamic_update_slice(buffer_BS, token_B[:, None], (0, T + i))

    return jax.lax.fori_loop(0, n, step, buffer_BS)[:, T:]


def generate(model: Transformer, prompt_BT: jax.Array, sampling: SamplingConfig, *,
             use_cache: bool = True, vocab_limit: Optional[int] = None) -> jax.Array:
    """``[B, max_tokens]`` new tokens; ``vocab_limit``: the tokenizer's size if the vocabulary is padded."""
    prompt_BT = jnp.asarray(prompt_BT, jnp.int32)
    if prompt_BT.ndim != 2 or prompt_BT.shape[1] == 0:
        raise ModelError(f"the prompt must be a non-empty [batch, length] array, got shape "
                         f"{tuple(prompt_BT.shape)}", hint="give at least one prompt token")
    keys = jax.random.split(jax.random.key(sampling.seed), sampling.max_tokens)
    graphdef, state = nnx.split(model)
    program = _program(graphdef, use_cache, dataclasses.replace(sampling, seed=0), vocab_limit)
    return program(state, prompt_BT, keys)


@functools.lru_cache(maxsize=16)
def _program(graphdef: nnx.GraphDef, use_cache: bool, sampling: SamplingConfig,
             vocab_limit: Optional[int]) -> Callable:
    """Cached per model structure and sampling settings; the seed enters as keys, so no recompile."""
    body = _generate_cached if use_cache else _generate_uncached

    @jax.jit
    def run(state: nnx.State, prompt_BT: jax.Array, keys: jax.Array) -> jax.Array:
        return body(nnx.merge(graphdef, state), prompt_BT, keys, sampling, vocab_limit)

    return run
