"""What does continual pre-training (CPT) buy on CPU?  Tiny models, Python source -> English prose.

Per size ``base`` (Python), ``scratch`` (prose) and ``cpt0`` (base continued on prose), plus 10%/30%
replay at one size: FLOPs saved to scratch's final loss, forgetting of Python, the CPT law's fit.
    python benchmarks/cpt.py    # ~10 minutes; writes benchmarks/results/cpt.json and cpt.png"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from common import first_reaching, run, share_compilations  # noqa: E402

from scaling.cpt import compute_saving, fit_cpt_law
from scaling.fit import FitConfig, fit
from scaling.observations import Observations, read_run_dir
from training.metrics import read_records

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
RESULTS = REPO / "benchmarks" / "results"

# d_model, n_heads, d_ff of each size (2 layers, byte vocabulary); head size 16 throughout.
SIZES: dict[str, dict[str, int]] = {
    "d32": {"d_model": 32, "n_heads": 2, "d_ff": 128},
    "d48": {"d_model": 48, "n_heads": 3, "d_ff": 192},
    "d64": {"d_model": 64, "n_heads": 4, "d_ff": 256},
}
REPLAY_SHARES = (0.0, 0.1, 0.3)
PAPER_SAVING = (0.25, 0.50)  # Zheng et al. 2024: CPT reaches the same loss with 25-50% less compute


def _load_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text())


def _mixture(replay: float) -> list[dict[str, Any]]:
    """Prose to learn plus the Python source: replayed at ``replay``, else evaluated only."""
    python: dict[str, Any] = {"name": "python", "source": "embedded"}
    if replay > 0:
        return [{"name": "prose", "source": "prose", "weight": 1.0 - replay},
                {**python, "weight": replay, "role": "replay"}]
    return [{"name": "prose", "source": "prose", "weight": 1.0}, {**python, "role": "eval"}]


def experiment(config: str, name: str, root: Path, size: dict[str, int], args: argparse.Namespace,
               cache: Path, **changes: Any) -> dict[str, Any]:
    exp = _load_yaml(config)
    exp["name"], exp["run_dir"] = name, str(root / name)
    exp["model"].update(size)
    exp["train"].update(steps=args.steps, eval_every=args.eval_every, eval_batches=args.eval_batches,
                        log_every=args.eval_every, seq_len=args.seq_len, global_batch=args.batch)
    exp["optim"]["warmup_steps"] = max(1, args.steps // 10)
    exp["checkpoint"] = {"every_steps": args.steps, "keep_last": 1, "async_save": False}
    exp["data"]["cache_dir"] = str(cache)
    for key, value in changes.items():
        exp[key] = value
    return exp


def eval_curve(run_dir: Path, key: str = "eval_loss") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, FLOPs, loss) of every eval of a run, for one eval key."""
    records = [r for r in read_records(run_dir, "eval") if r.get(key) is not None]
    return (np.array([r["step"] for r in records]), np.array([float(r["flops"]) for r in records]),
            np.array([float(r[key]) for r in records]))


def curves(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    out = {}
    for key in ("eval_loss", "eval_loss/python"):
        step, flops, loss = eval_curve(run_dir, key)
        if step.size:
            out[key] = {"step": step.tolist(), "flops": flops.tolist(), "loss": loss.tolist()}
    return out


def savings(scratch: dict[str, Any], cpt_dir: Path, cpt: dict[str, Any]) -> dict[str, Any]:
    target = float(scratch["final_eval_loss"])
    _, flops, loss = eval_curve(cpt_dir)
    reached = first_reaching(flops, loss, target)
    base_flops = float(cpt["init"]["source_flops"])
    scratch_flops = float(scratch["flops"])
    out: dict[str, Any] = {"target_loss": target, "scratch_flops": scratch_flops,
                           "base_flops": base_flops, "cpt_flops_to_target": reached,
                           # reached by the first eval: the true crossing may come earlier still
                           "reached_at_first_eval": bool(loss.size and loss[0] <= target),
                           "cpt_final_loss": float(cpt["final_eval_loss"])}
    if reached is None:
        out.update(saving_cpt_only=None, saving_with_base=None)
    else:
        out.update(saving_cpt_only=1.0 - reached / scratch_flops,
                   saving_with_base=1.0 - (reached + base_flops) / scratch_flops)
    return out


def fit_laws(scratch_dirs: list[Path], cpt_dirs: list[Path], drop_early: float) -> dict[str, Any]:
    """From-scratch law on the scratch runs, then the CPT law with its E, A, alpha."""
    def observations(dirs: list[Path]) -> Observations:
        return Observations.concat([read_run_dir(d) for d in dirs]).drop_early(drop_early)

    out: dict[str, Any] = {"drop_early": drop_early}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        base = fit(observations(scratch_dirs), FitConfig(), name="prose-scratch")
        out["scratch_law"] = base.law.to_dict()
        out["scratch_points"] = len(base.observations)
        cpt = fit_cpt_law(observations(cpt_dirs), base.law, name="prose-cpt")
        out["cpt_law"] = cpt.law.to_dict()
        out["cpt_points"] = len(cpt.observations)
    out["warnings"] = sorted({str(w.message) for w in caught})
    return out


def describe_fit(law_fit: dict[str, Any]) -> str:
    if "cpt_law" not in law_fit:
        return f"CPT law fit: {law_fit.get('skipped') or law_fit.get('error')}"
    s, c = law_fit["scratch_law"], law_fit["cpt_law"]
    lines = [f"from scratch: E={s['E']:.3g} A={s['A']:.3g} alpha={s['alpha']:.3f} B={s['B']:.3g} "
             f"beta={s['beta']:.3f}  ({law_fit['scratch_points']} points)",
             f"CPT (E, A, alpha kept): B'={c['B']:.3g} beta'={c['beta']:.3f} gamma={c['gamma']:.3f}"
             f"  ({law_fit['cpt_points']} points)"]
    predicted = law_fit.get("predicted_saving_cpt_only", {})
    if predicted:
        lines.append("saving the fitted pair predicts: " +
                     ", ".join(f"{k} {v:+.1%}" for k, v in predicted.items()))
    lines += [f"warning: {w}" for w in law_fit["warnings"]]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}


def plot(path: Path, root: Path, sizes: list[str], forgetting_size: str, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, size in zip(colours, sizes):
        _, f, l = eval_curve(root / f"scratch_{size}")
        left.plot(f, l, "-", color=colour, label=f"{size} from scratch")
        _, f, l = eval_curve(root / f"cpt0_{size}")
        left.plot(f, l, "--", color=colour, label=f"{size} CPT from Python (CPT FLOPs)")
        left.axhline(results["savings"][size]["target_loss"], color=colour, lw=0.6, ls=":")
        reached = results["savings"][size]["cpt_flops_to_target"]
        if reached:
            left.plot([reached], [results["savings"][size]["target_loss"]], "o", color=colour)
    left.set(xscale="log", xlabel="training FLOPs (shared counter)", ylabel="held-out prose loss (nats/byte)",
             title="Prose: from scratch vs continued from Python")
    left.legend(fontsize=7)
    base_loss = results["forgetting"]["base_python_loss"]
    for colour, share in zip(colours, REPLAY_SHARES):
        name = f"cpt{round(share * 100)}_{forgetting_size}"
        _, f, l = eval_curve(root / name, "eval_loss/python")
        right.plot(f, l, "-", color=colour, label=f"{share:.0%} replay")
    right.axhline(base_loss, color="k", lw=0.8, ls=":", label="base model, end of its run")
    right.set(xscale="log", xlabel="CPT FLOPs", ylabel="held-out Python loss (nats/byte)",
              title=f"Forgetting of the first corpus ({forgetting_size})")
    right.legend(fontsize=7)
    for axis in (left, right):  # after set(xscale=...), which installs its own formatters
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(value: Optional[float], at_least: bool = False) -> str:
    """A saving; ``>=`` when the first eval already beat the target (the crossing is earlier)."""
    return "not reached" if value is None else f"{'>=' if at_least else ''}{value:+.1%}"


def main() -> int:
    args = _parse_args()
    sizes = ["d32", "d64"] if args.quick else list(SIZES)
    forgetting_size = sizes[-1] if args.quick else "d48"
    started, load_before = time.time(), machine()["load_average"]
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="chinchax-cpt-"))
    root.mkdir(parents=True, exist_ok=True)
    share_compilations(root / "jax-cache")
    console = Console(width=130)
    console.print(f"runs in {root}  (load average {load_before[0]:.2f} on {os.cpu_count()} CPUs)")
    with open(root / "train.log", "w") as log:
        summaries = _train_all(args, root, sizes, forgetting_size, console, log)
    results = _results(summaries, root, sizes, forgetting_size)
    results["law_fit"] = _law_fit(args, summaries, root, sizes)
    _print_tables(console, results, sizes, forgetting_size, args)
    _write(args, root, results, summaries, sizes, forgetting_size, started, load_before, console)
    if args.runs_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 sizes, 100 steps, no law fit")
    parser.add_argument("--steps", type=int, default=None, help="steps of every run (default 150)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("--out", type=Path, default=RESULTS / "cpt.json")
    args = parser.parse_args()
    args.steps = args.steps or (100 if args.quick else 150)
    args.eval_every = args.eval_every or max(1, args.steps // 10)
    return args


def _train_all(args: argparse.Namespace, root: Path, sizes: list[str], forgetting_size: str,
               console: Console, log: Any) -> dict[str, dict[str, Any]]:
    cache = root / "cache"
    summaries: dict[str, dict[str, Any]] = {}

    def do(name: str, exp: dict[str, Any]) -> dict[str, Any]:
        t0 = time.time()
        summaries[name] = run(exp, log)
        summaries[name]["bench_wall_s"] = time.time() - t0
        console.print(f"  {name:<10} eval {summaries[name]['final_eval_loss']:.4f}  "
                      f"{summaries[name]['flops']:.3g} FLOPs  {time.time() - t0:5.1f} s")
        return summaries[name]

    for size in sizes:
        shape = SIZES[size]
        do(f"base_{size}", experiment("cpt_python.yaml", f"base_{size}", root, shape, args, cache))
        do(f"scratch_{size}", experiment("cpt_prose_scratch.yaml", f"scratch_{size}", root, shape,
                                         args, cache))
        shares = REPLAY_SHARES if size == forgetting_size else (0.0,)
        for share in shares:
            name = f"cpt{round(share * 100)}_{size}"
            exp = experiment("cpt_prose_from_python.yaml", name, root, shape, args, cache,
                             init={"from_run": str(root / f"base_{size}")})
            exp["data"] = {"cache_dir": str(cache), "mixture": _mixture(share)}
            do(name, exp)

    return summaries


def _results(summaries: dict[str, dict[str, Any]], root: Path, sizes: list[str],
             forgetting_size: str) -> dict[str, Any]:
    results: dict[str, Any] = {"savings": {}, "forgetting": {}}
    for size in sizes:
        results["savings"][size] = {
            "n_params": summaries[f"scratch_{size}"]["n_params"],
            **savings(summaries[f"scratch_{size}"], root / f"cpt0_{size}", summaries[f"cpt0_{size}"])}
    base_python = float(summaries[f"base_{forgetting_size}"]["final_eval_loss"])
    results["forgetting"] = {"size": forgetting_size, "base_python_loss": base_python, "by_replay": {}}
    for share in REPLAY_SHARES:
        name = f"cpt{round(share * 100)}_{forgetting_size}"
        after = float(summaries[name]["final_eval_loss/python"])
        _, _, python_curve = eval_curve(root / name, "eval_loss/python")
        saved = savings(summaries[f"scratch_{forgetting_size}"], root / name, summaries[name])
        results["forgetting"]["by_replay"][f"{share:.0%}"] = {
            "python_loss_after": after, "forgetting_nats": after - base_python,
            "forgetting_relative": after / base_python - 1.0,
            "python_loss_peak": float(python_curve.max()),  # the worst point during the run
            "prose_loss": float(summaries[name]["final_eval_loss"]),
            "saving_cpt_only": saved["saving_cpt_only"], "saving_with_base": saved["saving_with_base"],
            "reached_at_first_eval": saved["reached_at_first_eval"]}

    return results


def _law_fit(args: argparse.Namespace, summaries: dict[str, dict[str, Any]], root: Path,
             sizes: list[str]) -> dict[str, Any]:
    if args.quick:
        return {"skipped": "--quick: two sizes cannot fit alpha and gamma with 3 runs each"}
    try:
        law_fit = fit_laws([root / f"scratch_{s}" for s in sizes],
                           [root / f"cpt0_{s}" for s in sizes], drop_early=0.1)
        scratch_law, cpt_law = law_fit["scratch_law"], law_fit["cpt_law"]
        from scaling.laws import law_from_dict

        predicted = {}
        for size in sizes:
            s = summaries[f"scratch_{size}"]
            predicted[size] = compute_saving(law_from_dict(scratch_law), law_from_dict(cpt_law),
                                             float(s["n_params"]), float(s["tokens"]))
        law_fit["predicted_saving_cpt_only"] = predicted
    except Exception as error:  # a failed fit is a result too: say why
        return {"error": f"{type(error).__name__}: {error}", "hint": getattr(error, "hint", None)}
    return law_fit


def _print_tables(console: Console, results: dict[str, Any], sizes: list[str], forgetting_size: str,
                  args: argparse.Namespace) -> None:
    base_python = results["forgetting"]["base_python_loss"]
    table = Table(title=f"CPT from Python source to English prose ({args.steps} steps, "
                        f"batch {args.batch} x {args.seq_len} tokens, 1 CPU device)")
    for column in ("size", "N", "scratch final loss", "CPT final loss", "FLOPs saved (CPT only)",
                   "FLOPs saved (incl. base)"):
        table.add_column(column, justify="right")
    for size in sizes:
        s = results["savings"][size]
        table.add_row(size, f"{s['n_params']:,}", f"{s['target_loss']:.4f}", f"{s['cpt_final_loss']:.4f}",
                      _pct(s["saving_cpt_only"], s["reached_at_first_eval"]),
                      _pct(s["saving_with_base"], s["reached_at_first_eval"]))
    console.print(table)
    forgetting = Table(title=f"Forgetting on the Python source ({forgetting_size}; base model's "
                             f"held-out loss {base_python:.4f})")
    for column in ("replay", "Python loss after", "change", "peak during CPT", "prose loss",
                   "FLOPs saved (CPT only)"):
        forgetting.add_column(column, justify="right")
    for share, row in results["forgetting"]["by_replay"].items():
        forgetting.add_row(share, f"{row['python_loss_after']:.4f}",
                           f"{row['forgetting_nats']:+.4f} ({row['forgetting_relative']:+.1%})",
                           f"{row['python_loss_peak']:.4f}",
                           f"{row['prose_loss']:.4f}",
                           _pct(row["saving_cpt_only"], row["reached_at_first_eval"]))
    console.print(forgetting)
    console.print(describe_fit(results["law_fit"]))



def _write(args: argparse.Namespace, root: Path, results: dict[str, Any],
           summaries: dict[str, dict[str, Any]], sizes: list[str], forgetting_size: str,
           started: float, load_before: Any, console: Console) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(args.out.with_suffix(".png"), root, sizes, forgetting_size, results)
    results.update({
        "settings": {"steps": args.steps, "seq_len": args.seq_len, "global_batch": args.batch,
                     "eval_every": args.eval_every, "eval_batches": args.eval_batches,
                     "sizes": {s: SIZES[s] for s in sizes}, "n_layers": 2, "devices": 1,
                     "paper_saving": PAPER_SAVING, "flop_counter": "scaling.flops.train_flops_per_token"},
        "runs": {name: {k: s.get(k) for k in ("n_params", "steps", "tokens", "flops", "final_eval_loss",
                                               "final_eval_loss/prose", "final_eval_loss/python",
                                               "tokens_per_s", "wall_time_s", "bench_wall_s", "init")}
                 for name, s in summaries.items()},
        "curves": {name: curves(root / name) for name in summaries},
        "machine": {**machine(), "load_average_before": load_before},
        "wall_time_s": time.time() - started,
    })
    args.out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {time.time() - started:.0f} s "
                  f"(load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    raise SystemExit(main())
