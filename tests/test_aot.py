"""``chinchax compile``: ahead-of-time compilation of the train step, and its report.

The ``cpu:8`` topology compiles a tiny model for real (the eight host CPU devices conftest
provides); TPU paths are exercised up to the point where libtpu would be needed, with its
absence simulated so that the test means the same on a machine that has it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import pytest
import yaml

from chinchax.errors import LaunchError
from launch import aot
from launch.aot import (GIB, CompileReport, FlopReport, MemoryReport, counter_flops, hbm_bytes_per_device, out_of_memory_error, parse_out_of_memory, parse_topology, report_rows)
from launch.cli import main
from models.config import ModelConfig
from scaling.flops import count_params

TINY = {
    "name": "aot_tiny",
    "model": {"vocab_size": 257, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128},
    "train": {"steps": 10, "global_batch": 16, "seq_len": 32},
    "data": {"source": "embedded"},
    "mesh": {"data": -1, "fsdp": 2},
}
TINY_MODEL = ModelConfig(**TINY["model"])
# XLA's message when the step does not fit (libtpu, v5e, 470M parameters, 16 × 2048 per device).
TPU_OOM = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
    "temporaries (212.18G) exceeds available HBM (15.75G)."
)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aot") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def scanned_report(tiny_config: Path) -> dict:
    """The default step (scanned layers, no remat), compiled once for the module."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compile", str(tiny_config), "--topology", "cpu:8", "--json"]) == 0
    return json.loads(out.getvalue())


# --------------------------------------------------------------------------- cpu:8, compiled


def test_cpu_topology_compiles_and_reports_memory(scanned_report: dict) -> None:
    report = scanned_report
    assert report["platform"] == "cpu" and report["n_devices"] == 8
    assert report["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    memory = report["memory"]
    # Parameters and both Adam moments, every one split in two by FSDP, plus this device's
    # two rows of inputs and targets; the rest is a handful of replicated scalar counters.
    n_params = count_params(TINY_MODEL)
    sharded_state = 3 * 4 * n_params // 2
    tokens = 2 * (16 // 8) * 32 * 4
    assert 0 <= memory["arguments_bytes"] - (sharded_state + tokens) <= 64
    assert memory["aliased_bytes"] >= sharded_state  # the donated state is updated in place
    assert memory["temporaries_bytes"] > 0
    assert memory["total_bytes"] == (
        memory["arguments_bytes"]
        + memory["outputs_bytes"]
        - memory["aliased_bytes"]
        + memory["temporaries_bytes"]
        + memory["generated_code_bytes"]
    )
    assert memory["hbm_bytes"] is None and memory["fits"] is None  # no HBM on a CPU
    assert report["compile_time_s"] > 0 and report["lower_time_s"] > 0


def test_cpu_topology_reports_xla_flops_against_the_counter(scanned_report: dict) -> None:
    flops = scanned_report["flops"]
    expected = counter_flops(TINY_MODEL, seq_len=32, global_batch=16, n_devices=8)
    assert flops["counter_per_device"] == pytest.approx(expected.counter)
    assert flops["loops_counted_once"] is True  # layers are scanned by default
    # XLA sees one layer of the scan: the raw count is far below the whole step's...
    assert flops["xla_per_device"] < 0.8 * flops["counter_per_device"]
    # ...and close to the counter's terms arranged the same way (element-wise work on top).
    assert 0.95 <= flops["xla_over_counter"] <= 1.3


def test_remat_shows_as_extra_xla_work_and_table_renders(
    tiny_config: Path, scanned_report: dict, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main(
            [
                "compile",
                str(tiny_config),
                "model.scan_layers=false",
                "model.remat=full",
                "--topology",
                "cpu:8",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    for row in ("temporaries", "generated code", "total per device", "XLA / counter"):
        assert row in table
    ratio = float(re.search(r"XLA / counter\W+([\d.]+)", table).group(1))
    # Unrolled layers are all counted; full remat runs each layer's forward twice.
    assert ratio > scanned_report["flops"]["xla_over_counter"] + 0.1


def test_json_keys(scanned_report: dict) -> None:
    assert set(scanned_report) == {
        "topology",
        "platform",
        "device_kind",
        "n_devices",
        "mesh",
        "run",
        "lower_time_s",
        "compile_time_s",
        "memory",
        "flops",
    }
    assert set(scanned_report["memory"]) == {
        "arguments_bytes",
        "outputs_bytes",
        "aliased_bytes",
        "temporaries_bytes",
        "generated_code_bytes",
        "total_bytes",
        "hbm_bytes",
        "fits",
        "hbm_fraction",
    }
    assert set(scanned_report["flops"]) == {
        "counter_per_device",
        "counter_as_compiled_per_device",
        "xla_per_device",
        "xla_over_counter",
        "loops_counted_once",
    }
    run = scanned_report["run"]
    assert run["n_params"] == count_params(TINY_MODEL)
    assert (run["global_batch"], run["seq_len"], run["remat"]) == (16, 32, "none")


# --------------------------------------------------------------------------- errors


def test_missing_libtpu_is_one_clear_error(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "libtpu", None)  # `import libtpu` fails, find_spec is None
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    assert aot.libtpu_location() is None

    def no_topology(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the TPU plugin must not be touched without libtpu")

    monkeypatch.setattr("jax.experimental.topologies.get_topology_desc", no_topology)
    assert main(["compile", str(tiny_config), "--topology", "v5e:4x4"]) == 2
    err = capsys.readouterr().err
    assert "libtpu" in err and "v5e:4x4" in err
    assert f'pip install "jax[tpu]=={jax.__version__}"' in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_jax_reporting_no_tpu_support_is_the_same_error(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr("launch.cmd_compile.libtpu_location", lambda: "/nowhere/libtpu.so")

    def not_installed(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("JAX TPU support not installed; cannot generate TPU topology.")

    monkeypatch.setattr("jax.experimental.topologies.get_topology_desc", not_installed)
    assert main(["compile", str(tiny_config), "--topology", "v4:2x2x2"]) == 2
    assert 'pip install "jax[tpu]' in capsys.readouterr().err


def test_out_of_memory_at_compile_is_one_clear_error(
    tiny_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def exhausted(self: Any, *args: Any, **kwargs: Any) -> None:
        raise jax.errors.JaxRuntimeError(TPU_OOM)

    monkeypatch.setattr(jax.stages.Lowered, "compile", exhausted)
    assert main(["compile", str(tiny_config), "--topology", "cpu:8"]) == 2
    err = capsys.readouterr().err
    assert "212.18 GiB" in err and "15.75 GiB" in err and "16 × 32" in err
    assert "model.remat=full" in err and "mesh.fsdp=-1" in err
    assert "Traceback" not in err


def test_out_of_memory_message_names_sizes_and_fixes() -> None:
    assert parse_out_of_memory(TPU_OOM) == (int(212.18 * GIB), int(15.75 * GIB))
    older = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
        "space hbm. Used 20.71G of 15.48G hbm. Exceeded hbm capacity by 5.23G."
    )
    assert parse_out_of_memory(older) == (int(20.71 * GIB), int(15.48 * GIB))
    err = out_of_memory_error(
        TPU_OOM,
        topology="v5e:4x4",
        device_kind="TPU v5 lite",
        global_batch=256,
        seq_len=2048,
        remat="full",
        mesh={"data": 1, "fsdp": 16, "tensor": 1},
        grad_accum_steps=2,
    )
    assert "212.18 GiB" in str(err) and "v5e:4x4" in str(err)
    assert "model.remat" not in err.hint  # already rematerialising
    assert "mesh.fsdp" not in err.hint  # already fully sharded
    assert "train.grad_accum_steps=4" in err.hint


def test_bad_topology_is_one_clear_error(tiny_config: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compile", str(tiny_config), "--topology", "v5e-16"]) == 2
    err = capsys.readouterr().err
    assert "v5e-16" in err and "v5e:4x4" in err


def test_more_cpu_devices_than_the_process_has(
    tiny_config: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["compile", str(tiny_config), "--topology", f"cpu:{jax.device_count() * 2}"]) == 2
    assert "xla_force_host_platform_device_count" in capsys.readouterr().err


# --------------------------------------------------------------------------- pure parts


def test_parse_topology() -> None:
    assert parse_topology("v5e:4x4") == aot.Topology("tpu", "v5e:4x4", 16)
    assert parse_topology("V4:2x2x2").chips == 8
    assert parse_topology("cpu:8") == aot.Topology("cpu", "cpu:8", 8)
    for bad in ("v5e", "v5e:4", "cpu:0", "gpu:8", "v5e:4x0", "v5e-16"):
        with pytest.raises(LaunchError) as info:
            parse_topology(bad)
        assert info.value.hint


def test_hbm_table_is_keyed_like_the_peak_table() -> None:
    assert hbm_bytes_per_device("TPU v5 lite") == 16 * GIB
    assert hbm_bytes_per_device("TPU v5") == 95 * GIB
    assert hbm_bytes_per_device("TPU v4") == 32 * GIB
    assert hbm_bytes_per_device("TPU v6 lite") == 32 * GIB
    assert hbm_bytes_per_device("TPU v3") == 16 * GIB  # one of the chip's two cores
    assert hbm_bytes_per_device("NVIDIA H100 80GB HBM3") == 80 * 10**9
    assert hbm_bytes_per_device("NVIDIA A100-SXM4-80GB") == 80 * 10**9
    assert hbm_bytes_per_device("NVIDIA A100-SXM4-40GB") == 40 * 10**9
    assert hbm_bytes_per_device("cpu") is None


def test_memory_report_totals_and_fit() -> None:
    stats = SimpleNamespace(
        argument_size_in_bytes=3 * GIB,
        output_size_in_bytes=3 * GIB,
        alias_size_in_bytes=3 * GIB,
        temp_size_in_bytes=5 * GIB,
        generated_code_size_in_bytes=2**20,
    )
    fits = MemoryReport.from_analysis(stats, hbm=16 * GIB)
    assert fits.total == 8 * GIB + 2**20 and fits.fits is True
    assert MemoryReport.from_analysis(stats, hbm=8 * GIB).fits is False
    rows = dict(
        report_rows(
            CompileReport(
                topology="v5e:4x4",
                device_kind="TPU v5 lite",
                n_devices=16,
                memory=fits,
                flops=FlopReport(),
            )
        )
    )
    assert rows["temporaries"] == "5.00 GiB" and "of 16.00 GiB" in rows["total per device"]


def test_counter_as_compiled_counts_one_layer_and_one_micro_batch() -> None:
    unrolled = TINY_MODEL.replace(scan_layers=False)
    whole = counter_flops(unrolled, seq_len=32, global_batch=16, n_devices=8)
    scanned = counter_flops(TINY_MODEL, seq_len=32, global_batch=16, n_devices=8)
    accumulated = counter_flops(
        unrolled, seq_len=32, global_batch=16, n_devices=8, grad_accum_steps=4
    )
    assert whole.counter == scanned.counter == accumulated.counter  # the model's FLOPs
    assert not whole.loops_counted_once and whole.counter_as_compiled < whole.counter
    assert scanned.counter_as_compiled < whole.counter_as_compiled
    assert accumulated.counter_as_compiled == pytest.approx(whole.counter_as_compiled / 4)
    assert FlopReport(counter=1.0, counter_as_compiled=2.0, xla=3.0).xla_over_counter == 1.5


def test_abstract_state_is_the_trainers_state_without_the_arrays(tiny_config: Path) -> None:
    from launch.config import load_experiment, resolve
    from models.sharding import make_mesh
    from training.state import abstract_train_state, initial_train_state

    cfg = resolve(load_experiment(tiny_config), data_parallel=8)
    mesh = make_mesh(cfg.mesh, jax.devices()[:8])
    _, real, _ = initial_train_state(cfg, mesh)
    _, abstract, _ = abstract_train_state(cfg, mesh)
    assert jax.tree.structure(abstract) == jax.tree.structure(real)
    for shape, array in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)):
        assert (shape.shape, shape.dtype) == (array.shape, array.dtype)
        assert shape.sharding.is_equivalent_to(array.sharding, array.ndim)
