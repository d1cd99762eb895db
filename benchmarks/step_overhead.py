"""Framework overhead: chinchax's train step against a minimal hand-written JAX/optax step.

Both start from the same parameters and must agree on the first update before timing; they are
timed in alternation, ratio = ours / reference (below 1: ours is faster).
    python benchmarks/step_overhead.py --out benchmarks/results/step_overhead_cpu.json"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from common import write_report  # noqa: E402
from device_stats import environment  # noqa: E402
from mfu_presets import BenchShape, Preset, cpu_model  # noqa: E402
from mfu_table import wide_console  # noqa: E402
from trainer_step import BenchmarkError, build_trainer_step, random_batch  # noqa: E402

from models.config import ModelConfig
from models.sharding import activation_sharding
from training.optim import OptimConfig

# --------------------------------------------------------------------------- the plain step

Params = Dict[str, Any]


def plain_rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale.astype(jnp.float32)).astype(x.dtype)


def plain_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin[None, :, None, :], cos[None, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def plain_forward(p: Params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Float32 logits of a SwiGLU decoder with untied head and scanned layers."""
    dtype = jnp.dtype(cfg.compute_dtype)
    B, T = tokens.shape
    N, K, H = cfg.n_heads, cfg.kv_heads, cfg.resolved_head_dim
    inv_freq = cfg.rope_theta ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    angles = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)

    def layer(x: jax.Array, w: Params) -> Tuple[jax.Array, None]:
        def dense(h: jax.Array, name: str) -> jax.Array:
            return h @ w[name]["kernel"].astype(dtype)

        h = plain_rms_norm(x, w["attn_norm"]["scale"], cfg.norm_eps)
        q = plain_rope(dense(h, "q").reshape(B, T, N, H), sin, cos)
        k = plain_rope(dense(h, "k").reshape(B, T, K, H), sin, cos)
        v = dense(h, "v").reshape(B, T, K, H)
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        x = x + dense(attended.reshape(B, T, N * H), "o")
        h = plain_rms_norm(x, w["mlp_norm"]["scale"], cfg.norm_eps)
        x = x + dense(jax.nn.silu(dense(h, "gate")) * dense(h, "up"), "down")
        return x, None

    x = jnp.take(p["embed"], tokens, axis=0).astype(dtype)
    x, _ = jax.lax.scan(layer, x, p["blocks"])
    x = plain_rms_norm(x, p["final_norm"]["scale"], cfg.norm_eps)
    return jnp.einsum("btd,dv->btv", x, p["head"]["kernel"].astype(dtype),
                      preferred_element_type=jnp.float32)


def plain_decay_mask(p: Params) -> Params:
    """Weight decay on matrices (embedding, head, kernels), not on norm scales."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key in ("kernel", "embed"), p)


def plain_optimizer(optim: OptimConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(optim.clip_norm),
        optax.adamw(optim.learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                    weight_decay=optim.weight_decay, mask=plain_decay_mask))


def make_plain_step(cfg: ModelConfig, tx: optax.GradientTransformation) -> Callable:
    """``(params, opt_state, batch) -> (params, opt_state, loss)``, jitted, state donated."""

    def loss_of(p: Params, batch: Dict[str, jax.Array]) -> jax.Array:
        logits = plain_forward(p, batch["inputs"], cfg)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    def step(p: Params, opt_state: Any, batch: Dict[str, jax.Array]) -> Tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_of)(p, batch)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def check_supported(cfg: ModelConfig) -> None:
    if cfg.mlp != "swiglu" or cfg.use_bias or cfg.tie_embeddings or not cfg.scan_layers:
        raise BenchmarkError("the plain reference step covers SwiGLU, no biases, an untied head "
                             "and scanned layers", hint="benchmark a shape with those settings")


# --------------------------------------------------------------------------- comparison


PRESETS: Dict[str, Preset] = {
    "cpu": Preset([BenchShape("dispatch-bound", cpu_model(64, 2, 2, 128), 64, 4),
                   BenchShape("compute-bound", cpu_model(256, 4, 4, 1024), 256, 8)],
                  warmup=2, steps=5, repeats=7),
    "test": Preset([BenchShape("test", cpu_model(64, 2, 2, 128), 64, 4)],
                   warmup=1, steps=2, repeats=3),
}
# Constant rate (no warmup), so that the framework's schedule and the plain constant agree.
OPTIM = OptimConfig(schedule="constant", warmup_steps=0, learning_rate=1e-3)


def _max_abs_diff(a: Any, b: Any) -> float:
    """Largest difference between two parameter trees (on the host: no per-shape compiles)."""
    host_a, host_b = jax.device_get((a, b))
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
               zip(jax.tree.leaves(host_a), jax.tree.leaves(host_b), strict=True))


def xla_cost(compiled: Any) -> Dict[str, Optional[float]]:
    """XLA's own count of a compiled program's work (loop bodies counted once)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 -- some backends have none
        analysis = None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    analysis = analysis or {}
    return {key: analysis.get(key) for key in ("flops", "bytes accessed", "transcendentals")}


def op_counts(compiled: Any) -> Counter:
    return Counter(re.findall(r"= \S+ ([a-z][a-z0-9\-]*)\(", compiled.as_text()))


def compare_programs(ours: Any, plain: Any) -> Dict[str, Any]:
    """Where the two compiled programs differ, in XLA's work counts and in operations."""
    ours_ops, plain_ops = op_counts(ours), op_counts(plain)
    return {"xla_cost_ours": xla_cost(ours), "xla_cost_plain": xla_cost(plain),
            "ops_ours": sum(ours_ops.values()), "ops_plain": sum(plain_ops.values()),
            "ops_only_in_ours": dict(ours_ops - plain_ops),
            "ops_only_in_plain": dict(plain_ops - ours_ops)}


def _compile_both(ours: Any, plain_step: Any, plain_state: Any, batch: Any) -> Tuple[Any, Any, Dict[str, float]]:
    started = time.perf_counter()
    our_step = ours.step.lower(ours.state, batch).compile()
    our_compile = time.perf_counter() - started
    started = time.perf_counter()
    plain_compiled = plain_step.lower(*plain_state, batch).compile()
    return our_step, plain_compiled, {"ours": our_compile,
                                      "plain": time.perf_counter() - started}


def _alternate(runs: Dict[str, Callable], states: Dict[str, Any], *, warmup: int, steps: int,
               repeats: int) -> Dict[str, List[float]]:
    """Seconds per step of each side, repeat by repeat, ours and the plain step in turn."""
    for _ in range(warmup - 1):
        for side in runs:
            states[side], _ = runs[side](states[side])
    jax.block_until_ready(states)
    times: Dict[str, List[float]] = {side: [] for side in runs}
    for _ in range(repeats):
        for side, run in runs.items():
            state = states[side]
            started = time.perf_counter()
            for _ in range(steps):
                state, out = run(state)
            jax.block_until_ready((state, out))
            times[side].append((time.perf_counter() - started) / steps)
            states[side] = state
    return times


def _side(compile_time: float, times: List[float], tokens: int) -> Dict[str, Any]:
    median = statistics.median(times)
    return {"compile_time_s": compile_time, "step_time_s": median, "step_time_min_s": min(times),
            "step_times_s": times, "tokens_per_s": tokens / median}


def compare_shape(shape: BenchShape, device: Any, *, warmup: int, steps: int,
                  repeats: int) -> Dict[str, Any]:
    """Same-math check, then alternating timings of ours and the plain step."""
    cfg = shape.model
    check_supported(cfg)
    ours = build_trainer_step(cfg, [device], optim=OPTIM, global_batch=shape.batch_per_device,
                              seq_len=shape.seq_len, total_steps=10**6)
    # A host round trip copies the initial parameters (ours are donated on the first step).
    plain_params = jax.device_put(jax.device_get(nnx.to_pure_dict(ours.state["params"])), device)
    tx = plain_optimizer(OPTIM)
    plain_state = (plain_params, tx.init(plain_params))

    with activation_sharding(ours.mesh, ours.rules):
        batch = random_batch(cfg.vocab_size, shape.batch_per_device, shape.seq_len, ours.data_sharding)
        our_step, plain_compiled, compile_times = _compile_both(
            ours, make_plain_step(cfg, tx), plain_state, batch)
        programs = compare_programs(our_step, plain_compiled)

        def run_plain(state: Any) -> Any:
            p, o, loss = plain_compiled(*state, batch)
            return (p, o), loss

        runs = {"ours": lambda state: our_step(state, batch), "plain": run_plain}
        # One update each from the same parameters: the same computation, or no comparison.
        states = {"ours": ours.state, "plain": plain_state}
        states["ours"], metrics = runs["ours"](states["ours"])
        states["plain"], plain_loss = runs["plain"](states["plain"])
        same = {"loss_ours": float(metrics["loss"]), "loss_plain": float(plain_loss),
                "params_max_abs_diff_after_one_update": _max_abs_diff(
                    nnx.to_pure_dict(states["ours"]["params"]), states["plain"][0])}
        same["loss_abs_diff"] = abs(same["loss_ours"] - same["loss_plain"])
        times = _alternate(runs, states, warmup=warmup, steps=steps, repeats=repeats)

    our_times, plain_times = times["ours"], times["plain"]
    ratios = [a / b for a, b in zip(our_times, plain_times)]  # back-to-back pairs
    tokens = shape.batch_per_device * shape.seq_len
    ours_side = _side(compile_times["ours"], our_times, tokens)
    plain_side = _side(compile_times["plain"], plain_times, tokens)
    return {
        "shape": shape.name, "model": cfg.to_dict(), "seq_len": shape.seq_len,
        "batch": shape.batch_per_device, "tokens_per_step": tokens, "same_math": same,
        "ours": ours_side, "plain": plain_side,
        "ratio": ours_side["step_time_s"] / plain_side["step_time_s"],
        "ratio_min": min(our_times) / min(plain_times),
        "ratio_per_repeat": ratios,
        "ratio_geometric_mean": math.exp(statistics.fmean(math.log(r) for r in ratios)),
        "programs": programs,
    }


def run_comparison(preset_name: str = "cpu", *, steps: Optional[int] = None,
                   repeats: Optional[int] = None) -> Dict[str, Any]:
    if preset_name not in PRESETS:
        raise BenchmarkError(f"unknown preset {preset_name!r}",
                             hint=f"use one of: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[preset_name]
    device = jax.devices()[0]
    plan = {"warmup": preset.warmup, "steps": steps or preset.steps,
            "repeats": repeats or preset.repeats}
    report = {"benchmark": "step_overhead", "preset": preset_name, **environment([device]),
              "plan": plan, "optimizer": {"learning_rate": OPTIM.learning_rate, "b1": OPTIM.b1,
                                          "b2": OPTIM.b2, "weight_decay": OPTIM.weight_decay,
                                          "clip_norm": OPTIM.clip_norm},
              "results": [compare_shape(s, device, **plan) for s in preset.shapes]}
    report["host"]["load_average_after"] = list(os.getloadavg())
    return report


def _cost_ratio(programs: Dict[str, Any], key: str) -> str:
    ours, plain = programs["xla_cost_ours"].get(key), programs["xla_cost_plain"].get(key)
    return "—" if not ours or not plain else f"{ours / plain:.3f}"


def print_table(report: Dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"train step: chinchax vs plain JAX/optax on {report['device']['device_kind']} "
                        f"(jax {report['software']['jax']}, load {report['host']['load_average'][0]:.1f})")
    for header in ("shape", "tokens/step", "ours step", "plain step", "ours/plain (median)",
                   "(pairs, geo-mean)", "XLA bytes ours/plain", "HLO ops ours/plain",
                   "loss diff", "param diff"):
        table.add_column(header, justify="left" if header == "shape" else "right")
    for r in report["results"]:
        table.add_row(r["shape"], str(r["tokens_per_step"]), f"{1e3 * r['ours']['step_time_s']:.2f} ms",
                      f"{1e3 * r['plain']['step_time_s']:.2f} ms", f"{r['ratio']:.3f}",
                      f"{r['ratio_geometric_mean']:.3f}", _cost_ratio(r["programs"], "bytes accessed"),
                      f"{r['programs']['ops_ours']}/{r['programs']['ops_plain']}",
                      f"{r['same_math']['loss_abs_diff']:.1e}",
                      f"{r['same_math']['params_max_abs_diff_after_one_update']:.1e}")
    wide_console().print(table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, help="alternating repeats per side")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    report = run_comparison(args.preset, steps=args.steps, repeats=args.repeats)
    print_table(report)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
