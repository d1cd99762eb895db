"""What the compiled train step holds, read from its lowered program on CPU.

* In bf16 compute the output head runs no float32 × float32 product of vocabulary size,
  forward or backward, and the target logit is no scatter over ``[B, T, V]``.
* The ``attention_dots`` remat policy keeps attention's residuals: the backward does not run
  attention's forward again (counted as softmax exponentials over ``[.., T, T]``).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.config import ModelConfig
from models.head import head_logits
from models.loss import loss_fn, target_logits
from models.sharding import activation_sharding
from models.transformer import Transformer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
VOCAB = 61  # prime: no other dimension of the model has this size
BATCH, SEQ = 2, 24
SMALL = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, d_ff=64)


def _benchmark_module(name: str):
    if name not in sys.modules:
        sys.path.insert(0, str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@functools.lru_cache(maxsize=None)
def lowered_train_step(cfg: ModelConfig) -> str:
    """StableHLO of the trainer's step (forward, backward, AdamW) for ``cfg``."""
    trainer_step = _benchmark_module("trainer_step")
    built = trainer_step.build_trainer_step(cfg, jax.devices()[:1], global_batch=BATCH,
                                            seq_len=SEQ)
    with activation_sharding(built.mesh, built.rules):
        batch = trainer_step.random_batch(cfg.vocab_size, BATCH, SEQ, built.data_sharding)
        return built.step.lower(built.state, batch).as_text()


@pytest.mark.parametrize("loss_chunk", [0, 8])
def test_bf16_step_has_no_float32_vocabulary_products(loss_chunk: int) -> None:
    hlo = _benchmark_module("hlo_counts")
    bf16 = lowered_train_step(SMALL.replace(compute_dtype="bfloat16", loss_chunk=loss_chunk))
    f32 = lowered_train_step(SMALL.replace(loss_chunk=loss_chunk))
    # The counter sees the head: forward, two backward products (and the chunk's recompute).
    assert hlo.f32_vocab_dots(f32, VOCAB) == (3 if loss_chunk == 0 else 4)
    assert hlo.f32_vocab_dots(bf16, VOCAB) == 0
    vocab_dots = [d for d in hlo.dots(bf16) if VOCAB in d.lhs[1] + d.rhs[1] + d.out[1]]
    assert len(vocab_dots) == (3 if loss_chunk == 0 else 4) and all(d.out[0] == "f32" for d in vocab_dots)
    former = lowered_train_step(SMALL.replace(compute_dtype="bfloat16", loss_chunk=loss_chunk,
                                              head_backward="float32"))
    assert hlo.f32_vocab_dots(former, VOCAB) == 2  # the float32 backward products, on request


def test_bf16_target_logit_is_no_scatter_over_the_logits() -> None:
    """The float32 path gathers (two scatters in the gradient: target logit and embedding);
    bf16 selects, leaving the embedding's scatter only."""
    scatters = {dtype: lowered_train_step(SMALL.replace(compute_dtype=dtype)).count('"stablehlo.scatter"(')
                for dtype in ("float32", "bfloat16")}
    assert scatters == {"float32": 2, "bfloat16": 1}


def test_bf16_head_gradients_match_autodiff_in_float32() -> None:
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 16), jnp.float32).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (16, 11), jnp.float32) * 0.3
    g = jax.random.normal(kg, (2, 5, 11), jnp.float32)

    def pulled(fn):
        out, vjp = jax.vjp(fn, x, w)
        return (out, *vjp(g))

    ours = pulled(head_logits)
    ref = pulled(lambda a, b: jnp.einsum("btd,dv->btv", a.astype(jnp.float32), b))
    assert ours[0].dtype == jnp.float32 and ours[1].dtype == jnp.bfloat16 and ours[2].dtype == w.dtype
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=3e-2, atol=3e-2)


def test_target_logits_select_equals_the_gather_out_of_range_ids_give_zero() -> None:
    logits = jax.random.normal(jax.random.key(1), (3, 4, 7))
    ids = jnp.array([[0, 6, 3, 2], [1, 1, 5, 4], [-1, 7, 2, 0]])
    picked = np.asarray(target_logits(logits, ids))
    for (b, t), i in np.ndenumerate(np.asarray(ids)):
        assert picked[b, t] == (logits[b, t, i] if 0 <= i < 7 else 0.0)


def _softmax_exps(remat: str) -> int:
    """Exponentials over attention scores in the lowered gradient of the loss."""
    cfg = SMALL.replace(remat=remat)
    graphdef, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tokens = jnp.zeros((BATCH, SEQ), jnp.int32)

    def loss(p):
        return loss_fn(nnx.merge(graphdef, p, rest), {"inputs": tokens, "targets": tokens})[0]

    text = jax.jit(jax.grad(loss)).lower(params).as_text()
    return len(re.findall(rf"stablehlo\.exponential .*x{SEQ}x{SEQ}xf32>", text))


def test_attention_dots_policy_does_not_recompute_attention_in_the_backward() -> None:
    once = _softmax_exps("none")
    assert once >= 1
    assert _softmax_exps("dots_no_batch") > once  # the counter sees a recomputed forward
    assert _softmax_exps("attention_dots") == once
    assert _softmax_exps("save_attention") == once
