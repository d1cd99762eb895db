"""Numbers about the data that tests check the pipeline against: a corpus's summary, unigram
entropies, and the exact entropies (hence loss floors) of the synthetic Markov language."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
from etils import epath

from chinchax.errors import DataError
from training import shards
from training.corpus import load_corpus
from training.data_config import TRAINED_ROLES, DataConfig, check, data_sources
from training.data_stats import vocab_size
from training.packing import document_split
from training.sources.synthetic import MarkovLanguage, synthetic_language
from training.tokenizer import BYTE_TOKENIZER


def _entropy_nats(probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, -probabilities * np.log(probabilities), 0.0)
    return terms.sum(axis=axis)


def entropy_rate_nats(language: MarkovLanguage) -> float:
    """``sum_c pi(c) H(next | c)`` at stationarity."""
    return float(language.stationary @ _entropy_nats(language.transition))


def _block_entropy(language: MarkovLanguage, length: int) -> float:
    """Entropy of ``length`` consecutive symbols (``length <= order + 1``)."""
    if length == 0:
        return 0.0
    joint = (language.stationary[:, None] * language.transition).reshape(
        (language.alphabet,) * (language.order + 1)
    )
    # joint is over (x_1..x_order, x_next); keep the last `length` axes.
    marginal = joint.sum(axis=tuple(range(language.order + 1 - length)))
    return float(_entropy_nats(marginal.ravel()))


def conditional_entropy_nats(language: MarkovLanguage, context_length: int) -> float:
    """H(next | previous ``context_length`` symbols); the entropy rate once that reaches ``order``."""
    if context_length >= language.order:
        return entropy_rate_nats(language)
    return _block_entropy(language, context_length + 1) - _block_entropy(language, context_length)


def loss_floor_nats(cfg: DataConfig, *, seq_len: int) -> Optional[float]:
    """Exact floor on synthetic byte-level data; ``None`` for real corpora and other tokenizers.
    The lowest expected loss per target with ``seq_len`` of context. Document boundaries are left
    out: they add at most ``(1 + ln L + order ln alphabet) / (L + 1)`` nats/token (0.004 by default)."""
    if cfg.mixture or cfg.source != "synthetic" or cfg.tokenizer != BYTE_TOKENIZER:
        return None
    check(seq_len >= 1, f"seq_len={seq_len} must be positive", "use e.g. seq_len=256")
    language = synthetic_language(cfg)
    costs = [conditional_entropy_nats(language, min(j + 1, language.order)) for j in range(seq_len)]
    return float(math.fsum(costs) / seq_len)


def token_frequencies(cfg: DataConfig) -> np.ndarray:
    if cfg.mixture:
        raise DataError("token_frequencies() takes a single source, not a mixture",
                        hint="pass data_sources(cfg)[i].config for each source")
    if cfg.source == "shards":
        counts = np.load(epath.Path(cfg.path) / shards.COUNTS)
    else:
        corpus = load_corpus(cfg)
        counts = np.bincount(np.asarray(corpus.tokens, dtype=np.int64), minlength=corpus.vocab_size)
    return counts / counts.sum()


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


def _shards_summary(cfg: Any) -> Dict[str, Any]:
    """``corpus_summary`` from the manifest."""
    manifest = shards.read_manifest(cfg.path)
    splits = manifest["splits"]
    return {
        "source": "shards",
        "description": f"shards {cfg.path}",
        "documents": splits["train"]["documents"] + splits["validation"]["documents"],
        "tokens": splits["train"]["tokens"] + splits["validation"]["tokens"],
        "train_documents": splits["train"]["documents"],
        "train_tokens": splits["train"]["tokens"],
        "validation_documents": splits["validation"]["documents"],
        "validation_tokens": splits["validation"]["tokens"],
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "unigram_entropy_nats": manifest["unigram_entropy_nats"],
        "fingerprint": manifest["fingerprint"],
        "build_seconds": manifest["seconds"],
    }


def corpus_summary(cfg: DataConfig) -> Dict[str, Any]:
    """For a mixture, each source's summary with ``name``, ``role`` and normalised ``weight``."""
    if cfg.mixture:
        return _mixture_summary(cfg)
    if cfg.source == "shards":
        return _shards_summary(cfg)
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
        summary["entropy_rate_nats"] = entropy_rate_nats(synthetic_language(cfg))
    return summary


def describe(cfg: DataConfig) -> str:
    """One line about the data (loading it, so a bad source raises its error)."""
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
