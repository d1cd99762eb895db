"""Any TFDS dataset with a text feature, via ``tfds.data_source`` (ArrayRecord, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from chinchax.errors import DataError


def _feature(record: object, feature: str) -> object:
    """``record[feature]``; ``a/b`` reaches into nested features."""
    value = record
    for key in feature.split("/"):
        if not isinstance(value, dict) or key not in value:
            available = sorted(value) if isinstance(value, dict) else []
            raise DataError(
                f"the dataset has no text feature {feature!r} (features: {', '.join(available)})",
                hint="set data.text_feature to one of the features listed",
            )
        value = value[key]
    return value


def as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return as_bytes(value.item())
    raise DataError(f"the text feature holds {type(value).__name__}, not text",
                    hint="set data.text_feature to a Text feature of the dataset")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _open(name: str, split: str, data_dir: Optional[str], download: bool) -> Any:
    import tensorflow_datasets as tfds  # noqa: PLC0415 -- heavy; only the tfds/text paths pay

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except tfds.core.registered.DatasetNotFoundError as exc:
        raise DataError(f"unknown TFDS dataset {name!r}",
                        hint="check the name against tfds.list_builders() (or `tfds build --help`); "
                        "for local files use data.source=text") from exc
    except Exception as exc:  # tfds raises many kinds for unprepared data, bad splits, offline
        if "TFRECORD" in str(exc).upper():
            raise DataError(
                f"TFDS dataset {name!r} is prepared as TFRecord, which chinchax reads only as ArrayRecord",
                hint=f"prepare it as ArrayRecord: tfds build {name.split('/')[0]} --file_format=array_record"
                + (f" --data_dir={data_dir}" if data_dir else ""),
            ) from exc
        raise DataError(
            f"cannot open TFDS dataset {name!r} split {split!r}: {first_line(exc)}",
            hint="prepare it first (`tfds build NAME --file_format=array_record`), point "
            "data.tfds_data_dir at it, and check data.tfds_split",
        ) from exc


def tfds_documents(name: str, *, split: str, data_dir: Optional[str], feature: str, download: bool,
                   max_documents: int = 0) -> Iterator[bytes]:
    source = _open(name, split, data_dir, download)
    total = len(source) if not max_documents else min(len(source), max_documents)
    chunk = 1024
    for start in range(0, total, chunk):
        for record in source.__getitems__(range(start, min(start + chunk, total))):
            yield as_bytes(_feature(record, feature))


def documents(cfg: Any, cache_dir: Path) -> Iterator[bytes]:
    return tfds_documents(str(cfg.tfds_name), split=cfg.tfds_split, data_dir=cfg.tfds_data_dir,
                          feature=cfg.text_feature, download=cfg.tfds_download,
                          max_documents=cfg.max_documents)


def cache_parts(cfg: Any) -> Tuple[str, Dict[str, object]]:
    safe = "".join(c if c.isalnum() else "_" for c in str(cfg.tfds_name))[:40]
    return f"tfds-{safe}", {"tfds": [cfg.tfds_name, cfg.tfds_split, cfg.tfds_data_dir, cfg.text_feature]}


def description(cfg: Any) -> str:
    return f"TFDS {cfg.tfds_name}[{cfg.tfds_split}]"
