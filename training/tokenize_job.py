"""``chinchax tokenize``: text in, ArrayRecord shards out.  Document ``k`` goes to shard ``k mod N``,
so any host may write a shard and a finished one is never redone; validation is chosen by a hash
of the bytes, so duplicates land in one split."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from chinchax.errors import DataError
from training.shards import (COUNTS, JOB, MANIFEST, RECORD_TOKENS, SHARD_FORMAT, SPLITS, WRITER_OPTIONS,
                             done_file, fingerprint, shard_file)
from training.sources.files import files_documents, resolve_text_files
from training.sources.hf import hf_documents, is_saved_dataset, load_hf_dataset
from training.tokenizer import Tokenizer, load_tokenizer


@dataclasses.dataclass(frozen=True)
class TokenizeJob:
    """Saved as ``job.json`` so restarts and other hosts can only continue the same job."""

    inputs: Tuple[str, ...]  # files, folders, globs, or one save_to_disk folder
    out: str
    tokenizer: str = "byte"
    column: str = "text"  # JSONL / Parquet / HF column holding the text
    separator: str = ""  # plain text: split files into documents here ("" = one per file)
    hf_name: Optional[str] = None  # a Hub dataset instead of inputs
    hf_config: Optional[str] = None
    split: str = "train"  # the HF split to read
    num_shards: int = 8
    validation_fraction: float = 0.01

    def __post_init__(self) -> None:
        if not self.inputs and not self.hf_name:
            raise DataError("nothing to tokenize", hint="name files, folders or globs, or --hf-name DATASET")
        if self.num_shards < 1:
            raise DataError(f"--num-shards={self.num_shards} must be positive", hint="use e.g. 8 per host")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DataError(f"--validation-fraction={self.validation_fraction} is not in [0, 1)",
                            hint="use a small fraction such as 0.01")

    def settings(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "out"} | {"inputs": list(self.inputs)}


def _files(inputs: Sequence[str]) -> List[str]:
    found = set()
    for item in inputs:
        exists = os.path.exists(os.path.expanduser(item))
        found.update(resolve_text_files(item if exists else None, None if exists else item))
    return sorted(found)


def shard_documents(job: TokenizeJob, index: int) -> Iterator[bytes]:
    if job.hf_name or (len(job.inputs) == 1 and is_saved_dataset(job.inputs[0])):
        dataset = load_hf_dataset(job.hf_name, path=job.inputs[0] if job.inputs else None,
                                  config=job.hf_config, split=job.split)
        yield from hf_documents(dataset.shard(job.num_shards, index, contiguous=False), job.column)
        return
    files = _files(job.inputs)
    if len(files) >= job.num_shards:
        yield from files_documents(files[index :: job.num_shards], column=job.column, separator=job.separator)
        return
    for k, document in enumerate(files_documents(files, column=job.column, separator=job.separator)):
        if k % job.num_shards == index:
            yield document


def is_validation(document: bytes, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(document).digest()[:8], "big") < fraction * 2**64


class _SplitWriter:
    """Documents end to end, in records of RECORD_TOKENS."""

    def __init__(self, path: Path, dtype: np.dtype, vocab_size: int) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

        self.path, self.temp, self.dtype = path, path.with_suffix(".tmp"), dtype
        self._writer = ArrayRecordWriter(str(self.temp), WRITER_OPTIONS)
        self._pending: List[np.ndarray] = []
        self._pending_tokens = 0
        self._digest = hashlib.sha256()
        self.counts = np.zeros(vocab_size, np.int64)
        self.stats = {"file": path.name, "documents": 0, "tokens": 0, "records": 0, "text_bytes": 0}

    def add(self, ids: np.ndarray, text_bytes: int) -> None:
        self._pending.append(ids.astype(self.dtype))
        self._pending_tokens += ids.size
        self.stats["documents"] += 1
        self.stats["text_bytes"] += text_bytes
        if self._pending_tokens >= RECORD_TOKENS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        stream = np.concatenate(self._pending) if self._pending else np.zeros(0, self.dtype)
        whole = stream.size if final else stream.size - stream.size % RECORD_TOKENS
        for start in range(0, whole, RECORD_TOKENS):
            record = stream[start : start + RECORD_TOKENS].tobytes()
            self._writer.write(record)
            self._digest.update(record)
            self.stats["records"] += 1
        self.stats["tokens"] += whole
        self.counts += np.bincount(stream[:whole], minlength=self.counts.size)
        self._pending, self._pending_tokens = [stream[whole:]], stream.size - whole

    def close(self) -> Dict[str, Any]:
        self._flush(final=True)
        self._writer.close()
        os.replace(self.temp, self.path)
        return {**self.stats, "sha256": self._digest.hexdigest()}


def write_shard(job: TokenizeJob, index: int) -> Dict[str, Any]:
    started = time.perf_counter()
    tokenizer = load_tokenizer(job.tokenizer)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    out = Path(job.out)
    writers = {s: _SplitWriter(out / shard_file(s, index, job.num_shards), dtype, tokenizer.vocab_size)
               for s in SPLITS}
    eod = np.array([tokenizer.eod_id], np.int32)
    for document in shard_documents(job, index):
        ids = tokenizer.encode(document)
        if ids.size == 0:
            continue
        ids = np.concatenate([ids, eod])
        writers["validation" if is_validation(document, job.validation_fraction) else "train"].add(ids, len(document))
    done = {"index": index, **{s: w.close() for s, w in writers.items()}}
    np.save(out / f"counts-{index:05d}.npy", sum(w.counts for w in writers.values()))
    done["seconds"] = round(time.perf_counter() - started, 3)
    _write_json(out / done_file(index), done)
    return done


def _write_json(path: Path, value: Any) -> None:
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temp, path)


def _start(job: TokenizeJob, tokenizer: Tokenizer) -> None:
    """Write ``job.json``, or check the folder holds this same job."""
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = {"format": SHARD_FORMAT, **job.settings(), "tokenizer_fingerprint": tokenizer.fingerprint}
    if (out / JOB).is_file():
        previous = json.loads((out / JOB).read_text())
        changed = sorted(k for k in set(saved) | set(previous) if saved.get(k) != previous.get(k))
        if changed:
            raise DataError(f"{job.out!r} holds shards of another tokenize job ({', '.join(changed)} differ)",
                            hint="use a new --out folder, or repeat the original job's arguments to continue it")
    else:
        _write_json(out / JOB, saved)


def pending_shards(job: TokenizeJob, host_index: int = 0, host_count: int = 1) -> List[int]:
    mine = range(host_index, job.num_shards, host_count)
    return [i for i in mine if not (Path(job.out) / done_file(i)).is_file()]


def write_manifest(job: TokenizeJob, tokenizer: Tokenizer) -> Dict[str, Any]:
    """Gather the finished shards into ``manifest.json`` and ``token_counts.npy``."""
    out = Path(job.out)
    done = [json.loads((out / done_file(i)).read_text()) for i in range(job.num_shards)]
    counts = sum(np.load(out / f"counts-{i:05d}.npy") for i in range(job.num_shards))
    np.save(out / COUNTS, counts)
    shards = {s: [d[s] for d in done] for s in SPLITS}
    present = counts[counts > 0] / max(1, counts.sum())
    manifest = {
        "format": SHARD_FORMAT,
        "fingerprint": fingerprint(shards),
        "tokenizer": {"spec": job.tokenizer, "fingerprint": tokenizer.fingerprint,
                      "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod_id},
        "dtype": "uint16" if tokenizer.vocab_size <= 2**16 else "uint32",
        "record_tokens": RECORD_TOKENS,
        "job": job.settings(),
        "unigram_entropy_nats": float(-(present * np.log(present)).sum()),
        "seconds": round(sum(d["seconds"] for d in done), 3),
        "splits": {s: {k: sum(x[k] for x in shards[s]) for k in ("documents", "tokens", "text_bytes")}
                   | {"shards": shards[s]} for s in SPLITS},
    }
    _write_json(out / MANIFEST, manifest)
    return manifest


def run_tokenize(job: TokenizeJob, *, processes: int = 1, host_index: int = 0, host_count: int = 1,
                 progress: bool = True) -> Optional[Dict[str, Any]]:
    """Returns the manifest once every shard is done (``None`` while other hosts' are not)."""
    from tqdm import tqdm  # noqa: PLC0415

    if not 0 <= host_index < host_count:
        raise DataError(f"--host-index={host_index} is not in [0, --host-count={host_count})",
                        hint="number the hosts 0 .. host_count - 1")
    tokenizer = load_tokenizer(job.tokenizer)
    _start(job, tokenizer)
    todo = pending_shards(job, host_index, host_count)
    bar = tqdm(total=len(todo), unit="shard", disable=not progress or not todo, desc="tokenize")
    text_mb, started = 0.0, time.perf_counter()
    if processes > 1 and len(todo) > 1:
        with multiprocessing.get_context("spawn").Pool(min(processes, len(todo))) as pool:
            results = pool.imap_unordered(functools.partial(write_shard, job), todo)
            for done in results:
                text_mb += _advance(bar, done, started, text_mb)
    else:
        for i in todo:
            text_mb += _advance(bar, write_shard(job, i), started, text_mb)
    bar.close()
    if pending_shards(job):
        return None
    return write_manifest(job, tokenizer)


def _advance(bar: Any, done: Dict[str, Any], started: float, text_mb: float) -> float:
    """Returns the shard's MB."""
    mb = sum(done[s]["text_bytes"] for s in SPLITS) / 1e6
    bar.set_postfix_str(f"{(text_mb + mb) / max(time.perf_counter() - started, 1e-9):.2f} MB/s")
    bar.update(1)
    return mb
