"""Local text files or a glob, built into an ArrayRecord TFDS dataset by
:mod:`training.text_builder` and read back like any TFDS dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

from chinchax.errors import DataError
from training.sources.tfds_source import tfds_documents


def documents(cfg: Any, cache_dir: Path) -> Iterator[bytes]:
    from training import text_builder  # noqa: PLC0415 -- imports tensorflow_datasets

    files = text_builder.resolve_text_files(cfg.path, cfg.glob)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"the text source's {len(files)} file(s) are all empty",
                        hint="point data.path / data.glob at files with text in them")
    data_dir = str(cache_dir / "tfds")
    name = text_builder.build_text_dataset(files, data_dir, cfg.document_separator)
    return tfds_documents(name, split=text_builder.SPLIT, data_dir=data_dir, feature="text", download=False)


def cache_parts(cfg: Any) -> Tuple[str, Dict[str, object]]:
    from training import text_builder  # noqa: PLC0415

    files = text_builder.resolve_text_files(cfg.path, cfg.glob)
    return "text", {"text": text_builder.config_name(files, cfg.document_separator)}


def description(cfg: Any) -> str:
    return f"local text {cfg.path or cfg.glob}"
