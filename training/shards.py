"""Pre-tokenized ArrayRecord shards from ``chinchax tokenize``: each split's token stream cut into
records of :data:`RECORD_TOKENS`, plus ``manifest.json``.  Read by random access, so no host loads
the corpus and each reads only its own rows."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping

import numpy as np
from etils import epath

from chinchax.errors import DataError
from training.tokenizer import load_tokenizer

SHARD_FORMAT = 1
MANIFEST = "manifest.json"
JOB = "job.json"
COUNTS = "token_counts.npy"
RECORD_TOKENS = 8192
SPLITS = ("train", "validation")
WRITER_OPTIONS = "group_size:1,uncompressed"  # one record a group: a random read decodes one record


def shard_file(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def done_file(index: int) -> str:
    return f"shard-{index:05d}.json"


def fingerprint(shards: Mapping[str, List[Mapping[str, Any]]]) -> str:
    """The data identity."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for shard in shards[split]:
            digest.update(f"{split}:{shard['sha256']}\n".encode())
    return digest.hexdigest()[:16]


_MANIFESTS: Dict[str, Dict[str, Any]] = {}


def read_manifest(folder: str) -> Dict[str, Any]:
    """Cached per process."""
    path = epath.Path(folder) / MANIFEST
    if str(path) not in _MANIFESTS:
        if not path.exists():
            raise DataError(f"{folder!r} holds no {MANIFEST} (not a finished shards folder)",
                            hint=f"run `chinchax tokenize INPUTS --out {folder}` to the end (it writes the "
                            "manifest once every shard is done), or fix data.path")
        _MANIFESTS[str(path)] = json.loads(path.read_text())
    return _MANIFESTS[str(path)]


def check_tokenizer(manifest: Mapping[str, Any], spec: str, folder: str) -> None:
    """Shards hold ids of one tokenizer; training must name the same one."""
    saved = manifest["tokenizer"]
    if load_tokenizer(spec).fingerprint != saved["fingerprint"]:
        raise DataError(f"the shards in {folder!r} were tokenized with {saved['spec']!r} "
                        f"({saved['fingerprint']}), not with data.tokenizer={spec!r}",
                        hint=f"set data.tokenizer={saved['spec']} (or re-tokenize with this tokenizer)")


class ShardSequences:
    """Packed like :class:`training.packing.PackedSequences`."""

    def __init__(self, folder: str, split: str, seq_len: int) -> None:
        from grain.sources import ArrayRecordDataSource  # noqa: PLC0415

        manifest = read_manifest(folder)
        shards = [s for s in manifest["splits"][split]["shards"] if s["tokens"] > 0]
        self.seq_len = seq_len
        self._dtype = np.dtype(manifest["dtype"])
        self._record_tokens = int(manifest["record_tokens"])
        self._token_starts = np.cumsum([0] + [int(s["tokens"]) for s in shards])
        self._record_starts = np.cumsum([0] + [int(s["records"]) for s in shards])
        self.num_tokens = int(self._token_starts[-1])
        paths = [str(epath.Path(folder) / s["file"]) for s in shards]
        self._source = ArrayRecordDataSource(paths) if paths else []

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.seq_len)

    def _tokens(self, start: int, count: int) -> np.ndarray:
        pieces, need = [], count
        while need > 0:
            shard = int(np.searchsorted(self._token_starts, start, side="right")) - 1
            local = start - int(self._token_starts[shard])
            record = int(self._record_starts[shard]) + local // self._record_tokens
            tokens = np.frombuffer(self._source[record], dtype=self._dtype)[local % self._record_tokens :]
            tokens = tokens[:need]
            pieces.append(tokens)
            need -= tokens.size
            start += tokens.size
        return np.concatenate(pieces).astype(np.int32)

    def __getitem__(self, index: int) -> np.ndarray:
        return self._tokens(int(index) * self.seq_len, self.seq_len + 1)

    def __repr__(self) -> str:
        return f"ShardSequences({len(self)} x {self.seq_len + 1} tokens)"


def shard_sequences(cfg: Any, split: str, seq_len: int) -> ShardSequences:
    """After checking the config names the shards' tokenizer."""
    check_tokenizer(read_manifest(cfg.path), cfg.tokenizer, cfg.path)
    return ShardSequences(cfg.path, split, seq_len)

