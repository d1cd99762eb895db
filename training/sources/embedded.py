"""The default corpus: a few MB of CPython 3.11.7 ``Lib/*.py`` shipped in the package, so the
default run needs no download and sees the same bytes under every Python."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import sysconfig
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

from chinchax.errors import DataError

ARCHIVE = Path(__file__).with_name("embedded_corpus.tar.gz")
EMBEDDED_PYTHON = "3.11.7"  # whose standard library the packaged files come from
EMBEDDED_SHA256 = "848dabead52e5abdeb3320e5f6eaaf35a68112491b0fa2ac1560f073534a5cf4"
EMBEDDED_MAX_BYTES = 4_000_000
EMBEDDED_MAX_FILE_BYTES = 400_000  # one huge generated file would dominate the corpus
# Not representative source code: tests, bundled packages, codec tables, generated docs, demos.
EMBEDDED_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3",
    "turtledemo", "pydoc_data", "encodings", "ensurepip", "__pycache__", "__phello__",
})
_FILES = "files/"  # archive members holding documents; LICENSE.txt sits beside them


def stdlib_root() -> Path:
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


def select_stdlib_files(root: Path) -> List[Tuple[str, int]]:
    """Taken in path-hash order, an even sample of the library."""
    chosen: List[Tuple[str, int]] = []
    total = 0
    for _, relative, size in sorted(_candidates(root)):
        if total + size <= EMBEDDED_MAX_BYTES:
            chosen.append((relative, size))
            total += size
    return sorted(chosen)


def write_archive(root: Path, out: Path) -> str:
    """Reproducible (fixed times and owners); returns its digest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in [("LICENSE.txt", root / "LICENSE.txt")] + [
            (_FILES + relative, root / relative) for relative, _ in select_stdlib_files(root)
        ]:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    out.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0))
    return _digest(_read_archive(out))


def _read_archive(path: Path) -> List[Tuple[str, bytes]]:
    if not path.is_file():
        raise DataError(f"the packaged embedded corpus {str(path)!r} is missing",
                        hint="reinstall chinchax (the archive ships inside the package)")
    with tarfile.open(path, mode="r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.name.startswith(_FILES)), key=lambda m: m.name)
        return [(m.name[len(_FILES):], tar.extractfile(m).read()) for m in members]


def _digest(documents: List[Tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in documents:
        digest.update(f"{name}\0{len(data)}\0".encode("utf-8") + data)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _documents() -> Tuple[Tuple[str, bytes], ...]:
    documents = _read_archive(ARCHIVE)
    found = _digest(documents)
    if found != EMBEDDED_SHA256:
        raise DataError(f"the packaged embedded corpus has digest {found[:16]}, not {EMBEDDED_SHA256[:16]}",
                        hint="reinstall chinchax; the archive is damaged or was changed")
    return tuple(documents)


def embedded_fingerprint() -> str:
    """The checked digest of the embedded corpus's bytes: the same under every Python."""
    _documents()
    return EMBEDDED_SHA256


def embedded_files() -> List[Tuple[str, int]]:
    return [(name, len(data)) for name, data in _documents()]


def documents(cfg: Any, cache_dir: Path) -> Iterator[bytes]:
    for _, data in _documents():
        yield data


def cache_parts(cfg: Any) -> Tuple[str, Dict[str, object]]:
    return "embedded", {"embedded": EMBEDDED_SHA256}


def description(cfg: Any) -> str:
    return f"Python {EMBEDDED_PYTHON} standard library sources (packaged)"


if __name__ == "__main__":  # python -m training.sources.embedded LIB_DIR: rebuild the archive
    print(write_archive(Path(sys.argv[1]) if len(sys.argv) > 1 else stdlib_root(), ARCHIVE))
