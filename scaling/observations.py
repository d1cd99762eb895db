"""(N, D, C, loss) points for the fits, from CSV files or run directories, grouped into runs.

Points of one run are not independent, so the bootstrap resamples runs and early points are
dropped per run.  Bad input fails here, so the fits can assume positive, finite numbers.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from chinchax.errors import ScalingError
from scaling.rundir import SUMMARY_NAME, read_records, read_summary


# Accepted spellings of each column, compared after lower-casing and mapping spaces/dashes to
# underscores (so Epoch's "Model Size" and "Training FLOP" are recognised as they are).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "n_params": ("n_params", "n", "params", "parameters", "num_params", "model_size"),
    "tokens": ("tokens", "d", "n_tokens", "training_tokens", "data"),
    "flops": ("flops", "c", "compute", "training_flop", "training_flops"),
    "loss": ("loss", "eval_loss", "final_eval_loss", "val_loss", "l"),
    "run_id": ("run_id", "run", "run_name"),
    "seed": ("seed",),
    "step": ("step",),
}



@dataclass(frozen=True)
class Observations:
    """Parallel arrays, one entry per (run, eval) point; ``seed`` and ``step`` are -1 if unknown."""

    n_params: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    run_id: np.ndarray
    seed: np.ndarray
    step: np.ndarray

    @classmethod
    def from_arrays(
        cls,
        n_params: Any,
        loss: Any,
        tokens: Any = None,
        flops: Any = None,
        run_id: Any = None,
        seed: Any = None,
        step: Any = None,
        source: str = "input",
    ) -> "Observations":
        """Build and validate; ``tokens`` or ``flops`` may be omitted (``C = 6 N D``)."""
        n = np.asarray(n_params, dtype=np.float64).reshape(-1)
        size = n.size
        if tokens is None and flops is None:
            raise ScalingError(f"{source} gives neither tokens nor FLOPs",
                                   hint="provide D (tokens) or C (training FLOPs) for each point")
        d = None if tokens is None else np.asarray(tokens, dtype=np.float64).reshape(-1)
        c = None if flops is None else np.asarray(flops, dtype=np.float64).reshape(-1)
        if d is None:
            d = c / (6.0 * n)
        if c is None:
            c = 6.0 * n * d
        runs = (np.array([f"row{i}" for i in range(size)], dtype=object) if run_id is None
                else np.asarray(run_id, dtype=object).reshape(-1).astype(str).astype(object))
        seeds = np.full(size, -1, np.int64) if seed is None else np.asarray(seed, np.int64).reshape(-1)
        steps = np.full(size, -1, np.int64) if step is None else np.asarray(step, np.int64).reshape(-1)
        obs = cls(n, d, c, np.asarray(loss, dtype=np.float64).reshape(-1), runs, seeds, steps)
        obs.validate(source)
        return obs

    def validate(self, source: str = "input") -> None:
        size = self.n_params.size
        for name in ("tokens", "flops", "loss", "run_id", "seed", "step"):
            if getattr(self, name).size != size:
                raise ScalingError(f"{source}: column {name} has {getattr(self, name).size} "
                                       f"values but n_params has {size}",
                                       hint="give every column one value per point")
        if size == 0:
            raise ScalingError(f"{source} holds no observations",
                                   hint="point the fit at a CSV with rows or at finished run directories")
        for name, label in (("n_params", "N"), ("tokens", "D"), ("flops", "C"), ("loss", "loss")):
            values = getattr(self, name)
            bad = ~np.isfinite(values)
            if bad.any():
                row = int(np.argmax(bad))
                raise ScalingError(
                    f"{source}: {label} is NaN or infinite at {self._where(row)}",
                    hint="drop or repair that row (a diverged run should be left out of the fit)",
                )
            bad = values <= 0
            if bad.any():
                row = int(np.argmax(bad))
                raise ScalingError(
                    f"{source}: {label} must be positive, got {values[row]:g} at {self._where(row)}",
                    hint="losses, sizes, tokens and FLOPs enter the fit through their logarithms",
                )

    def _where(self, row: int) -> str:
        run = str(self.run_id[row])
        return f"row {row}" if run == f"row{row}" else f"row {row} (run {run})"

    def __len__(self) -> int:
        return int(self.n_params.size)

    @property
    def runs(self) -> tuple[str, ...]:
        _, first = np.unique(self.run_id.astype(str), return_index=True)
        return tuple(str(self.run_id[i]) for i in sorted(first))

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    @property
    def run_codes(self) -> np.ndarray:
        index = {run: i for i, run in enumerate(self.runs)}
        return np.array([index[str(r)] for r in self.run_id], dtype=np.int64)

    @property
    def compute(self) -> np.ndarray:
        """``6 N D``: the papers' compute convention, which the laws' frontiers assume."""
        return 6.0 * self.n_params * self.tokens

    def select(self, mask: Any) -> "Observations":
        return Observations(*(getattr(self, name)[mask] for name in _FIELDS))

    def final_mask(self) -> np.ndarray:
        """Each run's last point (most tokens): what an isoFLOP analysis compares."""
        codes, keep = self.run_codes, np.zeros(len(self), dtype=bool)
        for code in range(self.n_runs):
            rows = np.flatnonzero(codes == code)
            keep[rows[np.argmax(self.tokens[rows])]] = True
        return keep

    def final_points(self) -> "Observations":
        return self.select(self.final_mask())

    def drop_early(self, fraction: float) -> "Observations":
        """Drop each run's points before ``fraction`` of its final tokens (Hitchhiker practice):
        warm-up and an unannealed learning rate bias a fit."""
        if not 0.0 <= fraction < 1.0:
            raise ScalingError(f"drop-early fraction must lie in [0, 1), got {fraction}",
                                   hint="use e.g. 0.1 to drop the first 10% of each run's tokens")
        if fraction == 0.0:
            return self
        codes = self.run_codes
        final = np.zeros(self.n_runs)
        np.maximum.at(final, codes, self.tokens)
        return self.select(self.tokens >= fraction * final[codes])

    def drop_before_step(self, step: int) -> "Observations":
        """Drop evals before optimiser step ``step`` (unknown steps kept): the first hundreds of
        steps of a tiny model are a transient (unigram, then bigram statistics) that no power law
        in the learning-rate area follows, whatever fraction of the run they are."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ScalingError(f"drop-before-step must be a non-negative integer, got {step!r}",
                               hint="use e.g. 200 to drop every eval before step 200 (0: keep all)")
        return self if step == 0 else self.select((self.step < 0) | (self.step >= step))

    def drop_highest_loss(self, count: int) -> "Observations":
        """Without the ``count`` highest-loss points (Epoch drops 5 outliers of Chinchilla's data)."""
        if count < 0 or count >= len(self):
            raise ScalingError(f"cannot drop {count} of {len(self)} points",
                                   hint="drop fewer points than there are, e.g. 5")
        if count == 0:
            return self
        keep = np.sort(np.argsort(self.loss, kind="stable")[: len(self) - count])
        return self.select(keep)

    def records(self) -> list[dict[str, Any]]:
        """The ``data`` section of a law file."""
        return [
            {"run_id": str(self.run_id[i]), "n_params": float(self.n_params[i]),
             "tokens": float(self.tokens[i]), "flops": float(self.flops[i]),
             "loss": float(self.loss[i]), "seed": int(self.seed[i]), "step": int(self.step[i])}
            for i in range(len(self))
        ]

    @classmethod
    def concat(cls, parts: Sequence["Observations"]) -> "Observations":
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in _FIELDS))


_FIELDS = ("n_params", "tokens", "flops", "loss", "run_id", "seed", "step")


def require_runs(obs: Observations, minimum: int, purpose: str) -> None:
    if obs.n_runs < minimum:
        raise ScalingError(
            f"{purpose} needs at least {minimum} runs, got {obs.n_runs}",
            hint="add runs of more model sizes (the Hitchhiker's guide recommends at least 5)",
        )


# --------------------------------------------------------------------------------- CSV
def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _find_column(header: Sequence[str], key: str) -> str | None:
    by_norm = {_normalise(h): h for h in header}
    for alias in COLUMN_ALIASES[key]:
        if alias in by_norm:
            return by_norm[alias]
    return None


def _float_cell(text: str | None) -> float:
    try:
        return float(text) if text is not None and text.strip() else math.nan
    except ValueError:
        return math.nan


def read_csv(path: str | Path) -> Observations:
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise ScalingError(f"cannot read {path} ({exc.strerror})",
                               hint="check the path of the CSV") from None
    except UnicodeDecodeError:
        raise ScalingError(f"{path} is not UTF-8 text", hint="save the CSV as UTF-8") from None
    columns = {key: _find_column(header, key) for key in COLUMN_ALIASES}
    missing = [key for key in ("n_params", "loss") if columns[key] is None]
    if columns["tokens"] is None and columns["flops"] is None:
        missing.append("tokens or flops")
    if missing:
        wanted = "; ".join(
            f"{m}: one of {', '.join(COLUMN_ALIASES[m])}" if m in COLUMN_ALIASES
            else "tokens or flops: one of " + ", ".join(COLUMN_ALIASES["tokens"] + COLUMN_ALIASES["flops"])
            for m in missing)
        raise ScalingError(f"{path} lacks a column for {', '.join(missing)} "
                               f"(has: {', '.join(header) or 'no header'})",
                               hint=f"name the columns ({wanted})")

    def column(key: str) -> np.ndarray | None:
        name = columns[key]
        return None if name is None else np.array([_float_cell(r.get(name)) for r in rows])

    run_id = None
    if columns["run_id"] is not None:
        run_id = [str(r.get(columns["run_id"]) or f"row{i}") for i, r in enumerate(rows)]
    seed = column("seed")
    step = column("step")
    return Observations.from_arrays(
        n_params=column("n_params"), loss=column("loss"), tokens=column("tokens"),
        flops=column("flops"), run_id=run_id,
        seed=None if seed is None else np.nan_to_num(seed, nan=-1).astype(np.int64),
        step=None if step is None else np.nan_to_num(step, nan=-1).astype(np.int64),
        source=str(path),
    )


# --------------------------------------------------------------------------------- run dirs
def is_run_dir(path: Path) -> bool:
    return (path / SUMMARY_NAME).is_file()


def read_run_dir(path: str | Path, run_id: str | None = None) -> Observations:
    """Every eval with tokens > 0, else the summary's final point."""
    path = Path(path)
    summary_path = path / SUMMARY_NAME
    summary = read_summary(path)
    if summary is None:
        raise ScalingError(f"{path} is not a run directory (no {SUMMARY_NAME})",
                           hint="pass finished runs of 'chinchax train', their parent, or a CSV")
    if "n_params" not in summary:
        raise ScalingError(f"{summary_path} has no n_params",
                               hint="rewrite the summary with 'chinchax train' of this version")
    name = run_id or path.name  # the directory names the run (the bootstrap's unit)
    evals = [e for e in _eval_records(path) if e["tokens"] != 0]
    if not evals:
        evals = [{"step": summary.get("steps"), "tokens": summary.get("tokens"),
                  "flops": summary.get("flops"), "eval_loss": summary.get("final_eval_loss")}]

    def values(key: str) -> np.ndarray:
        return np.array([math.nan if e.get(key) is None else float(e[key]) for e in evals])

    tokens, flops = values("tokens"), values("flops")
    n = float(summary["n_params"])
    tokens = np.where(np.isnan(tokens), flops / (6.0 * n), tokens)
    flops = np.where(np.isnan(flops), 6.0 * n * tokens, flops)
    seed = summary.get("seed")
    return Observations.from_arrays(
        n_params=np.full(len(evals), n), loss=values("eval_loss"), tokens=tokens, flops=flops,
        run_id=[name] * len(evals), seed=[-1 if seed is None else int(seed)] * len(evals),
        step=[-1 if e.get("step") is None else int(e["step"]) for e in evals], source=str(path),
    )


def _eval_records(run_dir: Path) -> Iterable[dict[str, Any]]:
    for record in read_records(run_dir, "eval", strict=True):
        yield {key: None if record.get(key) is None else float(record[key])
               for key in ("step", "tokens", "flops", "eval_loss")}


def find_run_dirs(path: str | Path) -> list[Path]:
    path = Path(path)
    if is_run_dir(path):
        return [path]
    if not path.is_dir():
        raise ScalingError(f"{path} does not exist", hint="pass run directories, their parent, or CSV files")
    runs = sorted(child for child in path.iterdir() if child.is_dir() and is_run_dir(child))
    if not runs:
        raise ScalingError(f"{path} holds no run directories (none has {SUMMARY_NAME})",
                               hint="pass finished runs of 'chinchax train', their parent, or a CSV")
    return runs


def load_observations(inputs: Sequence[str | Path], drop_early: float = 0.1,
                      drop_before_step: int = 0) -> Observations:
    """CSV files, run directories and their parents as one set; a repeated run id gets its
    parent as prefix so runs stay distinct."""
    if not inputs:
        raise ScalingError("no inputs given", hint="pass CSV files or run directories")
    parts: list[Observations] = []
    seen: set[str] = set()

    def add(obs: Observations) -> None:
        parts.append(obs)
        seen.update(obs.runs)

    for item in inputs:
        path = Path(item)
        if path.is_file() or path.suffix.lower() == ".csv":
            if not path.is_file():
                raise ScalingError(f"{path} does not exist", hint="check the path of the CSV")
            obs = read_csv(path)
            add(_prefixed(obs, path.stem) if seen.intersection(obs.runs) else obs)
        else:
            for run in find_run_dirs(path):
                obs = read_run_dir(run)
                add(read_run_dir(run, run_id=f"{run.parent.name}/{run.name}")
                    if obs.runs[0] in seen else obs)
    return Observations.concat(parts).drop_early(drop_early).drop_before_step(drop_before_step)


def _prefixed(obs: Observations, prefix: str) -> Observations:
    run_id = np.array([f"{prefix}/{r}" for r in obs.run_id], dtype=object)
    return Observations(obs.n_params, obs.tokens, obs.flops, obs.loss, run_id, obs.seed, obs.step)
