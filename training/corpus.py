"""A source's documents tokenized once into one flat ``.npy`` array, each ending in the
end-of-document id; the cache key digests all the tokens depend on, so changed input rebuilds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import numpy as np

from chinchax.errors import DataError
from training.data_config import DataConfig, SourceConfig
from training.sources import embedded, hf, prose, synthetic, text, tfds_source
from training.tokenizer import Tokenizer, load_tokenizer

CACHE_FORMAT = 2  # bump when the cached layout or a source's document list changes
SOURCE_MODULES: Dict[str, ModuleType] = {
    "embedded": embedded, "prose": prose, "synthetic": synthetic, "text": text, "tfds": tfds_source, "hf": hf,
}


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """Document ``i`` (separator included) is ``tokens[offsets[i]:offsets[i + 1]]``; ``tokens`` is
    memory-mapped, so a large corpus costs disk, not RAM."""

    tokens: np.ndarray  # [num_tokens], uint16 when the vocabulary fits, else int32
    offsets: np.ndarray  # [num_documents + 1], int64
    vocab_size: int
    eod_id: int
    fingerprint: str  # digest of the token content: the identity of the data
    description: str
    unigram_entropy_nats: float
    build_seconds: float
    document_bytes: np.ndarray  # [num_documents], int64: each document's text bytes (for bits per byte)

    @property
    def num_documents(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


def resolve_cache_dir(cache_dir: Optional[str]) -> Path:
    """``cache_dir``, or ``$XDG_CACHE_HOME/chinchax`` (``~/.cache/chinchax``)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "chinchax"


def unigram_entropy_nats(tokens: np.ndarray, vocab_size: int) -> float:
    """The loss of the best context-free predictor."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def _tokenize(cfg: SourceConfig, tokenizer: Tokenizer, cache_dir: Path) -> Tuple[np.ndarray, ...]:
    pieces: List[np.ndarray] = []
    lengths: List[int] = []
    text_bytes: List[int] = []
    eod = np.array([tokenizer.eod_id], dtype=np.int32)
    for document in SOURCE_MODULES[cfg.source].documents(cfg, cache_dir):
        if cfg.max_documents and len(lengths) >= cfg.max_documents:
            break
        ids = tokenizer.encode(document)
        if ids.size == 0:
            continue  # an empty document would add nothing but a separator
        pieces.extend((ids, eod))
        lengths.append(int(ids.size) + 1)
        text_bytes.append(len(document))
    if not lengths:
        raise DataError(f"the {cfg.source} corpus is empty (no non-empty documents)",
                        hint="point the data source at documents with text in them")
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    tokens = np.concatenate(pieces).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return tokens, offsets, np.asarray(text_bytes, dtype=np.int64)


def _write_entry(entry: Path, arrays: Dict[str, np.ndarray], meta: dict) -> None:
    """Atomic: a half-written entry never exists, a lost race is harmless."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array)
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(staging, entry)
        except OSError:
            if not (entry / "meta.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _build(cfg: SourceConfig, tokenizer: Tokenizer, cache_dir: Path, entry: Path) -> None:
    started = time.perf_counter()
    tokens, offsets, document_bytes = _tokenize(cfg, tokenizer, cache_dir)
    digest = hashlib.sha256(np.ascontiguousarray(tokens))
    digest.update(np.ascontiguousarray(offsets))
    meta = {
        "format": CACHE_FORMAT,
        "description": SOURCE_MODULES[cfg.source].description(cfg),
        "documents": int(offsets.shape[0] - 1),
        "tokens": int(tokens.shape[0]),
        "vocab_size": tokenizer.vocab_size,
        "eod_id": tokenizer.eod_id,
        "fingerprint": digest.hexdigest()[:16],
        "unigram_entropy_nats": unigram_entropy_nats(tokens, tokenizer.vocab_size),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    _write_entry(entry, {"tokens": tokens, "offsets": offsets, "document_bytes": document_bytes}, meta)


def _entry(cfg: SourceConfig, tokenizer: Tokenizer, cache_dir: Path) -> Path:
    prefix, parts = SOURCE_MODULES[cfg.source].cache_parts(cfg)
    parts = {**parts, "format": CACHE_FORMAT, "tokenizer": tokenizer.fingerprint,
             "max_documents": cfg.max_documents}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return cache_dir / "corpus" / f"{prefix}-{digest}"


_LOADED: Dict[str, TokenizedCorpus] = {}


def load_corpus(cfg: DataConfig) -> TokenizedCorpus:
    tokenizer = load_tokenizer(cfg.tokenizer)
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    entry = _entry(cfg, tokenizer, cache_dir)
    if str(entry) in _LOADED:
        return _LOADED[str(entry)]
    if not (entry / "meta.json").is_file():
        _build(cfg, tokenizer, cache_dir, entry)
    meta = json.loads((entry / "meta.json").read_text())
    corpus = TokenizedCorpus(
        tokens=np.load(entry / "tokens.npy", mmap_mode="r"),
        offsets=np.load(entry / "offsets.npy"),
        vocab_size=int(meta["vocab_size"]),
        eod_id=int(meta["eod_id"]),
        fingerprint=str(meta["fingerprint"]),
        description=str(meta["description"]),
        unigram_entropy_nats=float(meta["unigram_entropy_nats"]),
        build_seconds=float(meta["build_seconds"]),
        document_bytes=np.load(entry / "document_bytes.npy"),
    )
    _LOADED[str(entry)] = corpus
    return corpus
