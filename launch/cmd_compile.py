"""``chinchax compile CONFIG --topology v5e:4x4``: will this run fit that slice?

Compiles the trainer's real step ahead of time for devices this machine lacks, from a state
that exists only as shapes and shardings.  TPU topologies need libtpu, not a TPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from chinchax.errors import LaunchError
from launch.args import add_config_arguments
from launch.aot import (CompileReport, MemoryReport, Topology, counter_flops, hbm_bytes_per_device, is_out_of_memory, libtpu_location, libtpu_missing_error, out_of_memory_error, parse_topology, report_rows)
from scaling.flops import count_params

if TYPE_CHECKING:
    from training.config import RunConfig


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compile",
        help="compile the train step ahead of time for a TPU topology; report memory and FLOPs",
        description="Resolve an experiment as `chinchax train` does, then lower and compile its "
        "train step for a TPU topology (needs libtpu, not a TPU) or N host CPU devices, and "
        "report per-device memory against the chip's HBM, compile time and FLOPs.")
    add_config_arguments(parser, overrides_help="dotted overrides, e.g. train.global_batch=64 model.remat=full")
    parser.add_argument("--topology", required=True,
                        help="TPU topology such as v5e:4x4, v4:2x2x2, v5p:2x2x2; or cpu:N")
    parser.add_argument("--slices", type=int, default=1,
                        help="slices of a multi-slice job (TPU only; pair with mesh.dcn_*)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table")
    parser.add_argument("--out", help="also write the JSON report to this file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launch.config import data_parallel_size, load_experiment, resolve

    topology = parse_topology(args.topology)
    if args.slices < 1 or (args.slices > 1 and not topology.is_tpu):
        raise LaunchError(f"--slices {args.slices} needs a TPU topology and a value >= 1",
                            hint="leave --slices at 1 for cpu:N")
    experiment = load_experiment(args.config, args.overrides)
    devices = topology_devices(topology, slices=args.slices)
    run_cfg = resolve(experiment, data_parallel=data_parallel_size(experiment.mesh, len(devices)))
    label = topology.name if args.slices == 1 else f"{topology.name} × {args.slices} slices"
    report = compile_train_step(run_cfg, devices, topology=label)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{run_cfg.name}: train step compiled for {label}", show_header=False)
        table.add_column("quantity", style="bold")
        table.add_column("value", justify="right")
        for name, value in report_rows(report):
            table.add_row(name, value)
        Console().print(table)
    return 0


def topology_devices(topology: Topology, *, slices: int = 1) -> List[Any]:
    if topology.is_tpu:
        return _tpu_devices(topology, slices)
    return _cpu_devices(topology.chips)


def _jax_version() -> str:
    try:
        return importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        return "<your jax version>"


def _tpu_devices(topology: Topology, slices: int) -> List[Any]:
    if libtpu_location() is None:
        raise libtpu_missing_error(topology.name, _jax_version())
    # No TPU here, so no metadata server to ask which TPU this VM is.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Compile-only: no chip is opened, so other processes holding libtpu are no conflict.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    kwargs = {"num_slices": slices} if slices > 1 else {}
    try:
        description = topologies.get_topology_desc(topology_name=topology.name, platform="tpu",
                                                   **kwargs)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "not installed" in message:
            raise libtpu_missing_error(topology.name, _jax_version()) from None
        raise LaunchError(f"libtpu cannot lay out topology {topology.name!r}: {message}",
                            hint="check the generation and chip grid, e.g. v5e:4x4 or v4:2x2x2; "
                            "a libtpu that does not match jax also fails here") from None
    return one_device_per_chip(list(description.devices))


def one_device_per_chip(devices: List[Any]) -> List[Any]:
    """v4 and v5p chips hold two TensorCores; a compile-only topology lists both, but pods run
    them as one device per chip (megacore), which is also what ``jax.make_mesh`` accepts."""
    return [d for d in devices if getattr(d, "core_on_chip", 0) == 0]


def _forced_cpu_count() -> int:
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_force_host_platform_device_count="):
            return int(flag.split("=", 1)[1])
    return 1


def _cpu_devices(n: int) -> List[Any]:
    import jax

    if max(jax.config.jax_num_cpu_devices, _forced_cpu_count()) < n:
        try:  # only possible before JAX starts its backends; checked below either way
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:
            pass
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise LaunchError(
            f"--topology cpu:{n} needs {n} CPU devices, but this process has {len(devices)}",
            hint=f"start it with XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    return list(devices[:n])


def abstract_batch(cfg: RunConfig, mesh: Any) -> tuple[dict, Any]:
    import jax
    import jax.numpy as jnp

    from models.sharding import batch_sharding

    sharding = batch_sharding(mesh, cfg.mesh.rules)
    shape = (cfg.global_batch, cfg.train.seq_len)
    tokens = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
    return {"inputs": tokens, "targets": tokens}, sharding


def _xla_flops(compiled: Any) -> Optional[float]:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 -- some backends have none; the report says "unknown"
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = analysis.get("flops") if isinstance(analysis, dict) else None
    return float(flops) if flops is not None and flops > 0 else None


def compile_train_step(cfg: RunConfig, devices: Sequence[Any], *, topology: str) -> CompileReport:
    from models.sharding import activation_sharding, make_mesh
    from training.state import abstract_train_state, jit_train_step

    mesh = make_mesh(cfg.mesh, devices)
    graphdef, state, tx = abstract_train_state(cfg, mesh)
    batch, data_sharding = abstract_batch(cfg, mesh)
    step = jit_train_step(cfg, graphdef, tx, state, mesh, data_sharding)
    device_kind = devices[0].device_kind
    mesh_sizes = {str(axis): int(size) for axis, size in mesh.shape.items()}
    started = time.perf_counter()
    with activation_sharding(mesh, cfg.mesh.rules):  # as the trainer lowers it
        lowered = step.lower(state, batch)
    lowered_at = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as exc:
        if is_out_of_memory(str(exc)):
            raise out_of_memory_error(
                str(exc), topology=topology, device_kind=device_kind,
                global_batch=cfg.global_batch, seq_len=cfg.train.seq_len, remat=cfg.model.remat,
                mesh=mesh_sizes, grad_accum_steps=cfg.train.grad_accum_steps) from None
        raise
    compiled_at = time.perf_counter()

    memory = MemoryReport.from_analysis(compiled.memory_analysis(),
                                        hbm=hbm_bytes_per_device(device_kind))
    flops = counter_flops(cfg.model, seq_len=cfg.train.seq_len, global_batch=cfg.global_batch,
                          n_devices=len(devices), grad_accum_steps=cfg.train.grad_accum_steps,
                          xla=_xla_flops(compiled))
    model = cfg.model
    run_info = {"name": cfg.name, "n_params": count_params(model), "d_model": model.d_model,
                "n_layers": model.n_layers, "n_heads": model.n_heads,
                "vocab_size": model.vocab_size,
                "global_batch": cfg.global_batch, "seq_len": cfg.train.seq_len,
                "grad_accum_steps": cfg.train.grad_accum_steps, "remat": model.remat,
                "scan_layers": model.scan_layers, "compute_dtype": model.compute_dtype,
                "param_dtype": model.param_dtype, "attention": model.attention}
    return CompileReport(topology=topology, platform=devices[0].platform, device_kind=device_kind,
                         n_devices=len(devices), mesh=mesh_sizes, run=run_info,
                         lower_time_s=lowered_at - started, compile_time_s=compiled_at - lowered_at,
                         memory=memory, flops=flops)
