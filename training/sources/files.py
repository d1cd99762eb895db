"""Local files as documents: plain text (whole file or split at a separator), JSON Lines
and Parquet (one row a document, the text in a named column)."""

from __future__ import annotations

import glob as globlib
import json
import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

from chinchax.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


def resolve_text_files(path: Optional[str] = None, pattern: Optional[str] = None) -> Tuple[str, ...]:
    """Sorted absolute paths from a file, a directory (non-hidden files below it) and/or a glob."""
    found: set[str] = set()
    if path:
        root = Path(path).expanduser()
        if root.is_file():
            found.add(str(root.resolve()))
        elif root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found.update(str((Path(dirpath) / f).resolve()) for f in filenames if not f.startswith("."))
        else:
            raise DataError(f"text path {str(root)!r} does not exist",
                            hint="set data.path to an existing file or directory, or use data.glob")
    if pattern:
        matches = [m for m in globlib.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m)]
        if not matches:
            raise DataError(f"text glob {pattern!r} matches no files",
                            hint="check the pattern (quote it in the shell; use ** to recurse)")
        found.update(str(Path(m).resolve()) for m in matches)
    if not found:
        raise DataError("the text source has no files",
                        hint="set data.path (a file or directory) or data.glob to some text files")
    return tuple(sorted(found))


def _text(value: object, column: str, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise DataError(f"{where}: column {column!r} holds {type(value).__name__}, not text",
                    hint="name the text column (chinchax tokenize --column, or data.text_feature)")


def _jsonl_documents(path: str, column: str) -> Iterator[bytes]:
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or column not in row:
                keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{path}:{number} has no column {column!r} (it has: {keys})",
                                hint="name the text column (chinchax tokenize --column, or data.text_feature)")
            yield _text(row[column], column, f"{path}:{number}")


def _parquet_documents(path: str, column: str) -> Iterator[bytes]:
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 -- optional, for Parquet only
    except ImportError as exc:
        raise DataError("reading Parquet needs pyarrow", hint="pip install 'chinchax[hf]'") from exc
    table = pq.ParquetFile(path)
    if column not in table.schema_arrow.names:
        raise DataError(f"{path} has no column {column!r} (it has: {', '.join(table.schema_arrow.names)})",
                        hint="name the text column (chinchax tokenize --column, or data.text_feature)")
    for batch in table.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield _text(value, column, path)


def file_documents(path: str, *, column: str = "text", separator: str = "") -> Iterator[bytes]:
    """By suffix; plain text keeps its raw bytes."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _jsonl_documents(path, column)
    elif suffix in PARQUET_SUFFIXES:
        yield from _parquet_documents(path, column)
    else:
        data = Path(path).read_bytes()
        for piece in data.split(separator.encode("utf-8")) if separator else [data]:
            if piece.strip():
                yield piece


def files_documents(files: Sequence[str], *, column: str = "text", separator: str = "") -> Iterator[bytes]:
    for path in files:
        yield from file_documents(path, column=column, separator=separator)
