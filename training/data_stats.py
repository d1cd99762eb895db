"""Numbers about the data for the model, the logs and ``summary.json``."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Dict

import numpy as np

from training.corpus import load_corpus
from training.data_config import DataConfig, check, data_sources
from training import shards
from training.packing import document_split
from training.tokenizer import load_tokenizer


def vocab_size(cfg: DataConfig) -> int:
    """End-of-document id included (257 for bytes)."""
    return load_tokenizer(cfg.tokenizer).vocab_size


def data_fingerprint(cfg: DataConfig) -> str:
    """The corpus digest, or the shards manifest's."""
    if cfg.source == "shards":
        return str(shards.read_manifest(str(cfg.path))["fingerprint"])
    return load_corpus(cfg).fingerprint


def eval_bytes_per_token(cfg: DataConfig) -> Dict[str, float]:
    """Per source's validation split, keyed like :func:`training.data.build_eval_sets`, so the eval
    loss converts to bits per byte, comparable across tokenizers."""
    result = {}
    for source in data_sources(cfg):
        single = source.config
        if single.source == "shards":
            validation = shards.read_manifest(str(single.path))["splits"]["validation"]
            text, tokens = validation["text_bytes"], validation["tokens"]
        else:
            corpus = load_corpus(single)
            _, documents = document_split(single)
            text = int(corpus.document_bytes[documents].sum())
            tokens = int(np.diff(corpus.offsets)[documents].sum())
        check(tokens > 0, f"source {source.name!r} has no validation tokens",
              "set data.validation_fraction > 0, e.g. 0.05")
        result[source.name] = text / tokens
    return result


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    return loss_nats / (math.log(2.0) * bytes_per_token)


def data_identity(cfg: DataConfig) -> Dict[str, Any]:
    """Tokenizer, each source's fingerprint and weight, and one fingerprint over them."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    sources = [{"name": s.name, "role": s.role, "weight": s.weight, "source": s.config.source,
                "fingerprint": data_fingerprint(s.config)} for s in data_sources(cfg)]
    digest = hashlib.sha256(json.dumps([tokenizer.fingerprint, sources], sort_keys=True).encode())
    return {"tokenizer": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
            "fingerprint": sources[0]["fingerprint"] if not cfg.mixture else digest.hexdigest()[:16],
            "sources": sources}

