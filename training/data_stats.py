"""Numbers about the data for the model, the logs and ``summary.json``."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Dict, Optional

import numpy as np

from chinchax.errors import DataError
from training.corpus import load_corpus
from training.data_config import TRAINED_ROLES, DataConfig, check, data_sources
from training import shards
from training.packing import document_split
from training.sources import synthetic
from training.tokenizer import BYTE_TOKENIZER, load_tokenizer


def vocab_size(cfg: DataConfig) -> int:
    """End-of-document id included (257 for bytes)."""
    return load_tokenizer(cfg.tokenizer).vocab_size


def token_frequencies(cfg: DataConfig) -> np.ndarray:
    if cfg.mixture:
        raise DataError("token_frequencies() takes a single source, not a mixture",
                        hint="pass data_sources(cfg)[i].config for each source")
    if cfg.source == "shards":
        counts = shards.token_counts(cfg)
    else:
        corpus = load_corpus(cfg)
        counts = np.bincount(np.asarray(corpus.tokens, dtype=np.int64), minlength=corpus.vocab_size)
    return counts / counts.sum()


def data_fingerprint(cfg: DataConfig) -> str:
    """The corpus digest, or the shards manifest's."""
    if cfg.source == "shards":
        return str(shards.read_manifest(str(cfg.path))["fingerprint"])
    return load_corpus(cfg).fingerprint


def unigram_entropy_nats(cfg: DataConfig) -> float:
    """Loss of the best context-free model; a mixture's frequencies are mixed by weight."""
    if cfg.source == "shards" and not cfg.mixture:
        return float(shards.read_manifest(str(cfg.path))["unigram_entropy_nats"])
    if not cfg.mixture:
        return load_corpus(cfg).unigram_entropy_nats
    trained = [s for s in data_sources(cfg) if s.role in TRAINED_ROLES]
    total = sum(s.weight for s in trained)
    mixed = sum((s.weight / total) * token_frequencies(s.config) for s in trained)
    present = mixed[mixed > 0]
    return float(-(present * np.log(present)).sum())


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


def loss_floor_nats(cfg: DataConfig, *, seq_len: int) -> Optional[float]:
    """Exact floor on synthetic byte-level data; ``None`` for real corpora and other tokenizers."""
    if cfg.mixture or cfg.source != "synthetic" or cfg.tokenizer != BYTE_TOKENIZER:
        return None
    check(seq_len >= 1, f"seq_len={seq_len} must be positive", "use e.g. seq_len=256")
    return synthetic.loss_floor_nats(cfg, seq_len)


def _mixture_summary(cfg: DataConfig) -> Dict[str, Any]:
    sources = data_sources(cfg)
    total = sum(s.weight for s in sources if s.role in TRAINED_ROLES)
    return {
        "primary": sources[0].name,
        "vocab_size": vocab_size(cfg),
        "unigram_entropy_nats": unigram_entropy_nats(cfg),
        "mixture": [
            {"name": s.name, "role": s.role, "weight": s.weight / total if s.role in TRAINED_ROLES else 0.0,
             **corpus_summary(s.config)}
            for s in sources
        ],
    }


def corpus_summary(cfg: DataConfig) -> Dict[str, Any]:
    """For a mixture, each source's summary with ``name``, ``role`` and normalised ``weight``."""
    if cfg.mixture:
        return _mixture_summary(cfg)
    if cfg.source == "shards":
        return shards.shards_summary(cfg)
    corpus = load_corpus(cfg)
    train_documents, validation_documents = document_split(cfg)
    lengths = np.diff(corpus.offsets)
    summary: Dict[str, Any] = {
        "source": cfg.source,
        "description": corpus.description,
        "documents": corpus.num_documents,
        "tokens": corpus.num_tokens,
        "train_documents": int(train_documents.size),
        "train_tokens": int(lengths[train_documents].sum()),
        "validation_documents": int(validation_documents.size),
        "validation_tokens": int(lengths[validation_documents].sum()),
        "vocab_size": corpus.vocab_size,
        "unigram_entropy_nats": corpus.unigram_entropy_nats,
        "fingerprint": corpus.fingerprint,
        "build_seconds": corpus.build_seconds,
    }
    if cfg.source == "synthetic":
        summary["entropy_rate_nats"] = synthetic.synthetic_language(cfg).entropy_rate_nats()
    return summary


def describe(cfg: DataConfig) -> str:
    if cfg.mixture:
        parts = []
        for entry in corpus_summary(cfg)["mixture"]:
            share = f"{entry['weight']:.0%}" if entry["role"] != "eval" else "eval only"
            parts.append(f"{entry['name']} [{entry['role']}, {share}]: {entry['description']}, "
                         f"{entry['tokens']:,} tokens, unigram entropy {entry['unigram_entropy_nats']:.3f} nats/token")
        return "mixture of " + "; ".join(parts)
    s = corpus_summary(cfg)
    line = (
        f"{s['source']} ({s['description']}): {s['documents']:,} documents, {s['tokens']:,} tokens "
        f"(train {s['train_tokens']:,} / validation {s['validation_tokens']:,}), vocab {s['vocab_size']}, "
        f"unigram entropy {s['unigram_entropy_nats']:.3f} nats/token"
    )
    if "entropy_rate_nats" in s:
        line += f", entropy rate {s['entropy_rate_nats']:.4f} nats/symbol"
    return line
