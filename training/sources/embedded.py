"""The default corpus: a deterministic few-MB subset of the Python standard library's own
``.py`` files, present wherever Python is, so the default run needs no download."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from chinchax.errors import DataError

EMBEDDED_MAX_BYTES = 4_000_000
EMBEDDED_MAX_FILE_BYTES = 400_000  # one huge generated file would dominate the corpus
# Not representative source code: tests, bundled packages, codec tables, generated docs, demos.
EMBEDDED_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3",
    "turtledemo", "pydoc_data", "encodings", "ensurepip", "__pycache__", "__phello__",
})


def stdlib_root() -> Path:
    """Where this interpreter's standard library sources live."""
    return Path(sysconfig.get_paths()["stdlib"])


def _candidates(root: Path) -> List[Tuple[str, str, int]]:
    found: List[Tuple[str, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in EMBEDDED_EXCLUDED_DIRS and not d.startswith(("config-", "."))
        )
        for name in filenames:
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            size = path.stat().st_size
            if 0 < size <= EMBEDDED_MAX_FILE_BYTES:
                found.append((hashlib.sha256(relative.encode("utf-8")).hexdigest(), relative, size))
    return found


def embedded_files(root: Optional[Path] = None) -> List[Tuple[str, int]]:
    """The corpus's files as ``(relative path, size)``, sorted by path.  Chosen in the order
    of a hash of each path, so the subset samples the whole library evenly."""
    root = stdlib_root() if root is None else root
    chosen: List[Tuple[str, int]] = []
    total = 0
    for _, relative, size in sorted(_candidates(root)):
        if total + size > EMBEDDED_MAX_BYTES:
            continue
        chosen.append((relative, size))
        total += size
    if not chosen:
        raise DataError(
            f"no Python source files found under {str(root)!r} for the embedded corpus",
            hint="this Python ships without its .py sources; use data.source=synthetic or text",
        )
    return sorted(chosen)


def documents(cfg: Any, cache_dir: Path) -> Iterator[bytes]:
    root = stdlib_root()
    for relative, _ in embedded_files(root):
        yield (root / relative).read_bytes()


def cache_parts(cfg: Any) -> Tuple[str, Dict[str, object]]:
    root = stdlib_root()
    files = [(relative, size, os.stat(root / relative).st_mtime_ns) for relative, size in embedded_files(root)]
    return "embedded", {"python": f"{sys.implementation.name}-{platform.python_version()}", "files": files}


def description(cfg: Any) -> str:
    return f"Python {platform.python_version()} standard library sources"
