"""Meshes, logical-axis rules, sharded init and the sharded train step on 8 CPU devices.

The central check: on meshes (data, fsdp, tensor) = (8,1,1), (2,2,2) and (1,2,4), a jitted
loss-and-gradient step with NamedSharding in and out gives the single-device loss and
gradients, while the parameters really live in pieces.
"""

from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from chinchax.errors import ModelError
from models.config import ModelConfig
from loss_helpers import cross_entropy, vocab_parallel_cross_entropy
from models.loss import loss_fn
from models.build import create_sharded_model
from models.sharding import (DEFAULT_RULES, MeshConfig, activation_sharding, batch_sharding, constrain, logical_to_mesh_spec, make_mesh, state_shardings)
from models.transformer import Transformer

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
RULES = [list(rule) for rule in DEFAULT_RULES]
SEED = 3
# Less LLVM effort when compiling (same partitioned HLO, same numerics up to rounding): the
# compiles are most of this file's time on a small CPU.
FAST_BACKEND = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module", autouse=True)
def eight_devices() -> None:
    if jax.device_count() != 8:
        pytest.skip("needs the 8 fake CPU devices that tests/conftest.py sets up")


# ------------------------------------------------------------------------ mesh config


def test_mesh_sizes_resolve_minus_one_and_use_auto_axes() -> None:
    mesh = make_mesh(MeshConfig(data=-1, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert dict(make_mesh(MeshConfig(data=1, fsdp=-1, tensor=4)).shape) == {
        "data": 1,
        "fsdp": 2,
        "tensor": 4,
    }
    assert dict(make_mesh(MeshConfig(), devices=jax.devices()[:4]).shape) == {
        "data": 4,
        "fsdp": 1,
        "tensor": 1,
    }


@pytest.mark.parametrize(
    "mesh_cfg, words",
    [
        (MeshConfig(data=3), "does not fit 8 devices"),
        (MeshConfig(data=2, fsdp=2, tensor=1), "use 4 devices"),
        (MeshConfig(data=-1, dcn_data=2), "multi-slice"),
    ],
)
def test_meshes_that_do_not_fit_the_devices_raise_mesh_error(
    mesh_cfg: MeshConfig, words: str
) -> None:
    with pytest.raises(ModelError, match=words) as err:
        make_mesh(mesh_cfg)
    assert err.value.hint


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(data=-1, fsdp=-1), "more than one"),
        (dict(tensor=0), "mesh.tensor"),
        (dict(dcn_fsdp=0), "mesh.dcn_fsdp"),
        (dict(rules=[["embed", "model"]]), "unknown mesh axis 'model'"),
        (dict(rules=[["hidden", "tensor"]]), "unknown logical axis 'hidden'"),
        (dict(rules=[["embed", "fsdp"], ["embed", ""]]), "two sharding rules"),
        (dict(rules=[["embed"]]), "pair"),
    ],
)
def test_bad_mesh_config_is_one_clear_error(kwargs: dict, words: str) -> None:
    with pytest.raises(ModelError, match=words) as err:
        MeshConfig(**kwargs)
    assert err.value.hint


def test_logical_names_map_through_the_rules() -> None:
    assert logical_to_mesh_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(("layers", "heads", "embed"), RULES) == P(None, "tensor", "fsdp")
    assert logical_to_mesh_spec(("batch", "seq"), RULES) == P(("data", "fsdp"), None)
    # A mesh axis serves one dimension only: activations stay batch-sharded, not embed-sharded.
    assert logical_to_mesh_spec(("batch", "seq", "embed"), RULES) == P(("data", "fsdp"), None, None)
    assert logical_to_mesh_spec((None, "vocab"), [["vocab", "fsdp,tensor"]]) == P(
        None, ("fsdp", "tensor")
    )
    assert logical_to_mesh_spec(("embed",), [["vocab", "tensor"]]) == P(None)  # no rule: replicated
    with pytest.raises(ModelError, match="unknown logical axis"):
        logical_to_mesh_spec(("hidden",), RULES)


def test_constrain_is_a_no_op_without_an_active_mesh() -> None:
    x = jnp.arange(8.0)
    assert constrain(x, ("batch",)) is x


# ------------------------------------------------------------------------ sharded model and step


def _batch() -> Dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    make = lambda: jnp.asarray(rng.integers(0, CFG.vocab_size, (8, 16)), jnp.int32)  # noqa: E731
    return {"inputs": make(), "targets": make(), "mask": jnp.asarray(rng.random((8, 16)) < 0.9)}


def _loss_and_grads(graphdef: nnx.GraphDef, vocab_parallel: bool):
    def step(state: nnx.State, batch: Dict[str, jax.Array]) -> Tuple[jax.Array, nnx.State]:
        def loss_of(s: nnx.State) -> jax.Array:
            return loss_fn(
                nnx.merge(graphdef, s), batch, z_loss=1e-4, vocab_parallel=vocab_parallel
            )[0]

        return jax.value_and_grad(loss_of)(state)

    return step


@pytest.fixture(scope="module")
def reference() -> Tuple[nnx.GraphDef, nnx.State, jax.Array, nnx.State]:
    """Single-device model (eager init): graph, parameters, loss and gradients."""
    graphdef, state = nnx.split(Transformer(CFG, rngs=nnx.Rngs(SEED)))
    step = jax.jit(_loss_and_grads(graphdef, False), compiler_options=FAST_BACKEND)
    loss, grads = step(state, _batch())
    return graphdef, state, loss, grads


def _leaves(state: nnx.State) -> Dict[Tuple, jax.Array]:
    return {path: var[...] for path, var in nnx.to_flat_state(state)}


# (data, fsdp, tensor) -> expected per-device shard shape of some parameters.
SHARD_SHAPES = {
    (8, 1, 1): {
        ("embed",): (64, 32),
        ("blocks", "q", "kernel"): (2, 32, 32),
        ("blocks", "down", "kernel"): (2, 64, 32),
    },
    (2, 2, 2): {
        ("embed",): (32, 16),
        ("blocks", "q", "kernel"): (2, 16, 16),
        ("blocks", "down", "kernel"): (2, 32, 16),
        ("blocks", "k", "kernel"): (2, 16, 8),
        ("head", "kernel"): (16, 32),
    },
    (1, 2, 4): {
        ("embed",): (16, 16),
        ("blocks", "q", "kernel"): (2, 16, 8),
        ("blocks", "down", "kernel"): (2, 16, 16),
        ("blocks", "k", "kernel"): (2, 16, 4),
        ("head", "kernel"): (16, 16),
        ("blocks", "attn_norm", "scale"): (2, 16),
    },
}


def _check_split(params: Dict[Tuple, jax.Array], shape: Tuple[int, int, int]) -> None:
    for path, shard_shape in SHARD_SHAPES[shape].items():
        shards = params[path].addressable_shards
        assert len(shards) == 8 and {s.data.shape for s in shards} == {shard_shape}, path


def test_sharded_init_creates_split_parameters_equal_to_the_single_device_init(reference) -> None:
    """Each device computes only its own shards, yet the values equal the plain init's."""
    shape = (2, 2, 2)
    mesh = make_mesh(MeshConfig(*shape))
    _, ref_state, _, _ = reference
    params = _leaves(nnx.state(create_sharded_model(CFG, mesh, RULES, seed=SEED)))
    ref_params = _leaves(ref_state)
    expected = {
        path: sharding
        for path, sharding in nnx.to_flat_state(state_shardings(ref_state, mesh, RULES))
    }
    assert params.keys() == ref_params.keys()
    for path, value in params.items():
        assert value.sharding.is_equivalent_to(expected[path].get_value(), value.ndim), path
        np.testing.assert_allclose(value, ref_params[path], rtol=1e-6, atol=1e-7, err_msg=str(path))
    _check_split(params, shape)


@pytest.mark.parametrize("shape", list(SHARD_SHAPES), ids=lambda s: "x".join(map(str, s)))
def test_sharded_step_matches_single_device(shape: Tuple[int, int, int], reference) -> None:
    graphdef, ref_state, ref_loss, ref_grads = reference
    mesh = make_mesh(MeshConfig(*shape))
    shardings = state_shardings(ref_state, mesh, RULES)
    state = jax.device_put(ref_state, shardings)
    params = _leaves(state)
    _check_split(params, shape)

    data = batch_sharding(mesh, RULES)
    replicated = NamedSharding(mesh, P())
    step = jax.jit(
        _loss_and_grads(graphdef, vocab_parallel=shape[2] > 1),
        in_shardings=(shardings, data),
        out_shardings=(replicated, shardings),
        compiler_options=FAST_BACKEND,
    )
    with activation_sharding(mesh, RULES):
        loss, grads = step(state, jax.device_put(_batch(), data))

    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    ref_grad_leaves = _leaves(ref_grads)
    for path, grad in _leaves(grads).items():
        assert grad.sharding.is_equivalent_to(params[path].sharding, grad.ndim), path
        np.testing.assert_allclose(
            grad, ref_grad_leaves[path], rtol=1e-4, atol=1e-6, err_msg=str(path)
        )


def test_activation_constraints_shard_the_logits_on_batch_and_vocab() -> None:
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))
    model = nnx.eval_shape(lambda: Transformer(CFG.replace(n_layers=1), rngs=nnx.Rngs(0)))
    graphdef, abstract = nnx.split(model)
    state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abstract)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x), compiler_options=FAST_BACKEND)
    tokens = jnp.zeros((8, 16), jnp.int32)
    with activation_sharding(mesh, RULES):
        logits = forward(state, tokens)
    expected = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor"))
    assert logits.sharding.is_equivalent_to(expected, 3)


# ------------------------------------------------------------------------ vocab-parallel loss


VOCAB_SPLIT_OVER_TWO_AXES = [["batch", "data"], ["vocab", "fsdp,tensor"]]


@pytest.mark.parametrize(
    "shape, rules",
    [
        ((1, 2, 4), RULES),
        ((2, 2, 2), RULES),
        ((8, 1, 1), RULES),
        ((2, 2, 2), VOCAB_SPLIT_OVER_TWO_AXES),
    ],
    ids=["1x2x4", "2x2x2", "8x1x1", "2x2x2-vocab-over-fsdp-and-tensor"],
)
def test_vocab_parallel_cross_entropy_equals_the_plain_one(
    shape: Tuple[int, int, int], rules: list
) -> None:
    mesh = make_mesh(MeshConfig(*shape))
    rng = np.random.default_rng(1)
    logits = jnp.asarray(4 * rng.standard_normal((8, 6, 64)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 64, (8, 6)), jnp.int32)
    mask = jnp.asarray(rng.random((8, 6)) < 0.7)
    spec = logical_to_mesh_spec(("batch", "seq", "vocab"), rules)
    sharded_logits = jax.device_put(logits, NamedSharding(mesh, spec))

    def plain(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
        return cross_entropy(x, targets, mask, z_loss=1e-3)

    def parallel(x: jax.Array) -> Tuple[jax.Array, jax.Array]:
        return vocab_parallel_cross_entropy(x, targets, mask, mesh=mesh, rules=rules, z_loss=1e-3)

    (want, want_n), want_grad = jax.value_and_grad(plain, has_aux=True)(logits)
    value_and_grad = jax.jit(
        jax.value_and_grad(parallel, has_aux=True), compiler_options=FAST_BACKEND
    )
    (got, got_n), got_grad = value_and_grad(sharded_logits)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got_n == want_n == int(mask.sum())
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-8)
    if mesh.shape["tensor"] > 1:  # really a shard_map with collectives over the vocab axis
        text = jax.jit(parallel).lower(sharded_logits).as_text()
        assert "all_reduce" in text or "all-reduce" in text
