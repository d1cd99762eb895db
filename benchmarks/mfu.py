"""Model FLOPs utilisation of the real train step, shape by shape.

The trainer's own step is compiled once and timed (median over repeats); MFU counts the causal
attention triangle as MaxText does, not remat recompute.  Out of memory, the next remat is tried.
    python benchmarks/mfu.py --preset h100    # 1B, six variants, ≤ 8 min on one H100"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from common import write_report  # noqa: E402
from device_stats import (compiled_memory, device_memory, environment,  # noqa: E402
                          host_callbacks_in, is_out_of_memory)
from hlo_counts import attention_custom_calls, f32_vocab_dots  # noqa: E402
from mfu_presets import (PRESETS, BenchShape, Preset, select_shapes,  # noqa: E402
                         select_variants)
from mfu_table import print_line, print_table  # noqa: E402
from trainer_step import (BenchmarkError, TrainerStep, build_trainer_step,  # noqa: E402
                          random_batch, time_steps)

from chinchax.errors import ChinchaxError
from models.config import ModelConfig
from models.sharding import activation_sharding
from scaling.flops import count_params, executed_flops_per_token
from training.metrics import mfu

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
FLOP_COUNTER = ("scaling.flops.executed_flops_per_token (Chinchilla's terms, embedding gather "
                "excluded); mfu = mfu_causal: causal attention triangle (MaxText's count); "
                "mfu_full_square: the whole T×T square; remat recompute not counted")


# --------------------------------------------------------------------------- one step


def _compile(built: TrainerStep, batch: Any, device: Any,
             options: Dict[str, Any]) -> tuple[Any, float, Dict[str, Any]]:
    """The compiled step, its compile time, memory and what its program holds."""
    started = time.perf_counter()
    compiled = built.step.lower(built.state, batch).compile(options or None)
    compile_time = time.perf_counter() - started
    memory = compiled_memory(compiled)
    limit = device_memory(device)["bytes_limit"]
    if limit and memory["total"] and memory["total"] > limit:
        raise MemoryError(f"RESOURCE_EXHAUSTED: compiled step needs {memory['total']} bytes, "
                          f"device limit {limit}")
    text = compiled.as_text()
    program = {"host_callbacks": host_callbacks_in(text),
               "attention_custom_calls": attention_custom_calls(text), "hlo_text": text}
    return compiled, compile_time, {"compiled_memory": memory, **program}


def _run(compiled: Any, state: Any, batch: Any, *, warmup: int, steps: int,
         repeats: int) -> Dict[str, Any]:
    metrics: Any = None
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    loss_first = float(metrics["loss"]) if metrics is not None else float("nan")
    state, metrics, per_step = time_steps(compiled, state, batch, steps=steps, repeats=repeats)
    return {"per_step": per_step, "loss_first": loss_first, "loss_last": float(metrics["loss"])}


def _throughput(model_cfg: ModelConfig, seq_len: int, global_batch: int, per_step: List[float],
                devices: Sequence[Any]) -> Dict[str, Any]:
    step_time = statistics.median(per_step)
    tokens_per_step = global_batch * seq_len
    tokens_per_s = tokens_per_step / step_time
    causal = executed_flops_per_token(model_cfg, seq_len, causal=True)
    square = executed_flops_per_token(model_cfg, seq_len)
    kind, n = devices[0].device_kind, len(devices)
    achieved, achieved_square = tokens_per_s * causal, tokens_per_s * square
    return {"step_time_s": step_time, "step_time_min_s": min(per_step), "step_times_s": per_step,
            "tokens_per_step": tokens_per_step, "tokens_per_s": tokens_per_s,
            "executed_flops_per_token": causal, "executed_flops_per_token_causal": causal,
            "executed_flops_per_token_full_square": square,
            "achieved_flops_per_s": achieved, "achieved_flops_per_s_causal": achieved,
            "achieved_flops_per_s_full_square": achieved_square,
            "achieved_flops_per_s_per_device": achieved / n,
            "mfu": mfu(achieved, kind, n), "mfu_causal": mfu(achieved, kind, n),
            "mfu_full_square": mfu(achieved_square, kind, n)}


def measure_once(shape: BenchShape, model_cfg: ModelConfig, devices: Sequence[Any], *,
                 warmup: int, steps: int, repeats: int,
                 compiler_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Build, compile and time one shape with one remat policy."""
    global_batch = shape.batch_per_device * len(devices)
    built = build_trainer_step(model_cfg, devices, global_batch=global_batch,
                               seq_len=shape.seq_len, total_steps=warmup + steps * repeats + 1,
                               grad_accum_steps=shape.grad_accum_steps)
    with activation_sharding(built.mesh, built.rules):
        batch = random_batch(model_cfg.vocab_size, global_batch, shape.seq_len, built.data_sharding)
        compiled, compile_time, program = _compile(built, batch, devices[0], compiler_options or {})
        timing = _run(compiled, built.state, batch, warmup=warmup, steps=steps, repeats=repeats)
    del built, compiled
    text = program.pop("hlo_text")
    program["f32_vocab_dots"] = f32_vocab_dots(text, model_cfg.vocab_size)
    return {
        "status": "ok", "shape": shape.name, "n_params": count_params(model_cfg),
        "model": model_cfg.to_dict(), "seq_len": shape.seq_len, "global_batch": global_batch,
        "batch_per_device": shape.batch_per_device, "grad_accum_steps": shape.grad_accum_steps,
        "remat": model_cfg.remat, "attention": model_cfg.attention,
        "compute_dtype": model_cfg.compute_dtype, "loss_chunk": model_cfg.loss_chunk,
        "scan_layers": model_cfg.scan_layers, "head_backward": model_cfg.head_backward,
        "compile_time_s": compile_time,
        **_throughput(model_cfg, shape.seq_len, global_batch, timing["per_step"], devices),
        "device_memory": device_memory(devices[0]), **program,
        "state_donated": bool(program["compiled_memory"]["aliased"]),
        "loss_first": timing["loss_first"], "loss_last": timing["loss_last"],
    }


def measure_shape(shape: BenchShape, devices: Sequence[Any], *, warmup: int, steps: int,
                  repeats: int, compiler_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Time ``shape``, walking down its remat fallbacks while it runs out of memory."""
    tried: List[Dict[str, str]] = []
    for remat in [shape.model.remat] + [r for r in shape.remat_fallbacks if r != shape.model.remat]:
        try:
            result = measure_once(shape, shape.model.replace(remat=remat), devices,
                                  warmup=warmup, steps=steps, repeats=repeats,
                                  compiler_options=compiler_options)
            result["remat_tried"] = tried
            return result
        except Exception as exc:  # noqa: BLE001 -- out-of-memory is recorded, others re-raised
            if not is_out_of_memory(exc):
                raise
            tried.append({"remat": remat, "error": str(exc).strip().splitlines()[0][:300]})
        gc.collect()  # after the except block: its traceback no longer pins the failed state
    return {"status": "out_of_memory", "shape": shape.name, "n_params": count_params(shape.model),
            "seq_len": shape.seq_len, "batch_per_device": shape.batch_per_device,
            "remat": shape.model.remat, "remat_tried": tried}


# --------------------------------------------------------------------------- the sweep


def _devices(n_devices: Optional[int]) -> List[Any]:
    devices = jax.devices()
    if n_devices is None:
        return devices
    if not 0 < n_devices <= len(devices):
        raise BenchmarkError(f"--devices {n_devices} but {len(devices)} device(s) are present",
                             hint=f"use 1..{len(devices)}, or leave it out for all")
    return devices[:n_devices]


def _plan(preset: Preset, warmup: Optional[int], steps: Optional[int],
          repeats: Optional[int]) -> Dict[str, int]:
    plan = {"warmup": preset.warmup if warmup is None else warmup,
            "steps": preset.steps if steps is None else steps,
            "repeats": preset.repeats if repeats is None else repeats}
    if min(plan["steps"], plan["repeats"]) < 1 or plan["warmup"] < 1:
        raise BenchmarkError(f"timing plan {plan} needs at least one warm-up, step and repeat",
                             hint="use e.g. --warmup 2 --steps 5 --repeats 3")
    return plan


def run_sweep(preset_name: str, *, shapes: Optional[Sequence[str]] = None,
              n_devices: Optional[int] = None, batch: Optional[int] = None,
              remat: Optional[str] = None, attention: Optional[str] = None,
              loss_chunk: Optional[int] = None, compute_dtype: Optional[str] = None,
              steps: Optional[int] = None, repeats: Optional[int] = None,
              warmup: Optional[int] = None, variants: Optional[Sequence[str]] = None,
              out: Optional[Path] = None, budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Run a preset (shapes × variants) and return the report; ``out`` is rewritten as each result
    lands, and variants left after ``budget_s`` seconds are recorded as skipped."""
    if preset_name not in PRESETS:
        raise BenchmarkError(f"unknown preset {preset_name!r}",
                             hint=f"use one of: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[preset_name]
    chosen = select_shapes(preset, shapes, batch=batch, remat=remat, attention=attention,
                           loss_chunk=loss_chunk, compute_dtype=compute_dtype)
    chosen_variants = select_variants(preset, variants)
    devices, plan = _devices(n_devices), _plan(preset, warmup, steps, repeats)
    report = {"benchmark": "mfu", "preset": preset_name, "description": preset.description,
              **environment(devices), "plan": plan, "flop_counter": FLOP_COUNTER, "results": []}
    started = time.perf_counter()
    for shape in chosen:
        for variant in chosen_variants:
            if budget_s is not None and time.perf_counter() - started > budget_s:
                result = {"status": "skipped_time_budget", "shape": shape.name}
            else:
                result = measure_shape(variant.apply(shape), devices, **plan,
                                       compiler_options=preset.compiler_options)
            result["variant"] = variant.name
            report["results"].append(result)
            print_line(report, result)
            write_report(report, out, quiet=True)
            gc.collect()
    report["wall_time_s"] = time.perf_counter() - started
    report["host"]["load_average_after"] = list(os.getloadavg())
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--tiny", action="store_true", help="same as --preset cpu")
    parser.add_argument("--shapes", help="comma-separated shape names of the preset")
    parser.add_argument("--variants", help="comma-separated variant names of the preset")
    parser.add_argument("--devices", type=int, help="use the first N devices (default: all)")
    parser.add_argument("--batch", type=int, help="sequences per device, for every shape")
    parser.add_argument("--remat", help="remat policy for every shape (no fallbacks)")
    parser.add_argument("--attention", help="attention implementation for every shape")
    parser.add_argument("--loss-chunk", type=int, help="model.loss_chunk for every shape")
    parser.add_argument("--compute-dtype", help="model.compute_dtype for every shape")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--budget-s", type=float, help="skip variants left after this many seconds")
    parser.add_argument("--out", type=Path, help="write the JSON report here (default for "
                        "accelerator presets: benchmarks/results/mfu_<preset>_<device>.json)")
    args = parser.parse_args(argv)
    preset = "cpu" if args.tiny else args.preset
    try:
        report = run_sweep(preset, shapes=args.shapes.split(",") if args.shapes else None,
                           variants=args.variants.split(",") if args.variants else None,
                           n_devices=args.devices, batch=args.batch, remat=args.remat,
                           attention=args.attention, loss_chunk=args.loss_chunk,
                           compute_dtype=args.compute_dtype, steps=args.steps,
                           repeats=args.repeats, warmup=args.warmup,
                           out=args.out or default_out(preset), budget_s=args.budget_s)
    except ChinchaxError as err:
        print(f"error: {err}" + (f"\nhint: {err.hint}" if getattr(err, "hint", None) else ""))
        return 2
    print_table(report)
    write_report(report, args.out or default_out(preset))
    return 0


def default_out(preset: str) -> Optional[Path]:
    """Accelerator presets write their JSON without being asked (a lease is short)."""
    if jax.default_backend() == "cpu":
        return None
    kind = jax.devices()[0].device_kind.lower().replace(" ", "_")
    return RESULTS / f"mfu_{preset}_{kind}.json"


if __name__ == "__main__":
    raise SystemExit(main())
