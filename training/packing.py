"""Split by document (so no validation text is trained on), then pack each split into
``seq_len + 1`` tokens overlapping by one, so every token is a target once per epoch."""

from __future__ import annotations

import logging
from typing import List, Tuple, Union

import grain
import numpy as np

from chinchax.errors import DataError
from training.batch_iterator import Batch, inputs_and_targets, interleave_proportions
from training.corpus import TokenizedCorpus, load_corpus
from training.data_config import DataConfig, check, split_seed, trained_sources
from training.shards import ShardSequences, shard_sequences

log = logging.getLogger("training.data")


def split_documents(num_documents: int, validation_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation indices; at least one validation document if the fraction is > 0."""
    if validation_fraction == 0.0:
        return np.arange(num_documents), np.arange(0)
    if num_documents < 2:
        raise DataError(
            f"the corpus has {num_documents} document(s); a train/validation split needs at least 2",
            hint="add documents, split files with data.document_separator, or set data.validation_fraction=0",
        )
    count = min(max(1, round(validation_fraction * num_documents)), num_documents - 1)
    order = np.random.default_rng([seed, num_documents]).permutation(num_documents)
    return np.sort(order[count:]), np.sort(order[:count])


def split_stream(corpus: TokenizedCorpus, documents: np.ndarray) -> np.ndarray:
    lengths = np.diff(corpus.offsets)
    keep = np.zeros(corpus.num_documents, dtype=bool)
    keep[documents] = True
    return np.asarray(corpus.tokens[np.repeat(keep, lengths)], dtype=np.int32)


class PackedSequences:
    """Sequence ``i`` is ``stream[i * seq_len : i * seq_len + seq_len + 1]`` (a grain data source)."""

    def __init__(self, stream: np.ndarray, seq_len: int) -> None:
        self.stream = stream
        self.seq_len = seq_len

    @property
    def num_tokens(self) -> int:
        return int(self.stream.shape[0])

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.seq_len)

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(index) * self.seq_len
        return np.asarray(self.stream[start : start + self.seq_len + 1], dtype=np.int32)

    def __repr__(self) -> str:
        return f"PackedSequences({len(self)} x {self.seq_len + 1} tokens)"


def document_split(cfg: DataConfig) -> Tuple[np.ndarray, np.ndarray]:
    corpus = load_corpus(cfg)
    return split_documents(corpus.num_documents, cfg.validation_fraction, split_seed(cfg))


def check_shape(seq_len: int, batch: int, what: str) -> None:
    check(seq_len >= 1, f"seq_len={seq_len} must be positive", "use e.g. seq_len=256")
    check(batch >= 1, f"{what}={batch} must be positive", f"use a positive {what}")


def too_few(split: str, tokens: int, sequences: int, seq_len: int, batch: int) -> DataError:
    return DataError(
        f"the {split} split has {tokens:,} tokens = {sequences} sequence(s) of {seq_len}, fewer "
        f"than one batch of {batch}",
        hint="lower seq_len or the batch size, or use a larger corpus"
        + (" or a larger data.validation_fraction" if split == "validation" else ""),
    )


def split_sequences(cfg: DataConfig, split: str, seq_len: int) -> Union[PackedSequences, ShardSequences]:
    """Shards were split when tokenized."""
    if cfg.source == "shards":
        return shard_sequences(cfg, split, seq_len)
    train, validation = document_split(cfg)
    return PackedSequences(split_stream(load_corpus(cfg), train if split == "train" else validation), seq_len)


def _endless(source: Union[PackedSequences, ShardSequences], seed: int) -> "grain.MapDataset":
    if len(source) == 0:
        raise too_few("train", source.num_tokens, 0, source.seq_len, 1)
    return grain.MapDataset.source(source).shuffle(seed=seed).repeat()


def train_sequences(cfg: DataConfig, *, seq_len: int, min_sequences: int = 1) -> "grain.MapDataset":
    """Infinite, reshuffled each epoch from ``cfg.seed``; a mixture interleaves its trained sources,
    each shuffled and repeated on its own. Element ``k`` is a pure function of ``k``."""
    check_shape(seq_len, 1, "batch")
    sources = trained_sources(cfg)
    streams = []
    for source in sources:
        packed = split_sequences(source.config, "train", seq_len)
        if not cfg.mixture and len(packed) < min_sequences:
            raise too_few("train", packed.num_tokens, len(packed), seq_len, min_sequences)
        streams.append(_endless(packed, source.config.seed))
    if len(streams) == 1:
        return streams[0]
    return grain.MapDataset.mix(streams, interleave_proportions([s.weight for s in sources]))


def eval_batches(cfg: DataConfig, *, seq_len: int, batch_size: int, num_batches: int,
                 process_index: int, process_count: int) -> List[Batch]:
    """A seeded sample, the same on every call and host count; each host gets its contiguous rows."""
    validation = split_sequences(cfg, "validation", seq_len)
    if validation.num_tokens == 0:
        raise DataError("there is no validation split (data.validation_fraction=0)",
                        hint="set data.validation_fraction > 0, e.g. 0.05")
    available = len(validation) // batch_size
    if available == 0:
        raise too_few("validation", validation.num_tokens, len(validation), seq_len, batch_size)
    if available < num_batches:
        log.warning("validation split holds %d batch(es) of %d x %d tokens; evaluating on those, not %d",
                    available, batch_size, seq_len, num_batches)
    count = min(num_batches, available)
    order = np.random.default_rng([split_seed(cfg), 1]).permutation(len(validation))[: count * batch_size]
    local = batch_size // process_count
    batches = []
    for b in range(count):
        rows = order[b * batch_size : (b + 1) * batch_size][process_index * local : (process_index + 1) * local]
        batches.append(inputs_and_targets(np.stack([validation[int(i)] for i in rows])))
    return batches
