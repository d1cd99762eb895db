"""Checkpoints: round trip, retention, resharding 8 -> 4 devices, damaged-newest fallback."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from chinchax.errors import ChinchaxError, CheckpointError
from training.checkpoint import CheckpointConfig, CheckpointFallbackWarning, Checkpointer
from training.state import abstract


def _state(seed: int) -> dict:
    """A tiny train state: params, optimiser-like moments, a step counter and a typed RNG key."""
    key = jax.random.key(seed)
    w = jax.random.normal(key, (8, 4))
    return {
        "params": {"w": w, "norm": {"scale": jnp.ones((4,)) * seed}},
        "opt_state": ({"mu": w * 0.5, "nu": w**2}, [jnp.asarray(seed, jnp.int32)]),
        "step": jnp.asarray(seed, jnp.int32),
        "rng": jax.random.fold_in(key, 1),
    }


def _assert_bitwise_equal(got, want) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _save_steps(directory: Path, steps, cfg: CheckpointConfig) -> None:
    with Checkpointer(directory, cfg) as ckpt:
        for step in steps:
            assert ckpt.save(
                step, _state(step), {"data": {"position": step * 10}, "note": "x"}, force=True
            )


def test_round_trip_with_extra_json_and_rng_key(tmp_path):
    cfg = CheckpointConfig(every_steps=5)
    _save_steps(tmp_path, [5], cfg)
    with Checkpointer(tmp_path, cfg) as ckpt:  # a fresh process would do exactly this
        assert ckpt.latest_step() == 5
        state, extra, step = ckpt.restore(None, abstract(_state(0)))
    assert step == 5 and extra == {"data": {"position": 50}, "note": "x"}
    _assert_bitwise_equal(state, _state(5))


def test_cadence_force_and_existing_steps(tmp_path):
    with Checkpointer(tmp_path, CheckpointConfig(every_steps=10, async_save=False)) as ckpt:
        assert not ckpt.due(0) and not ckpt.due(5) and ckpt.due(10) and ckpt.due(30)
        assert not ckpt.save(5, _state(5))  # not due
        assert ckpt.save(7, _state(7), force=True)  # preemption / end of run
        assert ckpt.save(10, _state(10))
        assert not ckpt.save(10, _state(10), force=True)  # already there: left alone
        assert ckpt.all_steps() == [7, 10]


def test_keeps_the_last_k_plus_every_nth_for_good(tmp_path):
    cfg = CheckpointConfig(every_steps=1, keep_last=2, keep_every=4, async_save=False)
    _save_steps(tmp_path, range(1, 11), cfg)
    with Checkpointer(tmp_path, cfg) as ckpt:
        assert ckpt.all_steps() == [4, 8, 9, 10]


def test_restore_reshards_from_8_devices_onto_4_bit_exactly(tmp_path):
    devices = jax.devices()
    assert len(devices) >= 8, "conftest provides 8 host devices"
    mesh8 = Mesh(np.array(devices[:8]).reshape(4, 2), ("data", "tensor"))
    mesh4 = Mesh(np.array(devices[:4]), ("data",))
    values = {
        "w": jax.random.normal(jax.random.key(1), (16, 8)),
        "emb": jax.random.normal(jax.random.key(2), (8, 12)).astype(jnp.bfloat16),
        "step": jnp.asarray(123, jnp.int32),
    }
    written = {
        "w": jax.device_put(values["w"], NamedSharding(mesh8, P("data", "tensor"))),
        "emb": jax.device_put(values["emb"], NamedSharding(mesh8, P("tensor", None))),
        "step": jax.device_put(values["step"], NamedSharding(mesh8, P())),
    }
    with Checkpointer(tmp_path, CheckpointConfig(every_steps=1)) as ckpt:
        ckpt.save(1, written, {"mesh": [4, 2]})
    targets = {
        "w": NamedSharding(mesh4, P(None, "data")),
        "emb": NamedSharding(mesh4, P("data", None)),
        "step": NamedSharding(mesh4, P()),
    }
    abstract = {
        name: jax.ShapeDtypeStruct(values[name].shape, values[name].dtype, sharding=targets[name])
        for name in values
    }
    with Checkpointer(tmp_path, CheckpointConfig(every_steps=1)) as ckpt:
        state, extra, step = ckpt.restore(1, abstract)
    assert step == 1 and extra == {"mesh": [4, 2]}
    for name, array in state.items():
        assert array.sharding == targets[name]
        assert {d.id for d in array.sharding.device_set} == {d.id for d in devices[:4]}
        assert array.dtype == values[name].dtype
        np.testing.assert_array_equal(
            np.asarray(array).reshape(-1).view(np.uint8),
            np.asarray(values[name]).reshape(-1).view(np.uint8),
        )


# A failed tensorstore read can leave sibling reads in flight after orbax's event loop has
# closed; their callbacks raise "Event loop is closed" as unraisable noise, not a failure.
TENSORSTORE_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _damage(step_dir: Path, how: str) -> None:
    files = [Path(root) / name for root, _, names in os.walk(step_dir) for name in names]
    assert files
    for path in files:
        if how == "truncate_all":
            with open(path, "r+b") as handle:
                handle.truncate(path.stat().st_size // 2)
        elif how == "garble_array_store" and f"{os.sep}d{os.sep}" in str(path):
            path.write_bytes(os.urandom(path.stat().st_size))


@TENSORSTORE_NOISE
@pytest.mark.parametrize("how", ["truncate_all", "garble_array_store"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    cfg = CheckpointConfig(every_steps=10, keep_last=3)
    _save_steps(tmp_path, [10, 20, 30], cfg)
    _damage(tmp_path / "30", how)
    with Checkpointer(tmp_path, cfg) as ckpt:
        with pytest.warns(CheckpointFallbackWarning, match="step 30"):
            state, extra, step = ckpt.restore(None, abstract(_state(0)))
        assert step == 20 and extra["data"] == {"position": 200}
        _assert_bitwise_equal(state, _state(20))
        # nothing resume needs was deleted; the damaged step was moved aside, not lost
        assert ckpt.all_steps() == [10, 20]
        assert any(p.name.startswith("corrupt-30-") for p in tmp_path.iterdir())
        # the resumed run can save step 30 again, and retention still counts good steps only
        assert ckpt.save(30, _state(30), {"data": {"position": 300}})
        ckpt.wait()
        assert ckpt.all_steps() == [10, 20, 30]
        assert ckpt.restore(None, abstract(_state(0))).step == 30


@TENSORSTORE_NOISE
def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
    cfg = CheckpointConfig(every_steps=1)
    _save_steps(tmp_path, [1, 2], cfg)
    for step in (1, 2):
        _damage(tmp_path / str(step), "truncate_all")
    with Checkpointer(tmp_path, cfg) as ckpt:
        with pytest.raises(CheckpointError, match="no readable checkpoint") as raised:
            ckpt.restore(None, abstract(_state(0)))
        assert raised.value.hint and ckpt.all_steps() == [1, 2]  # nothing moved when nothing works


def test_unfinished_temporary_directory_is_not_a_step(tmp_path):
    cfg = CheckpointConfig(every_steps=1)
    _save_steps(tmp_path, [1], cfg)
    # what a process killed mid-save leaves behind: orbax's temporary name, half the files
    partial = tmp_path / f"2{ocp.path.atomicity.TMP_DIR_SUFFIX}-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_METADATA").write_text("{")
    with Checkpointer(tmp_path, cfg) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        assert ckpt.restore(None, abstract(_state(0))).step == 1
        assert ckpt.save(2, _state(2))
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]


def test_shape_mismatch_names_the_leaf_and_keeps_the_checkpoint(tmp_path):
    cfg = CheckpointConfig(every_steps=1)
    _save_steps(tmp_path, [1], cfg)
    wider = _state(0)
    wider["params"]["w"] = jnp.zeros((8, 6))
    with Checkpointer(tmp_path, cfg) as ckpt:
        with pytest.raises(CheckpointError, match=r"params/w.*\(8, 4\).*\(8, 6\)") as raised:
            ckpt.restore(None, abstract(wider))
        assert "new run directory" in raised.value.hint
        assert isinstance(raised.value, ChinchaxError)
        assert ckpt.all_steps() == [1]  # a mismatch is not damage: nothing moved aside
        missing = _state(0)
        missing["params"]["extra_layer"] = jnp.zeros((2,))
        with pytest.raises(CheckpointError, match="extra_layer"):
            ckpt.restore(None, abstract(missing))


def test_restoring_nothing_or_an_unsaved_step_is_an_error(tmp_path):
    with Checkpointer(tmp_path / "fresh", CheckpointConfig()) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(CheckpointError, match="no checkpoint"):
            ckpt.restore(None, abstract(_state(0)))
    _save_steps(tmp_path / "used", [2], CheckpointConfig(every_steps=2))
    with Checkpointer(tmp_path / "used", CheckpointConfig(every_steps=2)) as ckpt:
        with pytest.raises(CheckpointError, match=r"step 3.*\[2\]") as raised:
            ckpt.restore(3, abstract(_state(0)))
        assert raised.value.hint


def test_bad_config_is_one_clear_error():
    with pytest.raises(CheckpointError) as raised:
        CheckpointConfig(every_steps=0)
    assert "every_steps" in str(raised.value) and raised.value.hint
    with pytest.raises(CheckpointError, match="keep_last"):
        CheckpointConfig(keep_last=0)


def test_flax_nnx_split_state_round_trips(tmp_path):
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.proj = nnx.Linear(3, 5, rngs=rngs)
            self.norm = nnx.RMSNorm(5, rngs=rngs)

    _, params, rest = nnx.split(Tiny(nnx.Rngs(7)), nnx.Param, ...)
    state = {"params": params, "rest": rest, "step": jnp.asarray(4, jnp.int32)}
    with Checkpointer(tmp_path, CheckpointConfig(every_steps=4)) as ckpt:
        ckpt.save(4, state)
    _, fresh_params, fresh_rest = nnx.split(Tiny(nnx.Rngs(0)), nnx.Param, ...)
    target = {"params": fresh_params, "rest": fresh_rest, "step": jnp.asarray(0, jnp.int32)}
    with Checkpointer(tmp_path, CheckpointConfig(every_steps=4)) as ckpt:
        restored, extra, step = ckpt.restore(4, abstract(target))
    assert step == 4 and extra == {}
    _assert_bitwise_equal(restored, state)
