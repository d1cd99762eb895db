"""Model FLOPs utilisation of the real train step, shape by shape.

For each shape of a preset the step is built by the trainer's own builders
(``training.state.initial_train_state`` and ``jit_train_step``: parameters created in their
shards, AdamW from ``training.optim``, ``make_train_step`` jitted with the state's shardings
and the state donated) and traced inside ``activation_sharding``, compiled once, run
for a few warm-up steps, then timed over several repeats of several steps with
``jax.block_until_ready`` closing each repeat.  The step time is the median over repeats.

Reported per shape: compile time, step time, tokens/s, achieved model FLOP/s and MFU by the
shared counter (``scaling.flops.executed_flops_per_token``: Chinchilla's terms without the
embedding gather; ``mfu`` counts the full ``T × T`` attention square as Chinchilla and
MaxText do, ``mfu_causal`` only the causal triangle), peak device memory
(``device.memory_stats()`` where the backend keeps it: GPU, TPU) and XLA's compiled memory
estimate (every backend).  Rematerialised work is not model FLOPs: a remat policy lowers MFU.

Where a shape does not fit, the next remat policy of its fallback list is tried (an
out-of-memory error at compile or at the first step), and the JSON says which ones failed.
The batch is random tokens reused every step: this measures the step, not the input pipeline.

    python benchmarks/mfu.py --preset cpu                 # tiny shapes, achieved FLOP/s
    python benchmarks/mfu.py --preset h100 --out benchmarks/results/mfu_h100.json
    python benchmarks/mfu.py --preset tpu --out benchmarks/results/mfu_tpu.json
    python benchmarks/mfu.py --preset h100 --shapes 1b --batch 16 --remat dots_no_batch
    python benchmarks/mfu.py --preset cpu-vocab --loss-chunk 128   # chunked cross-entropy

Sizes on the device: ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (GPU preallocation, 0.75 by default)
bounds what fits; the JSON records it and ``XLA_FLAGS``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from common import write_report  # noqa: E402
from device_stats import (compiled_memory, device_memory, environment,  # noqa: E402,F401
                          host_callbacks_in, is_out_of_memory)
from mfu_table import print_table, table_rows, wide_console  # noqa: E402,F401
from trainer_step import (BenchmarkError, TrainerStep, build_trainer_step,  # noqa: E402,F401
                          random_batch, time_steps)

from chinchax.errors import ChinchaxError
from models.config import ModelConfig
from models.sharding import activation_sharding
from scaling.flops import count_params, executed_flops_per_token
from training.metrics import mfu

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


# --------------------------------------------------------------------------- shapes and presets


@dataclass(frozen=True)
class BenchShape:
    """One model to time: its config, sequence length and batch (sequences per device).

    ``remat_fallbacks`` are tried in order, after ``model.remat``, when the step does not fit.
    """

    name: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    seq_len: int = 256
    batch_per_device: int = 8
    remat_fallbacks: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.seq_len <= 0 or self.batch_per_device <= 0:
            raise BenchmarkError(f"shape {self.name!r}: seq_len and batch_per_device must be positive",
                                 hint="use e.g. seq_len=2048, batch_per_device=8")


@dataclass(frozen=True)
class Preset:
    """A sweep: shapes (smallest first, so a process-wide memory peak belongs to the shape just
    run) and the timing plan (warm-up steps, then ``repeats`` × ``steps`` timed steps)."""

    shapes: List[BenchShape] = field(default_factory=list)
    warmup: int = 2
    steps: int = 5
    repeats: int = 3
    description: str = ""


def _gpu_model(d_model: int, n_layers: int, n_heads: int, d_ff: int, remat: str,
               attention: str) -> ModelConfig:
    return ModelConfig(vocab_size=32768, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       d_ff=d_ff, compute_dtype="bfloat16", remat=remat, attention=attention)


def _accelerator_shapes(attention: str) -> List[BenchShape]:
    """≈125M, 350M and 1B SwiGLU decoders at T = 2048 with a 32k vocabulary.

    One H100 (80 GB, 75% preallocated by default) holds each without rematerialisation at
    these batches by estimate (1B: 15 GB of parameters and AdamW state, ~30 GB of saved
    activations); the fallbacks save only the weight matmuls' outputs, then nothing.
    """
    fallbacks = ["dots_no_batch", "full"]
    return [
        BenchShape("125m", _gpu_model(768, 12, 6, 2048, "none", attention), 2048, 16, fallbacks),
        BenchShape("350m", _gpu_model(1024, 24, 8, 2816, "none", attention), 2048, 8, fallbacks),
        BenchShape("1b", _gpu_model(2048, 16, 16, 5632, "none", attention), 2048, 8, fallbacks),
    ]


def _cpu_model(d_model: int, n_layers: int, n_heads: int, d_ff: int) -> ModelConfig:
    return ModelConfig(vocab_size=256, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                       d_ff=d_ff)


PRESETS: Dict[str, Preset] = {
    "h100": Preset(_accelerator_shapes("cudnn"), warmup=3, steps=10, repeats=5,
                   description="one GPU, bf16, cuDNN flash attention, seq 2048"),
    "tpu": Preset(_accelerator_shapes("splash"), warmup=3, steps=10, repeats=5,
                  description="TPU, bf16, Pallas splash attention, seq 2048, FSDP over the chips"),
    "cpu": Preset([BenchShape("cpu-0.9m", _cpu_model(128, 4, 4, 512), 256, 16),
                   BenchShape("cpu-3.4m", _cpu_model(256, 4, 4, 1024), 256, 8),
                   BenchShape("cpu-12m", _cpu_model(512, 4, 8, 1536), 256, 4)],
                  warmup=2, steps=3, repeats=5, description="host CPU, float32, XLA attention"),
    # A vocabulary-heavy CPU shape (the head is 90% of the parameters): where model.loss_chunk
    # matters.  Compare --loss-chunk 0 and --loss-chunk 128.
    "cpu-vocab": Preset([BenchShape("cpu-vocab-9m", ModelConfig(vocab_size=32768, d_model=128,
                                                                n_layers=2, n_heads=4, d_ff=512),
                                    512, 4)],
                        warmup=1, steps=2, repeats=3, description="host CPU, 32k vocabulary"),
    "test": Preset([BenchShape("cpu-test", _cpu_model(64, 2, 2, 128), 64, 4)],
                   warmup=1, steps=2, repeats=2, description="the smallest run, for the test suite"),
}
PRESETS["tiny"] = PRESETS["cpu"]


def select_shapes(preset: Preset, names: Optional[Sequence[str]] = None, *,
                  batch: Optional[int] = None, remat: Optional[str] = None,
                  attention: Optional[str] = None, loss_chunk: Optional[int] = None,
                  compute_dtype: Optional[str] = None) -> List[BenchShape]:
    """The preset's shapes, filtered by name and with command-line overrides applied."""
    known = {s.name: s for s in preset.shapes}
    if names:
        missing = [n for n in names if n not in known]
        if missing:
            raise BenchmarkError(f"unknown shape(s) {', '.join(missing)}",
                                 hint=f"this preset has: {', '.join(known)}")
    chosen = [known[n] for n in names] if names else list(preset.shapes)
    out = []
    for shape in chosen:
        model_changes = {k: v for k, v in (("remat", remat), ("attention", attention),
                                           ("loss_chunk", loss_chunk),
                                           ("compute_dtype", compute_dtype)) if v is not None}
        out.append(BenchShape(shape.name, shape.model.replace(**model_changes), shape.seq_len,
                              batch or shape.batch_per_device,
                              [] if remat is not None else list(shape.remat_fallbacks)))
    return out


# --------------------------------------------------------------------------- timing


def measure_once(shape: BenchShape, model_cfg: ModelConfig, devices: Sequence[Any], *,
                 warmup: int, steps: int, repeats: int) -> Dict[str, Any]:
    """Build, compile and time one shape with one remat policy."""
    n_devices = len(devices)
    global_batch = shape.batch_per_device * n_devices
    built = build_trainer_step(model_cfg, devices, global_batch=global_batch,
                               seq_len=shape.seq_len, total_steps=warmup + steps * repeats + 1)
    with activation_sharding(built.mesh, built.rules):
        batch = random_batch(model_cfg.vocab_size, global_batch, shape.seq_len, built.data_sharding)
        started = time.perf_counter()
        compiled = built.step.lower(built.state, batch).compile()
        compile_time = time.perf_counter() - started
        memory = compiled_memory(compiled)
        limit = device_memory(devices[0])["bytes_limit"]
        if limit and memory["total"] and memory["total"] > limit:
            raise MemoryError(f"RESOURCE_EXHAUSTED: compiled step needs {memory['total']} bytes, "
                              f"device limit {limit}")
        callbacks = host_callbacks_in(compiled.as_text())
        state = built.state
        metrics: Any = None
        for _ in range(warmup):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        loss_first = float(metrics["loss"]) if metrics is not None else float("nan")
        state, metrics, per_step = time_steps(compiled, state, batch, steps=steps, repeats=repeats)
        loss_last = float(metrics["loss"])
    del state, built, compiled
    step_time = statistics.median(per_step)
    tokens_per_step = global_batch * shape.seq_len
    tokens_per_s = tokens_per_step / step_time
    per_token = executed_flops_per_token(model_cfg, shape.seq_len)
    per_token_causal = executed_flops_per_token(model_cfg, shape.seq_len, causal=True)
    kind = devices[0].device_kind
    achieved, achieved_causal = tokens_per_s * per_token, tokens_per_s * per_token_causal
    return {
        "status": "ok", "shape": shape.name, "n_params": count_params(model_cfg),
        "model": model_cfg.to_dict(), "seq_len": shape.seq_len, "global_batch": global_batch,
        "batch_per_device": shape.batch_per_device, "tokens_per_step": tokens_per_step,
        "remat": model_cfg.remat, "attention": model_cfg.attention,
        "compute_dtype": model_cfg.compute_dtype, "loss_chunk": model_cfg.loss_chunk,
        "compile_time_s": compile_time, "step_time_s": step_time, "step_time_min_s": min(per_step),
        "step_times_s": per_step, "tokens_per_s": tokens_per_s,
        "executed_flops_per_token": per_token, "executed_flops_per_token_causal": per_token_causal,
        "achieved_flops_per_s": achieved, "achieved_flops_per_s_causal": achieved_causal,
        "achieved_flops_per_s_per_device": achieved / n_devices,
        "mfu": mfu(achieved, kind, n_devices), "mfu_causal": mfu(achieved_causal, kind, n_devices),
        "device_memory": device_memory(devices[0]), "compiled_memory": memory,
        "state_donated": bool(memory["aliased"]), "host_callbacks": callbacks,
        "loss_first": loss_first, "loss_last": loss_last,
    }


def measure_shape(shape: BenchShape, devices: Sequence[Any], *, warmup: int, steps: int,
                  repeats: int) -> Dict[str, Any]:
    """Time ``shape``, walking down its remat fallbacks while it runs out of memory."""
    tried: List[Dict[str, str]] = []
    for remat in [shape.model.remat] + [r for r in shape.remat_fallbacks if r != shape.model.remat]:
        try:
            result = measure_once(shape, shape.model.replace(remat=remat), devices,
                                  warmup=warmup, steps=steps, repeats=repeats)
            result["remat_tried"] = tried
            return result
        except Exception as exc:  # noqa: BLE001 -- out-of-memory is recorded, others re-raised
            if not is_out_of_memory(exc):
                raise
            tried.append({"remat": remat, "error": str(exc).strip().splitlines()[0][:300]})
        gc.collect()  # after the except block: its traceback no longer pins the failed state
    return {"status": "out_of_memory", "shape": shape.name, "n_params": count_params(shape.model),
            "seq_len": shape.seq_len, "batch_per_device": shape.batch_per_device,
            "remat_tried": tried}


# --------------------------------------------------------------------------- report


def run_sweep(preset_name: str, *, shapes: Optional[Sequence[str]] = None,
              n_devices: Optional[int] = None, batch: Optional[int] = None,
              remat: Optional[str] = None, attention: Optional[str] = None,
              loss_chunk: Optional[int] = None, compute_dtype: Optional[str] = None,
              steps: Optional[int] = None,
              repeats: Optional[int] = None, warmup: Optional[int] = None) -> Dict[str, Any]:
    """Run a preset and return the report (what ``--out`` writes)."""
    if preset_name not in PRESETS:
        raise BenchmarkError(f"unknown preset {preset_name!r}",
                             hint=f"use one of: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[preset_name]
    devices = jax.devices()
    if n_devices is not None:
        if not 0 < n_devices <= len(devices):
            raise BenchmarkError(f"--devices {n_devices} but {len(devices)} device(s) are present",
                                 hint=f"use 1..{len(devices)}, or leave it out for all")
        devices = devices[:n_devices]
    plan = {"warmup": preset.warmup if warmup is None else warmup,
            "steps": preset.steps if steps is None else steps,
            "repeats": preset.repeats if repeats is None else repeats}
    if min(plan["steps"], plan["repeats"]) < 1 or plan["warmup"] < 1:
        raise BenchmarkError(f"timing plan {plan} needs at least one warm-up, step and repeat",
                             hint="use e.g. --warmup 2 --steps 5 --repeats 3")
    report = {"benchmark": "mfu", "preset": preset_name, "description": preset.description,
              **environment(devices), "plan": plan,
              "flop_counter": "scaling.flops.executed_flops_per_token (Chinchilla's terms, "
                              "embedding gather excluded); mfu: full T×T attention, "
                              "mfu_causal: causal triangle; remat recompute not counted",
              "results": []}
    for shape in select_shapes(preset, shapes, batch=batch, remat=remat, attention=attention,
                               loss_chunk=loss_chunk, compute_dtype=compute_dtype):
        report["results"].append(measure_shape(shape, devices, **plan))
        gc.collect()
    report["host"]["load_average_after"] = list(os.getloadavg())
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--tiny", action="store_true", help="same as --preset cpu")
    parser.add_argument("--shapes", help="comma-separated shape names of the preset")
    parser.add_argument("--devices", type=int, help="use the first N devices (default: all)")
    parser.add_argument("--batch", type=int, help="sequences per device, for every shape")
    parser.add_argument("--remat", help="remat policy for every shape (no fallbacks)")
    parser.add_argument("--attention", help="attention implementation for every shape")
    parser.add_argument("--loss-chunk", type=int, help="model.loss_chunk for every shape")
    parser.add_argument("--compute-dtype", help="model.compute_dtype for every shape")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    try:
        report = run_sweep("cpu" if args.tiny else args.preset,
                           shapes=args.shapes.split(",") if args.shapes else None,
                           n_devices=args.devices, batch=args.batch, remat=args.remat,
                           attention=args.attention, loss_chunk=args.loss_chunk,
                           compute_dtype=args.compute_dtype,
                           steps=args.steps, repeats=args.repeats, warmup=args.warmup)
    except ChinchaxError as err:
        print(f"error: {err}" + (f"\nhint: {err.hint}" if getattr(err, "hint", None) else ""))
        return 2
    print_table(report)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
