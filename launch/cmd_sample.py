"""``chinchax sample RUN --prompt TEXT``: text from a trained run's newest checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sample", help="generate text from a trained run",
        description="Continue a prompt with a trained run's model (newest checkpoint unless "
        "--step). Temperature 0 is greedy; the same --seed gives the same text.")
    parser.add_argument("run", help="run directory written by chinchax train")
    parser.add_argument("--prompt", default="", help="text to continue (empty: a new document)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the draws")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launch.config import read_run_dir_config
    from models.decode import SamplingConfig
    from training.trained import complete, load_trained_model

    run_dir = Path(args.run)
    cfg = read_run_dir_config(run_dir)
    sampling = SamplingConfig(max_tokens=args.max_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed)
    trained = load_trained_model(cfg, run_dir=run_dir, step=args.step)
    text = complete(trained, cfg, args.prompt, sampling)
    print(f"[{run_dir} step {trained.step}]", file=sys.stderr)
    print(args.prompt + text)
    return 0
