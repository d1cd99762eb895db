"""Pieces the benchmark scripts share.  ``benchmarks/`` is a folder of scripts, not a package:
each puts its own folder on ``sys.path`` before importing this."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import IO, Any, Optional

import numpy as np


def first_reaching(x: np.ndarray, loss: np.ndarray, target: float) -> Optional[float]:
    """First ``x`` (tokens or FLOPs) at which ``loss`` reaches ``target``, interpolating
    linearly in (log x, loss) between the evals around the crossing; None if never."""
    below = np.nonzero(loss <= target)[0]
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = math.log(x[i - 1]), math.log(x[i]), loss[i - 1], loss[i]
    return float(math.exp(x0 + (target - y0) / (y1 - y0) * (x1 - x0)))


def write_report(report: dict[str, Any], path: Optional[Path], *, quiet: bool = False) -> None:
    """``report`` as indented JSON at ``path`` (folders made), and say so; nothing without one."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    if not quiet:
        print(f"wrote {path}", flush=True)


def share_compilations(directory: Path) -> None:
    """JAX's persistent compilation cache in ``directory``: runs of one shape compile once."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run(exp: dict[str, Any] | str, log: IO[str]) -> dict[str, Any]:
    """Train in this process (an experiment dict or file), progress lines into ``log``."""
    from launch.config import load_experiment, resolve
    from training.trainer import train

    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        return train(resolve(load_experiment(exp)))
