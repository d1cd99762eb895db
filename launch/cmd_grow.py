"""``chinchax grow RUN_DIR --factor 2 --out NEW_RUN_DIR``: a wider run that starts as RUN_DIR's model.

Only the run directory is written; HyperCloning widens the model when the run starts, so
hand-written ``init: {grow_from: ...}`` configs share the code path and the wide weights land
straight in the new mesh's shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from chinchax.errors import ConfigError
from models.grow_shape import DEFAULT_NOISE_SCALE, VARIANTS, check_factor, grow_config
from scaling.rundir import CHECKPOINTS_DIR, CONFIG_NAME

if TYPE_CHECKING:
    from training.config import RunConfig

EXPERIMENT_NAME = "experiment.yaml"
MAX_GROWN_PARAMS = 1e12  # beyond any single run this framework plans


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "grow",
        help="widen a trained run by an integer factor (HyperCloning) into a new run directory",
        description="Write a run directory whose model is RUN_DIR's widened FACTOR times and "
        "which starts from RUN_DIR's newest checkpoint computing the same function. Train it "
        "with: chinchax train NEW_RUN_DIR/experiment.yaml",
    )
    parser.add_argument("run_dir", help="the trained run to widen (holds config.yaml and checkpoints/)")
    parser.add_argument("--factor", required=True, help="integer widening factor, 2 or more")
    parser.add_argument("--out", required=True, help="the new run directory (must not hold a run)")
    parser.add_argument("--variant", default="symmetric", choices=VARIANTS,
                        help="symmetric: exact copies; noisy: cancelling noise so the copies "
                        "train apart (default: symmetric)")
    parser.add_argument("--noise-scale", type=float, default=DEFAULT_NOISE_SCALE,
                        help="noisy variant: noise std relative to each cloned block's "
                        f"(default {DEFAULT_NOISE_SCALE:.3f}, i.e. 10 dB)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the new run's seed and the noise seed (default: the source's seed)")
    parser.add_argument("--name", default=None, help="run name (default: the --out folder's name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to the new run, repeatable: --set train.steps=2000 "
                        "--set optim.learning_rate=1e-3")
    parser.set_defaults(func=run)


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _parse_factor(text: str) -> int:
    try:
        value: Any = float(text)
    except ValueError:
        value = text
    return check_factor(value)


def grown_experiment(source: RunConfig, source_dir: str, factor: int, out: str, *, variant: str,
                     noise_scale: float, seed: int, name: str) -> dict[str, Any]:
    data = source.to_dict()
    data.pop("plan", None)  # the allocator's plan sized the small model, not this one
    data.pop("runtime", None)  # a record of the source's process, not a setting (--set runtime.*)
    data.update(
        name=name,
        run_dir=_absolute(out),
        seed=seed,
        model=grow_config(source.model, factor).to_dict(),
        init={"grow_from": _absolute(source_dir), "factor": factor, "variant": variant,
              "noise_scale": float(noise_scale), "noise_seed": seed},
    )
    data["prediction"] = {**data["prediction"], "enabled": False}  # a from-scratch law misfits a warm start
    return data


def _check_target(out: Path) -> None:
    if (out / CHECKPOINTS_DIR).exists() or (out / CONFIG_NAME).exists():
        raise ConfigError(f"{out} already holds a run",
                        hint="choose another --out directory, or delete that one first")


def _check_size(source: RunConfig, factor: int) -> None:
    from scaling.flops import count_params

    wide = count_params(grow_config(source.model, factor))
    if wide > MAX_GROWN_PARAMS:
        raise ConfigError(f"--factor {factor} would grow {count_params(source.model):,} parameters "
                          f"to {wide:,}, above {MAX_GROWN_PARAMS:.0e}",
                          hint="choose a smaller factor (2 to 8 is typical)")


def run(args: argparse.Namespace) -> int:
    factor = _parse_factor(args.factor)
    from launch.config import load_experiment, read_run_dir_config, resolve, run_config_to_yaml

    source = read_run_dir_config(args.run_dir)
    _check_size(source, factor)
    out = Path(args.out)
    _check_target(out)
    seed = source.seed if args.seed is None else args.seed
    data = grown_experiment(source, args.run_dir, factor, args.out, variant=args.variant,
                            noise_scale=args.noise_scale, seed=seed,
                            name=args.name or out.resolve().name)
    experiment = load_experiment(data, list(args.overrides))
    if experiment.budget is not None:
        raise ConfigError("a grown run's shape is fixed by its source; budget.* cannot apply",
                          hint="drop the budget.* overrides; set train.steps instead")
    run_cfg = resolve(experiment)

    from training.grow import check_growth  # JAX is imported only past argument checks

    growth = check_growth(run_cfg.init, run_cfg.model)  # source checkpoint present and matching

    out.mkdir(parents=True, exist_ok=True)
    (out / EXPERIMENT_NAME).write_text(yaml.safe_dump(dataclasses.asdict(experiment), sort_keys=False))
    (out / CONFIG_NAME).write_text(run_config_to_yaml(run_cfg))

    from scaling.flops import count_params, train_flops_per_token

    seq = run_cfg.train.seq_len
    small, wide = source.model, run_cfg.model
    print(f"wrote {out}: starts as {args.run_dir} (step {growth.step}) widened {factor}x "
          f"({args.variant}), grown when its training starts")
    print(f"  d_model {small.d_model} -> {wide.d_model}, d_ff {small.d_ff} -> {wide.d_ff}, "
          f"heads {small.n_heads}/{small.kv_heads} -> {wide.n_heads}/{wide.kv_heads} (head_dim "
          f"{wide.resolved_head_dim})")
    print(f"  params {count_params(small):,} -> {count_params(wide):,}; train FLOPs/token "
          f"{train_flops_per_token(small, seq):.4g} -> {train_flops_per_token(wide, seq):.4g}")
    if args.variant == "symmetric":
        print("  note: symmetric copies get identical updates, so on a deterministic backend the "
              "wide model keeps computing as the narrow one; --variant noisy lets them separate",
              file=sys.stderr)
    print(f"  next: chinchax train {out / EXPERIMENT_NAME}", file=sys.stderr)
    return 0
