"""Decoding: the KV cache changes nothing but speed; sampling is seeded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.errors import ModelError
from models.config import ModelConfig
from models.decode import SamplingConfig, forward_cached, generate, init_cache, sample_logits
from models.transformer import Transformer


def _model(**changes: object) -> Transformer:
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    return Transformer(cfg.replace(**changes), rngs=nnx.Rngs(0))


def test_cached_logits_equal_the_full_forward_pass() -> None:
    model = _model(scan_layers=False)
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 61)
    full = nnx.jit(lambda m, t: m(t))(model, tokens)
    forward = nnx.jit(forward_cached)
    prefill, cache = forward(model, tokens[:, :4], init_cache(model, 2, 7), jnp.int32(0))
    step, cache = forward(model, tokens[:, 4:5], cache, jnp.int32(4))
    rest, _ = forward(model, tokens[:, 5:], cache, jnp.int32(5))
    np.testing.assert_allclose(jnp.concatenate([prefill, step, rest], axis=1), full, atol=1e-5)


@pytest.mark.parametrize("sampling", [SamplingConfig(max_tokens=8, temperature=0.0),
                                      SamplingConfig(max_tokens=8, temperature=1.0, top_p=0.9,
                                                     seed=3)], ids=["greedy", "top_p"])
def test_cached_and_uncached_decoding_give_the_same_tokens(sampling: SamplingConfig) -> None:
    model = _model()  # scanned layers, grouped-query attention
    prompt = jax.random.randint(jax.random.key(2), (2, 5), 0, 61)
    cached = generate(model, prompt, sampling)
    assert cached.shape == (2, 8)
    np.testing.assert_array_equal(cached, generate(model, prompt, sampling, use_cache=False))
    np.testing.assert_array_equal(cached, generate(model, prompt, sampling))  # seeded: repeatable


def test_sampler_respects_temperature_top_p_and_vocab_limit() -> None:
    logits = jnp.array([[0.0, 3.0, 1.0, 5.0], [2.0, 0.0, 4.0, 1.0]])
    key = jax.random.key(0)
    assert sample_logits(logits, key, 0.0, 1.0).tolist() == [3, 2]
    assert sample_logits(logits, key, 0.0, 1.0, vocab_limit=3).tolist() == [1, 2]
    # a nucleus smaller than the top token's mass keeps only the top token
    draws = [sample_logits(logits, jax.random.key(s), 1.0, 0.05).tolist() for s in range(8)]
    assert all(d == [3, 2] for d in draws)
    wide = {tuple(sample_logits(logits, jax.random.key(s), 5.0, 1.0).tolist()) for s in range(16)}
    assert len(wide) > 1  # a hot temperature really samples
    with pytest.raises(ModelError, match="top_p"):
        SamplingConfig(top_p=0.0)
