"""Does HyperCloning pay on CPU?  A small model grown 2x wider against the wide model from scratch.

Tokens and FLOPs each grown run (noisy, symmetric) needs to reach the scratch run's final loss
(Samragh et al. 2024 report 2.2-4x), and how far its copies drift apart.
    python benchmarks/hypercloning.py    # ~5 minutes; writes benchmarks/results/hypercloning.json"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import contextlib
import io
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from common import first_reaching, run, share_compilations  # noqa: E402

from launch.cli import main as chinchax
from scaling.rundir import CHECKPOINTS_DIR
from training.metrics import read_records

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_SPEEDUP = (2.2, 4.0)  # Samragh et al. 2024: 2.2-4x fewer tokens to the baseline's accuracy
SMALL = {"vocab_size": 257, "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256}


def experiment(name: str, root: Path, model: dict[str, int], steps: int,
               args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": name,
        "run_dir": str(root / name),
        "seed": 0,
        "model": dict(model),
        "data": {"source": "embedded"},
        "train": {"steps": steps, "global_batch": args.batch, "seq_len": args.seq_len,
                  "log_every": 25, "eval_every": args.eval_every, "eval_batches": 4},
        "optim": {"learning_rate": args.lr, "schedule": "cosine", "warmup_fraction": 0.05,
                  "weight_decay": 0.1, "clip_norm": 1.0},
        "checkpoint": {"every_steps": steps, "keep_last": 1},
        "prediction": {"enabled": False},
        "mesh": {"data": 1},
    }


def eval_curve(run_dir: Path) -> dict[str, np.ndarray]:
    records = [r for r in read_records(run_dir, "eval") if r.get("eval_loss") is not None]
    return {key: np.array([float(r[key]) for r in records])
            for key in ("step", "tokens", "flops", "eval_loss")}


def copy_gap(run_dir: Path) -> float:
    """``max |copy_0 - copy_1| / max |W|`` over the ``up`` kernel's output copies (final step)."""
    import orbax.checkpoint as ocp

    from models.hypercloning import copy_blocks

    checkpoints = run_dir / CHECKPOINTS_DIR
    step = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    state = ocp.StandardCheckpointer().restore(checkpoints / str(step) / "state")
    up = np.asarray(state["params"]["blocks"]["up"]["kernel"]["value"])
    copies = copy_blocks(up, 2, -1)
    return float(np.max(np.abs(copies[..., 0, :] - copies[..., 1, :])) / np.max(np.abs(up)))


def compare(curve: dict[str, np.ndarray], scratch: dict[str, Any],
            small: dict[str, Any]) -> dict[str, Any]:
    """Tokens and FLOPs the grown run needs to reach the scratch run's final loss."""
    target = float(scratch["final_eval_loss"])
    tokens = first_reaching(curve["tokens"], curve["eval_loss"], target)
    flops = first_reaching(curve["flops"], curve["eval_loss"], target)
    out: dict[str, Any] = {"target_loss": target, "tokens_to_target": tokens,
                           "flops_to_target": flops}
    if tokens is None or flops is None:
        return out
    out.update(
        speedup_tokens=scratch["tokens"] / tokens,
        speedup_flops=scratch["flops"] / flops,
        speedup_tokens_with_small=scratch["tokens"] / (tokens + small["tokens"]),
        speedup_flops_with_small=scratch["flops"] / (flops + small["flops"]),
    )
    return out


def plot(path: Path, curves: dict[str, dict[str, np.ndarray]], small_flops: float,
         target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"small": "tab:gray", "scratch": "tab:blue", "grown-noisy": "tab:red",
               "grown-symmetric": "tab:orange"}
    fig, (by_flops, by_tokens) = plt.subplots(1, 2, figsize=(12, 4.5))
    small_loss = float(curves["small"]["eval_loss"][-1])
    for name, curve in curves.items():
        flops, tokens, loss = curve["flops"], curve["tokens"], curve["eval_loss"]
        if name.startswith("grown"):  # before its first step a grown run has the small one's loss
            flops, tokens = np.r_[0.0, flops] + small_flops, np.r_[0.0, tokens]
            loss = np.r_[small_loss, loss]
        by_flops.plot(flops, loss, label=name, color=colours[name], marker=".")
        if name != "small":
            by_tokens.plot(tokens, loss, label=name, color=colours[name], marker=".")
    for axis in (by_flops, by_tokens):
        axis.axhline(target, color="tab:blue", linestyle=":", linewidth=1,
                     label="scratch final loss")
        axis.set_ylabel("held-out loss (nats/byte)")
        axis.grid(alpha=0.3)
        axis.legend()
    by_flops.set_xlabel("training FLOPs, the small run's included for grown runs")
    by_tokens.set_xlabel("tokens trained by the wide model")
    by_flops.set_title("HyperCloning 2x on CPU: loss against total compute")
    by_tokens.set_title("wide-model training only")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps: a smoke check")
    parser.add_argument("--small-steps", type=int, default=None)
    parser.add_argument("--wide-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    args.small_steps = args.small_steps or (60 if args.quick else 150)
    args.wide_steps = args.wide_steps or (80 if args.quick else 200)
    args.eval_every = args.eval_every or (10 if args.quick else 20)
    return args


def run_all(root: Path, wide: dict[str, int], args: argparse.Namespace, console: Console,
            started: float) -> dict[str, dict[str, Any]]:
    """The small, scratch and both grown runs, in that order; their summaries."""
    log = io.StringIO()
    summaries: dict[str, dict[str, Any]] = {}
    summaries["small"] = run(experiment("small", root, SMALL, args.small_steps, args), log)
    console.print(f"small: {summaries['small']['final_eval_loss']:.4f} after "
                  f"{args.small_steps} steps ({time.time() - started:.0f} s)")
    summaries["scratch"] = run(experiment("scratch", root, wide, args.wide_steps, args), log)
    console.print(f"scratch: {summaries['scratch']['final_eval_loss']:.4f} ({time.time() - started:.0f} s)")
    for variant in ("noisy", "symmetric"):
        name = f"grown-{variant}"
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = chinchax(["grow", str(root / "small"), "--factor", "2", "--out", str(root / name),
                             "--variant", variant, "--set", f"train.steps={args.wide_steps}",
                             "--set", f"checkpoint.every_steps={args.wide_steps}"])
        if code:
            raise SystemExit(f"chinchax grow failed:\n{log.getvalue()[-2000:]}")
        summaries[name] = run(str(root / name / "experiment.yaml"), log)
        console.print(f"{name}: {summaries[name]['final_eval_loss']:.4f} ({time.time() - started:.0f} s)")
    return summaries


def collect(root: Path, summaries: dict[str, dict[str, Any]],
            curves: dict[str, dict[str, np.ndarray]], args: argparse.Namespace) -> dict[str, Any]:
    """The JSON report: each run's numbers and curve, the grown runs against scratch."""
    scratch, small = summaries["scratch"], summaries["small"]
    results: dict[str, Any] = {"runs": {}, "settings": {k: v for k, v in vars(args).items()
                                                        if k != "keep"}}
    for name, summary in summaries.items():
        entry = {key: summary.get(key) for key in ("n_params", "steps", "tokens", "flops",
                                                   "flops_per_token", "final_eval_loss",
                                                   "wall_time_s", "tokens_per_s")}
        entry["curve"] = {k: v.tolist() for k, v in curves[name].items()}
        if name.startswith("grown"):
            entry.update(compare(curves[name], scratch, small))
            entry["copy_gap_up_kernel"] = copy_gap(root / name)
            entry["init"] = summary.get("init")
        results["runs"][name] = entry
    results["paper_speedup"] = PAPER_SPEEDUP
    results["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "load_average": list(os.getloadavg())}
    return results


def _fmt(value: Optional[float], spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _times(value: Optional[float]) -> str:
    return _fmt(value, ".2f") + (" x" if value else "")


def print_results(results: dict[str, Any], wide: dict[str, int], target: float,
                  console: Console) -> None:
    table = Table(title=f"HyperCloning 2x: {SMALL['d_model']} -> {wide['d_model']} wide, "
                  f"target = scratch final loss {target:.4f}")
    for column in ("run", "params", "tokens", "FLOPs", "final loss", "tokens to target",
                   "FLOPs to target", "speed-up", "incl. small", "copy gap"):
        table.add_column(column, justify="right")
    for name, entry in results["runs"].items():
        table.add_row(name, f"{entry['n_params']:,}", _fmt(entry["tokens"]), _fmt(entry["flops"]),
                      _fmt(entry["final_eval_loss"], ".4f"),
                      _fmt(entry.get("tokens_to_target", entry["tokens"] if name == "scratch" else None)),
                      _fmt(entry.get("flops_to_target", entry["flops"] if name == "scratch" else None)),
                      _times(entry.get("speedup_flops")),
                      _times(entry.get("speedup_flops_with_small")),
                      _fmt(entry.get("copy_gap_up_kernel"), ".2g"))
    console.print(table)
    console.print(f"paper: {PAPER_SPEEDUP[0]}-{PAPER_SPEEDUP[1]}x; wall {results['wall_time_s']:.0f} s")


def main() -> int:
    args = parse_args()
    stem = "hypercloning_quick" if args.quick else "hypercloning"
    root = args.keep or Path(tempfile.mkdtemp(prefix="chinchax-hypercloning-"))
    root.mkdir(parents=True, exist_ok=True)
    share_compilations(root / "jax-cache")
    console = Console(width=150)
    started = time.time()
    wide = {**SMALL, "d_model": 2 * SMALL["d_model"], "n_heads": 2 * SMALL["n_heads"],
            "d_ff": 2 * SMALL["d_ff"]}
    summaries = run_all(root, wide, args, console, started)
    curves = {name: eval_curve(root / name) for name in summaries}
    results = collect(root, summaries, curves, args)
    results["wall_time_s"] = time.time() - started
    scratch, small = summaries["scratch"], summaries["small"]
    print_results(results, wide, float(scratch["final_eval_loss"]), console)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1))
    plot(RESULTS / f"{stem}.png", curves, float(small["flops"]), float(scratch["final_eval_loss"]))
    console.print(f"wrote {RESULTS / (stem + '.json')} and {RESULTS / (stem + '.png')}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
