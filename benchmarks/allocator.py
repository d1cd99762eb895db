"""The main job's train step with the system allocator and with the CLI's better one, side by side.

Each measurement is a fresh worker (an allocator applies from process start); sides alternate against load drift.
    python benchmarks/allocator.py    # writes benchmarks/results/step_cpu_allocator.json"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from common import write_report  # noqa: E402

from launch import runtime_env as rt  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results" / "step_cpu_allocator.json"
MAIN_JOB = REPO / "configs" / "cpu_tiny.yaml"


def worker(config: str, overrides: Sequence[str], *, warmup: int, steps: int, repeats: int) -> Dict[str, Any]:
    import jax

    from launch.config import load_experiment, resolve
    from models.sharding import activation_sharding
    from trainer_step import build_trainer_step, random_batch, time_steps

    run = resolve(load_experiment(config, overrides))
    built = build_trainer_step(run.model, jax.devices()[:1], optim=run.optim, global_batch=run.global_batch,
                               seq_len=run.train.seq_len, total_steps=warmup + steps * repeats + 1)
    with activation_sharding(built.mesh, built.rules):
        batch = random_batch(run.model.vocab_size, run.global_batch, run.train.seq_len, built.data_sharding)
        compiled = built.step.lower(built.state, batch).compile()
        state = built.state
        for _ in range(warmup):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        state, metrics, per_step = time_steps(compiled, state, batch, steps=steps, repeats=repeats)
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    n = steps * repeats
    return {"per_step_s": per_step, "median_step_s": statistics.median(per_step),
            "tokens_per_step": run.tokens_per_step, "loss_last": float(metrics["loss"]),
            "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / n,
            "user_s_per_step": (after.ru_utime - before.ru_utime) / n,
            "system_s_per_step": (after.ru_stime - before.ru_stime) / n, "wall_s": wall}


def settings() -> Dict[str, Dict[str, str]]:
    """Environments of the two sides: the system allocator, and what the CLI would choose."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", rt.ENV_ALLOCATOR_SET, rt.ENV_ALLOCATOR)}
    base["JAX_PLATFORMS"] = "cpu"
    better = rt.allocator_environment(base, tcmalloc=rt.find_tcmalloc(), hugetlb=rt.glibc_has_hugetlb())
    return {"system": {**base, rt.ENV_ALLOCATOR: "off"}, "better": {**base, **better}}


def run_side(env: Dict[str, str], args: argparse.Namespace) -> Dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", "--config", args.config, "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--repeats", str(args.repeats), *args.overrides]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> Dict[str, Any]:
    envs = settings()
    runs: Dict[str, List[Dict[str, Any]]] = {"system": [], "better": []}
    for i in range(args.rounds):
        for side in (("system", "better") if i % 2 == 0 else ("better", "system")):
            runs[side].append(run_side(envs[side], args))
            print(f"round {i + 1} {side}: {runs[side][-1]['median_step_s'] * 1e3:.1f} ms/step", flush=True)
    median = {side: statistics.median(r["median_step_s"] for r in rs) for side, rs in runs.items()}
    tokens = runs["system"][0]["tokens_per_step"]
    return {
        "benchmark": "step_cpu_allocator", "config": args.config, "overrides": args.overrides,
        "better_setting": {k: v for k, v in envs["better"].items()
                           if k in ("LD_PRELOAD", "GLIBC_TUNABLES", rt.ENV_ALLOCATOR_SET)},
        "rounds": args.rounds, "steps": args.steps, "repeats": args.repeats,
        "host": {"cpus": os.cpu_count(), "load_average_end": list(os.getloadavg())},
        "median_step_s": median,
        "tokens_per_s": {side: tokens / m for side, m in median.items()},
        "speedup": median["system"] / median["better"], "runs": runs,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.seq_len=64")
    parser.add_argument("--config", default=str(MAIN_JOB))
    parser.add_argument("--rounds", type=int, default=6, help="worker pairs (default 6)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per worker")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    if args.worker:
        print(json.dumps(worker(args.config, args.overrides, warmup=args.warmup, steps=args.steps,
                                repeats=args.repeats)))
        return 0
    report = compare(args)
    print(f"speedup {report['speedup']:.2f}x ({report['better_setting'].get(rt.ENV_ALLOCATOR_SET, 'none')})")
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
