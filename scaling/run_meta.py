"""A run's resolved config and summary, as a fit reads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from chinchax.errors import ScalingError

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` ({} when the run has none, as old runs may)."""
    return _read(Path(run_dir) / CONFIG_FILE, yaml.safe_load, "restore the run's config.yaml "
                 "or leave the run out")


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return _read(Path(run_dir) / SUMMARY_FILE, json.loads, "the run may still be writing it; "
                 "rerun when it has finished")


def _read(path: Path, parse: Callable[[str], Any], hint: str) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise ScalingError(f"{path} cannot be read ({type(exc).__name__})", hint=hint) from None
    return data if isinstance(data, dict) else {}
