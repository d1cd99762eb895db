"""Hugging Face ``datasets``: a ``save_to_disk`` folder, local JSON Lines or Parquet, or the Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from chinchax.errors import DataError
from training.sources.files import PARQUET_SUFFIXES, resolve_text_files
from training.sources.tfds_source import as_bytes, first_line


def _datasets() -> Any:
    try:
        import datasets  # noqa: PLC0415 -- optional dependency, only for this path
    except ImportError as exc:
        raise DataError("data.source=hf needs the datasets package", hint="pip install 'chinchax[hf]'") from exc
    return datasets


def _pick_split(dataset: Any, split: str) -> Any:
    if hasattr(dataset, "keys"):  # a DatasetDict
        if split not in dataset:
            raise DataError(f"the dataset has no split {split!r} (it has: {', '.join(dataset)})",
                            hint="set data.hf_split (chinchax tokenize --split) to one of those")
        return dataset[split]
    return dataset


def is_saved_dataset(path: str) -> bool:
    return any((Path(path) / name).is_file() for name in ("state.json", "dataset_dict.json"))


def load_hf_dataset(name: Optional[str], *, path: Optional[str] = None, glob: Optional[str] = None,
                    config: Optional[str] = None, split: str = "train", cache_dir: Optional[str] = None) -> Any:
    datasets = _datasets()
    try:
        if path and not glob and is_saved_dataset(path):
            return _pick_split(datasets.load_from_disk(path), split)
        if path or glob:
            files = list(resolve_text_files(path, glob))
            kind = "parquet" if all(f.endswith(PARQUET_SUFFIXES) for f in files) else "json"
            return datasets.load_dataset(kind, data_files=files, split=split, cache_dir=cache_dir)
        return datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many kinds: missing, offline, bad split
        raise DataError(f"cannot open Hugging Face dataset {name or path!r}: {first_line(exc)}",
                        hint="check data.hf_name / data.path and data.hf_split; offline, save the dataset "
                        "with save_to_disk and point data.path at the folder") from exc


def hf_documents(dataset: Any, column: str, max_documents: int = 0) -> Iterator[bytes]:
    if column not in dataset.column_names:
        raise DataError(f"the dataset has no column {column!r} (it has: {', '.join(dataset.column_names)})",
                        hint="set data.text_feature (chinchax tokenize --column) to the text column")
    total = len(dataset) if not max_documents else min(len(dataset), max_documents)
    for start in range(0, total, 1024):
        for value in dataset[start : min(start + 1024, total)][column]:
            if value:
                yield as_bytes(value)


def documents(cfg: Any, cache_dir: Path) -> Iterator[bytes]:
    dataset = load_hf_dataset(cfg.hf_name, path=cfg.path, glob=cfg.glob, config=cfg.hf_config,
                              split=cfg.hf_split, cache_dir=str(cache_dir / "huggingface"))
    return hf_documents(dataset, cfg.text_feature, cfg.max_documents)


def cache_parts(cfg: Any) -> Tuple[str, Dict[str, object]]:
    """A Hub dataset is keyed by name only: delete its cache entry to pick up a new revision."""
    files = []
    if cfg.path or cfg.glob:
        for name in resolve_text_files(cfg.path, cfg.glob):
            stat = os.stat(name)
            files.append([name, stat.st_size, stat.st_mtime_ns])
    safe = "".join(c if c.isalnum() else "_" for c in str(cfg.hf_name or Path(str(cfg.path)).name))[:40]
    return f"hf-{safe}", {"hf": [cfg.hf_name, cfg.hf_config, cfg.hf_split, cfg.text_feature, files]}


def description(cfg: Any) -> str:
    return f"Hugging Face dataset {cfg.hf_name or cfg.path or cfg.glob}[{cfg.hf_split}]"
