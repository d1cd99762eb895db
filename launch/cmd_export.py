"""``chinchax export RUN --format hf OUT``: a trained run as a Hugging Face Llama folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chinchax.errors import ConfigError

FORMATS = ("hf",)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export", help="export a trained run (Hugging Face Llama format)",
        description="Write a run's newest checkpoint (or --step) as a Hugging Face Llama folder: "
        "config.json, model.safetensors and the tokenizer.")
    parser.add_argument("run", help="run directory written by chinchax train")
    parser.add_argument("out", help="folder to write (created if missing)")
    parser.add_argument("--format", default="hf", choices=FORMATS, help="output format")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launch.config import read_run_dir_config
    from training.export_hf import check_llama, export_llama
    from training.trained import load_trained_model

    run_dir, out = Path(args.run), Path(args.out)
    cfg = read_run_dir_config(run_dir)
    check_llama(cfg.model)  # before reading any checkpoint
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty",
                          hint="choose a new folder for the export, or empty this one")
    trained = load_trained_model(cfg, run_dir=run_dir, step=args.step)
    info = export_llama(trained.model, out, data_tokenizer=cfg.data.tokenizer,
                        max_positions=cfg.train.seq_len,
                        source={"run_dir": str(run_dir), "step": trained.step})
    print(json.dumps({"out": str(out), **info}, indent=1))
    return 0
