"""``chinchax tokenize`` throughput, and training on shards against the in-memory path.

Tokenizes with 1 and 2 workers (MB/s with start-up); the training tokens/s ratio should be ~1.
    python benchmarks/tokenize_speed.py --preset cpu --out benchmarks/results/tokenize_cpu.json"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path and this file would shadow the standard
# library's `tokenize` (which numpy and linecache import): move the folder to the end.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

from common import write_report  # noqa: E402 -- benchmarks/ is not a package

from training.sources import embedded
from training.tokenize_job import TokenizeJob, run_tokenize

SEPARATOR = "\n\x1e\n"  # between documents in the plain text file
PRESETS: Dict[str, Dict[str, Any]] = {
    "test": {"mb": 0.3, "shards": 2, "steps": 3, "repeats": 1, "d_model": 32, "layers": 2, "seq_len": 32,
             "batch": 8},
    "cpu": {"mb": 64.0, "shards": 8, "steps": 60, "repeats": 2, "d_model": 128, "layers": 4, "seq_len": 256,
            "batch": 16},
}


def write_text(path: Path, megabytes: float) -> int:
    """Standard library sources, repeated to ``megabytes``; returns the bytes written."""
    sources = [data.decode("utf-8", errors="replace") for data in embedded.documents(None, path.parent)]
    written, target = 0, int(megabytes * 1e6)
    with open(path, "w") as out:
        while written < target:
            for text in sources:
                out.write(text + SEPARATOR)
                written += len(text.encode()) + len(SEPARATOR)
                if written >= target:
                    break
    return written


def tokenize_rate(text: Path, out: Path, processes: int, shards: int) -> Dict[str, Any]:
    job = TokenizeJob(inputs=(str(text),), out=str(out), separator=SEPARATOR, num_shards=shards)
    started = time.perf_counter()
    manifest = run_tokenize(job, processes=processes, progress=False)
    seconds = time.perf_counter() - started
    megabytes = text.stat().st_size / 1e6
    return {"processes": processes, "shards": shards, "seconds": round(seconds, 3),
            "mb_per_s": round(megabytes / seconds, 3), "tokens": manifest["splits"]["train"]["tokens"]}


def train_rate(data: Dict[str, Any], preset: Dict[str, Any], run_dir: Path) -> float:
    from launch.config import load_experiment, resolve  # noqa: PLC0415
    from training.trainer import train  # noqa: PLC0415

    experiment = {
        "name": "tokenize_bench", "run_dir": str(run_dir),
        "model": {"vocab_size": 257, "d_model": preset["d_model"], "n_layers": preset["layers"],
                  "n_heads": max(1, preset["d_model"] // 32), "d_ff": 4 * preset["d_model"]},
        "data": data,
        "train": {"steps": preset["steps"], "global_batch": preset["batch"], "seq_len": preset["seq_len"],
                  "log_every": preset["steps"], "eval_every": 10**6, "eval_batches": 1},
        "checkpoint": {"every_steps": 10**6},
    }
    return float(train(resolve(load_experiment(experiment)))["tokens_per_s"])


def run(preset_name: str, work: Path) -> Dict[str, Any]:
    preset = PRESETS[preset_name]
    text = work / "corpus.txt"
    size = write_text(text, preset["mb"])
    rates = [tokenize_rate(text, work / f"shards{p}", p, preset["shards"]) for p in (1, 2)]
    paths = {"in_memory": {"source": "text", "path": str(text), "document_separator": SEPARATOR,
                           "cache_dir": str(work / "cache")},
             "shards": {"source": "shards", "path": str(work / "shards1")}}
    train_rate(paths["in_memory"], {**preset, "steps": 1}, work / "warm")  # builds the .npy cache once
    samples: Dict[str, list] = {name: [] for name in paths}
    for repeat in range(preset["repeats"]):
        for name, data in paths.items():  # alternate, so load from others falls on both alike
            samples[name].append(train_rate(data, preset, work / f"{name}{repeat}"))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "benchmark": "tokenize", "preset": preset_name, "input_mb": round(size / 1e6, 3),
        "tokenize": rates, "train_tokens_per_s": samples,
        "train_ratio_shards_over_in_memory": round(medians["shards"] / medians["in_memory"], 4),
        "hours_per_tb_one_process": round(1e6 / rates[0]["mb_per_s"] / 3600, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chinchax-tokenize-bench-"))
    try:
        report = run(args.preset, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
