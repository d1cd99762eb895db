"""The memory check refuses runs that cannot fit before anything compiles."""

from __future__ import annotations

import dataclasses

import pytest

from chinchax.errors import ConfigError
from launch.config import load_experiment, resolve
from launch.memory import GIB, check_fits, estimate_memory
from scaling.flops import count_params

MODEL = {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128}


def _run(**model: int):
    exp = load_experiment({"model": {**MODEL, **model}, "train": {"steps": 1, "global_batch": 8}})
    return resolve(exp)


def test_huge_vocabulary_is_refused_in_one_line() -> None:
    run = _run(vocab_size=100_000_000)
    with pytest.raises(ConfigError, match="needs at least") as err:
        check_fits(run, n_devices=1, capacity=64 * GIB)
    assert "\n" not in str(err.value) and "vocab_size" in err.value.hint


def test_small_model_fits_and_state_counts_sixteen_bytes_a_parameter() -> None:
    run = _run()
    need = check_fits(run, n_devices=1, capacity=1 * GIB)
    assert need.state_bytes == 16 * count_params(run.model)
    assert 0 < need.activation_bytes < need.total_bytes < GIB
    assert check_fits(run, 1, None) == need  # unknown capacity: estimate only


def test_fsdp_shards_the_state_and_data_parallel_splits_the_batch() -> None:
    run = _run()
    one = estimate_memory(run, 1)
    fsdp = estimate_memory(dataclasses.replace(run, mesh=dataclasses.replace(run.mesh, data=1, fsdp=4)), 4)
    data = estimate_memory(run, 4)  # mesh data=-1: four data-parallel devices
    assert fsdp.state_bytes == pytest.approx(one.state_bytes / 4)
    assert data.state_bytes == one.state_bytes
    assert data.activation_bytes == pytest.approx(one.activation_bytes / 4)
