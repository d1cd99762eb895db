"""Optimiser: schedule shapes, the weight-decay mask, clipping, gradient accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from chinchax.errors import ChinchaxError, TrainingError
from training.optim import (OptimConfig, decay_mask, learning_rate_at_step, make_optimizer, make_schedule)


def _rates(schedule, n: int) -> np.ndarray:
    return np.array([float(schedule(i)) for i in range(n)])


def test_cosine_warms_up_linearly_then_decays_to_the_floor():
    cfg = OptimConfig(learning_rate=1e-2, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    rates = _rates(make_schedule(cfg, 100), 100)
    np.testing.assert_allclose(rates[:10], 1e-2 * np.arange(1, 11) / 10, rtol=1e-6)
    assert rates.max() == pytest.approx(1e-2)
    assert np.all(np.diff(rates[9:]) <= 1e-12)  # never rises after the peak
    assert rates[-1] == pytest.approx(1e-3, rel=1e-5)  # the last update uses the floor
    assert rates[55] == pytest.approx(
        1e-3 + 0.5 * (1e-2 - 1e-3) * (1 + np.cos(np.pi * 46 / 90)), rel=1e-4
    )


def test_wsd_is_stable_then_decays_over_the_last_fraction():
    cfg = OptimConfig(
        learning_rate=2e-3,
        schedule="wsd",
        warmup_fraction=0.1,
        decay_fraction=0.2,
        min_lr_ratio=0.0,
    )
    rates = _rates(make_schedule(cfg, 100), 100)
    assert rates[0] > 0 and rates[9] == pytest.approx(2e-3)
    np.testing.assert_allclose(rates[9:80], 2e-3)  # the stable phase
    assert np.all(np.diff(rates[80:]) < 0)  # linear decay over the last 20 updates
    np.testing.assert_allclose(np.diff(rates[80:]), -2e-3 / 20, rtol=1e-4)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_wsd_cosine_decay_and_constant_schedule():
    wsd = OptimConfig(
        schedule="wsd",
        warmup_steps=5,
        decay_fraction=0.5,
        wsd_decay_shape="cosine",
        min_lr_ratio=0.2,
        learning_rate=1.0,
    )
    rates = _rates(make_schedule(wsd, 40), 40)
    assert rates[-1] == pytest.approx(0.2, rel=1e-5)
    assert rates[30] == pytest.approx(0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * 11 / 20)), rel=1e-4)
    constant = OptimConfig(schedule="constant", warmup_steps=4, learning_rate=1.0)
    rates = _rates(make_schedule(constant, 20), 20)
    np.testing.assert_allclose(rates[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rates[4:], 1.0)


def test_schedule_runs_inside_jit_with_an_array_step():
    schedule = make_schedule(OptimConfig(warmup_steps=3), 50)
    jitted = jax.jit(schedule)(jnp.asarray(7, jnp.int32))
    assert float(jitted) == pytest.approx(float(schedule(7)))


@pytest.mark.parametrize(
    "changes",
    [
        {"schedule": "linear"},
        {"learning_rate": 0.0},
        {"warmup_fraction": 1.0},
        {"b2": 1.0},
        {"clip_norm": -1.0},
        {"min_lr_ratio": 1.5},
        {"weight_decay": -0.1},
    ],
)
def test_bad_settings_are_one_clear_error(changes):
    with pytest.raises(TrainingError) as raised:
        OptimConfig(**changes)
    assert isinstance(raised.value, ChinchaxError) and raised.value.hint
    assert next(iter(changes)) in str(raised.value)


def test_warmup_longer_than_the_run_is_an_error():
    with pytest.raises(TrainingError, match="warmup"):
        make_schedule(OptimConfig(warmup_steps=100), 50)
    with pytest.raises(TrainingError, match="overlap"):
        make_schedule(OptimConfig(schedule="wsd", warmup_fraction=0.6, decay_fraction=0.5), 100)


def _scanned_params() -> dict:
    """Shaped like the decoder's tree: a stacked ``layers`` axis of 3 in front of each block leaf."""
    return {
        "embed": {"embedding": jnp.ones((16, 8))},
        "layers": {
            "attn_norm": {"scale": jnp.ones((3, 8))},
            "q": {"kernel": jnp.ones((3, 8, 8)), "bias": jnp.ones((3, 8))},
            "mlp_norm": {"scale": jnp.ones((3, 8))},
            "down": {"kernel": jnp.ones((3, 8, 8))},
            "gain": jnp.ones((3, 8)),  # stacked vector with an unremarkable name: rank rule
        },
        "final_norm": {"scale": jnp.ones((8,))},
        "head": {"kernel": jnp.ones((8, 16))},
        "bare_vector": jnp.ones((8,)),
    }


def test_mask_decays_matrices_but_not_norms_biases_or_stacked_vectors():
    mask = decay_mask(_scanned_params())
    assert mask["embed"]["embedding"] and mask["head"]["kernel"]
    assert mask["layers"]["q"]["kernel"] and mask["layers"]["down"]["kernel"]
    assert not mask["layers"]["attn_norm"]["scale"] and not mask["layers"]["mlp_norm"]["scale"]
    assert not mask["layers"]["q"]["bias"] and not mask["final_norm"]["scale"]
    assert not mask["layers"]["gain"] and not mask["bare_vector"]


def test_weight_decay_touches_only_masked_in_parameters():
    params = _scanned_params()
    cfg = OptimConfig(learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
    tx = make_optimizer(cfg, 10, params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    mask = decay_mask(params)
    for decayed, update in zip(jax.tree.leaves(mask), jax.tree.leaves(updates)):
        if decayed:
            np.testing.assert_allclose(update, -0.1 * 0.5 * 1.0, rtol=1e-6)  # -lr * wd * w
        else:
            np.testing.assert_array_equal(update, 0.0)


def test_mask_works_on_flax_nnx_state():
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.proj = nnx.Linear(4, 6, rngs=rngs)
            self.norm = nnx.RMSNorm(6, rngs=rngs)

    _, params, _ = nnx.split(Tiny(nnx.Rngs(0)), nnx.Param, ...)
    flat = {
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): decayed
        for path, decayed in jax.tree_util.tree_flatten_with_path(decay_mask(params))[0]
    }
    assert flat == {"proj/kernel/value": True, "proj/bias/value": False, "norm/scale/value": False}
    tx = make_optimizer(OptimConfig(warmup_steps=1), 10, params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_clipping_bounds_the_global_norm_of_the_gradient():
    """Adam's second moment after one step with b2=0 is the squared gradient it was given, so it
    shows whether the optimiser saw the clipped or the raw gradient."""
    params = {"w": jnp.zeros((4, 4)), "b": jnp.zeros((4,))}
    grads = {"w": jnp.full((4, 4), 3.0), "b": jnp.full((4,), 4.0)}
    norm = float(optax.tree.norm(grads))
    cfg = OptimConfig(
        learning_rate=1e-3,
        warmup_steps=0,
        schedule="constant",
        clip_norm=1.0,
        weight_decay=0.0,
        b1=0.0,
        b2=0.0,
        eps=1e-30,
    )
    tx = make_optimizer(cfg, 10, params)
    state = tx.init(params)
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-6) and norm > 1.0
    # b2=0: the second moment is the squared clipped gradient, so the update is -lr*sign
    updates, state = jax.jit(tx.update)(grads, state, params)
    np.testing.assert_allclose(updates["w"], -1e-3, rtol=1e-5)
    # the Adam statistics saw the clipped gradient, not the raw one
    adam_state = state[1][0]
    np.testing.assert_allclose(adam_state.nu["w"], (3.0 / norm) ** 2, rtol=1e-5)
    unclipped = make_optimizer(
        OptimConfig(clip_norm=None, warmup_steps=0, schedule="constant", weight_decay=0.0, b2=0.0),
        10,
        params,
    )
    _, raw_state = jax.jit(unclipped.update)(grads, unclipped.init(params), params)
    np.testing.assert_allclose(raw_state[0][0].nu["w"], 9.0, rtol=1e-5)


def test_learning_rate_at_step_counts_trainer_steps():
    cfg = OptimConfig(learning_rate=1.0, warmup_steps=2, schedule="constant")
    lr = learning_rate_at_step(cfg, 20)
    assert [lr(s) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 1.0])
