"""The run directory, the contract between training and scaling (DESIGN.md): its file names and
the one reader and writer of each.  No JAX, so fits and ladders read runs anywhere.

A rerun is compared with ``config.started.yaml``, the config that started the run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import yaml
from etils import epath

from chinchax.errors import ScalingError
from models.config import ModelConfig
from scaling.flops import (count_params, count_params_non_embedding, executed_flops_per_token,
                           train_flops_per_token)

CONFIG_NAME = "config.yaml"
STARTED_CONFIG_NAME = "config.started.yaml"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
PREDICTION_NAME = "prediction.json"
CHECKPOINTS_DIR = "checkpoints"
LOCK_NAME = ".lock"


class RunDirError(ScalingError):
    """A run directory that cannot be read, written or locked."""


# -- plain values and atomic files ------------------------------------------------------------


def plain(value: Any) -> Any:
    """JSON-ready copy: numpy/JAX values to Python, dataclasses to dicts, non-finite floats to None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy / jax arrays
        value = np.asarray(value).tolist()
        return plain(value) if isinstance(value, list) else _plain_scalar(value)
    return _plain_scalar(value)


def _plain_scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, indent: Optional[int] = None) -> str:
    """Strict JSON (never NaN or Infinity) of anything :func:`plain` understands."""
    return json.dumps(plain(value), indent=indent, allow_nan=False)


def is_remote(path: epath.PathLike) -> bool:
    return "://" in os.fspath(path)


def write_text(path: epath.PathLike, text: str) -> None:
    """Readers see the old file or the new one, never half (object stores replace whole objects)."""
    path = epath.Path(path)
    try:
        if is_remote(path):
            path.write_text(text)
            return
        temp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        temp.write_text(text)
        os.replace(os.fspath(temp), os.fspath(path))
    except OSError as error:
        raise RunDirError(f"cannot write {path}: {error.strerror or error}",
                          hint="check free space and write access to the run directory") from None


def write_json(path: epath.PathLike, value: Any) -> None:
    write_text(path, dumps(value, indent=2) + "\n")


def read_text(path: epath.Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is not UTF-8 text", hint="the file is damaged: restore or "
                          "delete it (a rerun of the run writes it again)") from None
    except OSError as error:
        raise RunDirError(f"cannot read {path}: {error.strerror or error}",
                          hint="check the path and read access to the run directory") from None


def read_json(path: epath.PathLike, default: Any = None) -> Any:
    path = epath.Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})",
                          hint="the run may still be writing it, or it is damaged: rerun the "
                          "run to write it again") from None


def read_records(path: epath.PathLike, kind: Optional[str] = None, *, strict: bool = False) -> list[dict]:
    """Records of a JSON-lines file (a run dir means its metrics.jsonl); a torn last line from a
    crash is skipped, other bad lines too unless ``strict``."""
    path = epath.Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.exists():
        return []
    lines = read_text(path).splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if strict and number < len(lines):
                raise RunDirError(f"{path}:{number} is not valid JSON",
                                  hint="repair or delete that line") from None
            continue
        if isinstance(record, dict) and (kind is None or record.get("kind") == kind):
            records.append(record)
    return records


def keep_records_through(lines: list[str], step: int) -> list[str]:
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get("step", -1)) <= step:
            kept.append(line.rstrip("\n") + "\n")
    return kept


def read_yaml(path: epath.PathLike) -> Optional[dict]:
    path = epath.Path(path)
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError:
        raise RunDirError(f"{path} is not valid YAML", hint="restore it, or start a new run "
                          "directory") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds no mapping", hint="restore it, or start a new run directory")
    return data


def read_config(run_dir: epath.PathLike) -> dict[str, Any]:
    """{} for old runs without ``config.yaml``."""
    return read_yaml(epath.Path(run_dir) / CONFIG_NAME) or {}


# -- the plan and the summary -----------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """What a run will cost, counted once before it starts; the trainer never recounts."""

    n_params: int
    n_params_non_embedding: int
    flops_per_token: float  # Chinchilla accounting (what fits use)
    executed_flops_per_token: float  # full T×T attention
    executed_flops_per_token_causal: float  # causal: half the square (MaxText-comparable MFU)
    allocation: Optional[dict[str, Any]] = None


def plan_for(model: ModelConfig, seq_len: int, allocation: Optional[Mapping[str, Any]] = None) -> RunPlan:
    return RunPlan(
        n_params=count_params(model), n_params_non_embedding=count_params_non_embedding(model),
        flops_per_token=train_flops_per_token(model, seq_len),
        executed_flops_per_token=executed_flops_per_token(model, seq_len),
        executed_flops_per_token_causal=executed_flops_per_token(model, seq_len, causal=True),
        allocation=None if allocation is None else dict(allocation))


def plan_from_dict(data: Optional[Mapping[str, Any]], model: ModelConfig, seq_len: int) -> RunPlan:
    """A stored ``plan:`` read back; an older config's bare allocator dict becomes ``allocation``."""
    if not isinstance(data, Mapping):
        return plan_for(model, seq_len)
    if "executed_flops_per_token_causal" in data:
        return plan_for(model, seq_len, data.get("allocation"))
    return plan_for(model, seq_len, data)


@dataclass
class RunSummary:
    """``summary.json`` of a finished or stopped run."""

    run_name: str
    status: str
    n_params: int
    n_params_non_embedding: int
    seed: int
    steps: int
    target_steps: int
    seq_len: int
    global_batch: int
    tokens: int
    flops: float
    flops_per_token: float
    final_train_loss: Optional[float] = None
    final_eval_loss: Optional[float] = None
    final_eval_bpb: Optional[float] = None  # bits per byte: compares across tokenizers
    eval_losses: dict[str, float] = field(default_factory=dict)  # per source, when several
    tokens_per_s: float = 0.0
    achieved_flops_per_s: float = 0.0
    mfu: Optional[float] = None  # causal attention: comparable with MaxText
    mfu_causal: Optional[float] = None  # same value, kept for older readers
    mfu_full_square: Optional[float] = None
    executed_flops_per_token: float = 0.0
    device_kind: str = ""
    n_devices: int = 1
    compile_time_s: float = 0.0
    wall_time_s: float = 0.0
    nonfinite_skipped: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    plan: Optional[dict[str, Any]] = None
    prediction: Optional[dict[str, Any]] = None
    init: Optional[dict[str, Any]] = None
    data: Optional[dict[str, Any]] = None  # tokenizer and data fingerprints (the law identity's)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        per_source = out.pop("eval_losses")
        ordered: dict[str, Any] = {}
        for key, value in out.items():
            ordered[key] = value
            if key == "final_eval_loss":
                ordered.update({f"final_eval_loss/{k}": v for k, v in per_source.items()})
        return plain(ordered)


def write_summary(run_dir: epath.PathLike, summary: RunSummary | Mapping[str, Any]) -> None:
    data = summary.to_dict() if isinstance(summary, RunSummary) else summary
    write_json(epath.Path(run_dir) / SUMMARY_NAME, data)


def read_summary(run_dir: epath.PathLike) -> Optional[dict[str, Any]]:
    path = epath.Path(run_dir) / SUMMARY_NAME
    data = read_json(path)
    if data is not None and not isinstance(data, dict):
        raise RunDirError(f"{path} holds a JSON {type(data).__name__}, not an object",
                          hint="rerun the run to write its summary again")
    return data


# -- one writer per run -----------------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock`` that the OS drops on a crash.

    Host-local: a ``gs://`` run locks a temp file named after the URL, so two hosts are not kept apart.
    """

    def __init__(self, run_dir: epath.PathLike) -> None:
        self.run_dir = epath.Path(run_dir)
        self._file: Any = None

    def _path(self) -> str:
        if is_remote(self.run_dir):
            import hashlib
            import tempfile

            digest = hashlib.sha1(os.fspath(self.run_dir).encode()).hexdigest()[:16]
            return os.path.join(tempfile.gettempdir(), f"chinchax-{digest}.lock")
        return os.fspath(self.run_dir / LOCK_NAME)

    def acquire(self) -> "RunLock":
        import fcntl

        path = self._path()
        try:
            handle = open(path, "a+")
        except OSError as error:
            raise RunDirError(f"cannot lock run directory {self.run_dir}: {error.strerror or error}",
                              hint="check that the run directory is writable, or choose another "
                              "run directory") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(f"run directory {self.run_dir} is in use by {holder}",
                              hint="wait for that trainer to finish, stop it, or choose another "
                              "run directory") from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def make_run_dir(run_dir: epath.PathLike) -> epath.Path:
    path = epath.Path(run_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create run directory {path}: {error.strerror or error}",
                          hint="check write access, or choose another run directory") from None
    return path


# -- same run or nothing ----------------------------------------------------------------------

# Keys a rerun may change: they do not alter what is trained or in which order (``init`` applies
# only at a fresh start: a resume takes its parameters from its own checkpoint).
HARMLESS_KEYS = ("name", "run_dir", "plan", "mesh", "checkpoint", "prediction", "init", "runtime", "logging",
                 "train.log_every", "train.eval_every", "train.eval_batches",
                 "train.stop_after_steps", "train.max_nonfinite_in_row")


def _flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], data


def _harmless(key: str) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS_KEYS)


def config_differences(started: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys that differ, harmless keys left out."""
    old, new = dict(_flatten(plain(started))), dict(_flatten(plain(current)))
    return sorted(k for k in set(old) | set(new) if not _harmless(k) and old.get(k) != new.get(k))
