"""The decoder: parameter layout, causality, GQA, tying, biases, scan, remat, dtypes, loss.

Most tests fill an abstract model (``nnx.eval_shape``) with numpy values instead of running
the JAX initialisers: equal-parameter comparisons between variants need that anyway, and
it keeps the file fast on two CPU cores.
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from chinchax.errors import ModelError
from models.config import ModelConfig

from loss_helpers import cross_entropy
from models.loss import loss_fn
from models.sharding import LOGICAL_AXES
from models.transformer import Transformer

Path = Tuple[object, ...]
# Less LLVM effort when compiling (same HLO, same numerics up to rounding): the compiles are
# most of this file's time on a small CPU.
FAST_BACKEND = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
BASE = ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48)


def abstract_model(cfg: ModelConfig) -> Transformer:
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def flat_params(model: nnx.Module) -> Dict[Path, np.ndarray]:
    return {
        path: np.asarray(var[...]) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def build(cfg: ModelConfig, value_of: Callable[[Path, Tuple[int, ...]], np.ndarray]) -> Transformer:
    """A model of ``cfg`` whose parameter at ``path`` is ``value_of(path, shape)``."""
    graphdef, state = nnx.split(abstract_model(cfg))
    flat = [
        (path, var.replace(jnp.asarray(value_of(path, var.shape), jnp.float32)))
        for path, var in nnx.to_flat_state(state)
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def random_values(seed: int) -> Callable[[Path, Tuple[int, ...]], np.ndarray]:
    """Well-scaled random parameters: kernels ~ 1/sqrt(fan_in), scales near 1, small biases."""

    def value_of(path: Path, shape: Tuple[int, ...]) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(repr(path).encode())])
        if path[-1] == "scale":
            return 1.0 + 0.1 * rng.standard_normal(shape)
        if path[-1] == "bias":
            return 0.1 * rng.standard_normal(shape)
        fan_in = shape[-1] if path == ("embed",) else shape[-2]
        return rng.standard_normal(shape) / np.sqrt(fan_in)

    return value_of


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return build(cfg, random_values(seed))


@partial(jax.jit, static_argnums=0, compiler_options=FAST_BACKEND)
def _apply(graphdef: nnx.GraphDef, state: nnx.State, tokens_BT: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(tokens_BT)


def logits(model: nnx.Module, tokens_BT: jax.Array) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(_apply(graphdef, state, tokens_BT))


def tokens(cfg: ModelConfig, batch: int = 2, seq: int = 12, seed: int = 0) -> jax.Array:
    return jnp.asarray(
        np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq)), jnp.int32
    )


# ------------------------------------------------------------------------ layout


def expected_layout(cfg: ModelConfig) -> Dict[Path, Tuple[Tuple[int, ...], Tuple[str, ...]]]:
    """The parameter tree of the ``models/config.py`` docstring, written out by hand."""
    D, F, V, Q, C = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.q_width, cfg.kv_width
    layer = {
        ("attn_norm", "scale"): ((D,), ("embed",)),
        ("q", "kernel"): ((D, Q), ("embed", "heads")),
        ("k", "kernel"): ((D, C), ("embed", "kv")),
        ("v", "kernel"): ((D, C), ("embed", "kv")),
        ("o", "kernel"): ((Q, D), ("heads", "embed")),
        ("mlp_norm", "scale"): ((D,), ("embed",)),
        ("up", "kernel"): ((D, F), ("embed", "mlp")),
        ("down", "kernel"): ((F, D), ("mlp", "embed")),
    }
    if cfg.mlp == "swiglu":
        layer[("gate", "kernel")] = ((D, F), ("embed", "mlp"))
    if cfg.use_bias:
        for name, width, axis in [
            ("q", Q, "heads"),
            ("k", C, "kv"),
            ("v", C, "kv"),
            ("o", D, "embed"),
            ("up", F, "mlp"),
            ("down", D, "embed"),
        ] + ([("gate", F, "mlp")] if cfg.mlp == "swiglu" else []):
            layer[(name, "bias")] = ((width,), (axis,))
    out = {("embed",): ((V, D), ("vocab", "embed")), ("final_norm", "scale"): ((D,), ("embed",))}
    if not cfg.tie_embeddings:
        out[("head", "kernel")] = ((D, V), ("embed", "vocab"))
    for path, (shape, names) in layer.items():
        if cfg.scan_layers:
            out[("blocks",) + path] = ((cfg.n_layers,) + shape, ("layers",) + names)
        else:
            for i in range(cfg.n_layers):
                out[("blocks", i) + path] = (shape, names)
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        BASE,
        BASE.replace(n_kv_heads=None, tie_embeddings=True, use_bias=True),
        BASE.replace(mlp="gelu", use_bias=True, scan_layers=False, n_layers=3),
        BASE.replace(head_dim=16, n_kv_heads=1, mlp="gelu", tie_embeddings=True),
    ],
    ids=["gqa-swiglu", "mha-tied-bias", "gelu-bias-unscanned", "mqa-wide-heads-tied"],
)
def test_parameter_tree_follows_the_documented_layout(cfg: ModelConfig) -> None:
    model = abstract_model(cfg)
    found = {
        path: (tuple(var.shape), tuple(var.get_metadata()["out_sharding"]))
        for path, var in nnx.to_flat_state(nnx.state(model))
    }
    assert found == expected_layout(cfg)
    assert all(isinstance(var, nnx.Param) for _, var in nnx.to_flat_state(nnx.state(model)))
    assert {name for _, names in found.values() for name in names} <= set(LOGICAL_AXES)


# ------------------------------------------------------------------------ forward pass


def test_real_init_gives_float32_params_and_finite_float32_logits() -> None:
    cfg = ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        compute_dtype="bfloat16",
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    params = flat_params(model)
    assert {p.dtype for p in params.values()} == {np.dtype("float32")}
    # Initial logits are O(1): the embedding and head scales keep the softmax near uniform.
    out = logits(model, tokens(cfg))
    assert out.shape == (2, 12, cfg.vocab_size) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and 0.1 < out.std() < 10.0
    # Different seeds give different parameters; the same seed the same ones.
    again = flat_params(Transformer(cfg, rngs=nnx.Rngs(0)))
    other = flat_params(Transformer(cfg, rngs=nnx.Rngs(1)))
    assert all(np.array_equal(params[k], again[k]) for k in params)
    assert not np.allclose(params[("blocks", "q", "kernel")], other[("blocks", "q", "kernel")])


def test_changing_a_future_token_leaves_earlier_logits_unchanged() -> None:
    model = random_model(BASE)
    x = tokens(BASE, batch=1, seq=12)
    t = 7
    changed = x.at[0, t].set((x[0, t] + 1) % BASE.vocab_size)
    a, b = logits(model, x), logits(model, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max(axis=-1).min() > 1e-4  # every later position sees it


def test_grouped_query_attention_equals_multi_head_with_repeated_kv_heads() -> None:
    """Query head n attends with kv head n // (n_heads / n_kv_heads), as jax.nn expects."""
    gqa = random_model(BASE)
    mha_cfg = BASE.replace(n_kv_heads=None)
    group = BASE.n_heads // BASE.kv_heads
    H = BASE.resolved_head_dim
    gqa_params = flat_params(gqa)

    def value_of(path: Path, shape: Tuple[int, ...]) -> np.ndarray:
        value = gqa_params[path]
        if path[1:2] in (("k",), ("v",)):
            # [L, D, K*H] -> [L, D, K, H] -> each kv head repeated per group -> [L, D, N*H]
            L, D, _ = value.shape
            value = value.reshape(L, D, BASE.kv_heads, H)
            value = np.repeat(value, group, axis=2).reshape(L, D, -1)
        assert value.shape == shape
        return value

    mha = build(mha_cfg, value_of)
    np.testing.assert_allclose(
        logits(mha, tokens(BASE)), logits(gqa, tokens(BASE)), rtol=1e-5, atol=1e-5
    )


def test_scanned_and_unscanned_layers_compute_the_same_function() -> None:
    scanned = random_model(BASE)
    stacked = flat_params(scanned)
    unscanned = build(
        BASE.replace(scan_layers=False),
        lambda path, shape: (
            stacked[(path[0],) + path[2:]][path[1]] if path[0] == "blocks" else stacked[path]
        ),
    )
    np.testing.assert_allclose(
        logits(unscanned, tokens(BASE)), logits(scanned, tokens(BASE)), rtol=1e-5, atol=1e-5
    )


def test_tied_embeddings_use_the_embedding_as_the_output_head() -> None:
    tied_cfg = BASE.replace(tie_embeddings=True)
    tied = random_model(tied_cfg)
    params = flat_params(tied)
    assert ("head", "kernel") not in params
    untied = build(
        BASE,
        lambda path, shape: params[("embed",)].T if path == ("head", "kernel") else params[path],
    )
    np.testing.assert_allclose(
        logits(tied, tokens(BASE)), logits(untied, tokens(BASE)), rtol=1e-5, atol=1e-5
    )


def test_zero_biases_change_nothing_and_nonzero_biases_are_used() -> None:
    plain = random_model(BASE)
    params = flat_params(plain)
    biased_cfg = BASE.replace(use_bias=True)
    zero_bias = build(
        biased_cfg, lambda path, shape: np.zeros(shape) if path[-1] == "bias" else params[path]
    )
    np.testing.assert_allclose(
        logits(zero_bias, tokens(BASE)), logits(plain, tokens(BASE)), rtol=1e-5, atol=1e-5
    )
    for name in ("q", "k", "v", "o", "gate", "up", "down"):
        one_bias = build(
            biased_cfg,
            lambda path, shape: (
                (0.5 * np.ones(shape) if path[1] == name else np.zeros(shape))
                if path[-1] == "bias"
                else params[path]
            ),
        )
        assert (
            np.abs(logits(one_bias, tokens(BASE)) - logits(plain, tokens(BASE))).max() > 1e-3
        ), name


def test_gelu_mlp_runs_and_differs_from_swiglu() -> None:
    gelu_cfg = BASE.replace(mlp="gelu")
    swiglu = random_model(BASE)
    params = flat_params(swiglu)
    gelu = build(gelu_cfg, lambda path, shape: params[path])
    a, b = logits(gelu, tokens(BASE)), logits(swiglu, tokens(BASE))
    assert np.all(np.isfinite(a)) and np.abs(a - b).max() > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_logits_and_tracks_float32() -> None:
    f32 = random_model(BASE)
    params = flat_params(f32)
    bf16 = build(BASE.replace(compute_dtype="bfloat16"), lambda path, shape: params[path])
    low, high = logits(bf16, tokens(BASE)), logits(f32, tokens(BASE))
    assert low.dtype == np.float32
    assert all(var[...].dtype == jnp.float32 for _, var in nnx.to_flat_state(nnx.state(bf16)))
    assert not np.array_equal(low, high)  # the compute really ran in bfloat16
    assert np.abs(low - high).max() < 0.1 * np.abs(high).max()


def test_attention_implementations() -> None:
    auto = random_model(BASE)
    params = flat_params(auto)
    xla = build(BASE.replace(attention="xla"), lambda path, shape: params[path])
    np.testing.assert_allclose(
        logits(xla, tokens(BASE)), logits(auto, tokens(BASE)), rtol=1e-6, atol=1e-6
    )
    if jax.default_backend() != "gpu":
        cudnn = build(BASE.replace(attention="cudnn"), lambda path, shape: params[path])
        with pytest.raises(ModelError, match="GPU"):
            cudnn(tokens(BASE))


def test_odd_head_dim_is_rejected_with_a_hint() -> None:
    with pytest.raises(ModelError) as err:
        abstract_model(BASE.replace(head_dim=7))
    assert "head_dim" in str(err.value) and err.value.hint


# ------------------------------------------------------------------------ scan and remat


REMAT_POLICIES = ("full", "dots", "dots_no_batch", "save_attention", "attention_dots")


def test_remat_policies_give_the_same_gradients() -> None:
    cfg = BASE.replace(d_ff=32)
    batch = {"inputs": tokens(cfg, seq=8), "targets": tokens(cfg, seq=8, seed=1)}
    params = flat_params(random_model(cfg))
    variants = {
        policy: nnx.split(build(cfg.replace(remat=policy), lambda path, shape: params[path]))
        for policy in ("none",) + REMAT_POLICIES
    }

    def uses_checkpoint(policy: str) -> bool:
        graphdef, state = variants[policy]
        return "remat" in str(
            jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(batch["inputs"]))(state)
        )

    assert not uses_checkpoint("none") and all(uses_checkpoint(p) for p in REMAT_POLICIES)

    # All variants in one program: one compilation instead of five.
    @partial(jax.jit, compiler_options=FAST_BACKEND)
    def all_grads(states: Dict[str, nnx.State]) -> Dict[str, nnx.State]:
        return {
            policy: jax.grad(lambda s: loss_fn(nnx.merge(variants[policy][0], s), batch)[0])(state)
            for policy, state in states.items()
        }

    grads = all_grads({policy: state for policy, (_, state) in variants.items()})
    reference = dict(nnx.to_flat_state(grads["none"]))
    for policy in REMAT_POLICIES:
        for path, var in nnx.to_flat_state(grads[policy]):
            np.testing.assert_allclose(
                var[...], reference[path][...], rtol=1e-5, atol=1e-6, err_msg=f"{policy} {path}"
            )


def test_scanned_program_does_not_grow_with_depth() -> None:
    """One scanned layer body serves any depth; the unrolled program grows per layer.

    (The compiled training step follows: measured compile time is flat in depth when
    scanned.)  The forward program suffices: the backward of a scan is a scan.
    """
    x = tokens(BASE, seq=8)

    def program_size(cfg: ModelConfig) -> int:
        graphdef, state = nnx.split(abstract_model(cfg))
        return len(jax.jit(lambda s: nnx.merge(graphdef, s)(x)).lower(state).as_text())

    scanned_2 = program_size(BASE.replace(n_layers=2))
    scanned_8 = program_size(BASE.replace(n_layers=8))
    unrolled_2 = program_size(BASE.replace(n_layers=2, scan_layers=False))
    unrolled_8 = program_size(BASE.replace(n_layers=8, scan_layers=False))
    assert abs(scanned_8 - scanned_2) < 0.02 * scanned_2
    assert unrolled_8 > 2 * unrolled_2


# ------------------------------------------------------------------------ loss


def test_cross_entropy_matches_optax_with_mask_and_z_loss() -> None:
    rng = np.random.default_rng(0)
    logits_BTV = jnp.asarray(3 * rng.standard_normal((3, 5, 11)), jnp.float32)
    targets_BT = jnp.asarray(rng.integers(0, 11, (3, 5)), jnp.int32)
    mask_BT = rng.random((3, 5)) < 0.6

    @jax.jit
    def all_cases(mask_BT: jax.Array) -> dict:
        return {
            "optax": optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT),
            "lse": jax.nn.logsumexp(logits_BTV, axis=-1),
            "plain": cross_entropy(logits_BTV, targets_BT),
            "masked": cross_entropy(logits_BTV, targets_BT, mask_BT),
            "z_loss": cross_entropy(logits_BTV, targets_BT, mask_BT, z_loss=1e-2),
            "empty": cross_entropy(logits_BTV, targets_BT, jnp.zeros_like(mask_BT)),
        }

    got = jax.device_get(all_cases(jnp.asarray(mask_BT)))
    per_token, lse = got["optax"], got["lse"]
    np.testing.assert_allclose(got["plain"][0], per_token.mean(), rtol=1e-6)
    assert got["plain"][1] == 15
    np.testing.assert_allclose(got["masked"][0], per_token[mask_BT].mean(), rtol=1e-6)
    assert got["masked"][1] == mask_BT.sum()
    want_z = (per_token + 1e-2 * lse**2)[mask_BT].mean()
    np.testing.assert_allclose(got["z_loss"][0], want_z, rtol=1e-6)
    assert got["empty"] == (0.0, 0.0)


def test_loss_fn_works_with_nnx_and_jax_value_and_grad() -> None:
    cfg = BASE.replace(n_layers=1, scan_layers=False)
    model = random_model(cfg)
    batch = {
        "inputs": tokens(cfg),
        "targets": tokens(cfg, seed=1),
        "mask": jnp.ones((2, 12)).at[:, :3].set(0),
    }
    graphdef, state = nnx.split(model)

    @partial(jax.jit, compiler_options=FAST_BACKEND)
    def both_ways(state: nnx.State):
        by_nnx = nnx.value_and_grad(partial(loss_fn, z_loss=1e-3), has_aux=True)(
            nnx.merge(graphdef, state), batch
        )
        by_jax = jax.value_and_grad(
            lambda s: loss_fn(nnx.merge(graphdef, s), batch, z_loss=1e-3), has_aux=True
        )(state)
        return by_nnx, by_jax, nnx.merge(graphdef, state)(batch["inputs"])

    ((loss, aux), nnx_grads), ((jax_loss, _), jax_grads), logits_BTV = both_ways(state)
    np.testing.assert_allclose(loss, jax_loss, rtol=1e-6)
    assert aux["n_tokens"] == 18 and aux["ce"] < loss  # z-loss adds a positive term
    expected_ce, _ = cross_entropy(logits_BTV, batch["targets"], batch["mask"])
    np.testing.assert_allclose(aux["ce"], expected_ce, rtol=1e-5)
    for (path, a), (_, b) in zip(nnx.to_flat_state(nnx_grads), nnx.to_flat_state(jax_grads)):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-5, atol=1e-7, err_msg=str(path))
