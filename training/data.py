"""The input pipeline: a corpus becomes an endless, resumable stream of packed batches.

What the trainer calls:

* :func:`build_train_iterator` -- host-local ``{"inputs", "targets"}`` int32 batches, with
  ``get_state()`` / ``set_state()`` so the checkpoint holds the data position;
* :func:`build_eval_batches` -- a fixed list of validation batches, the same every call;
* :func:`to_global_batch` -- host-local numpy batch -> global sharded ``jax.Array``;
* :func:`vocab_size`, :func:`unigram_entropy_nats`, :func:`loss_floor_nats`,
  :func:`corpus_summary`, :func:`describe` -- numbers for the model, the logs and the
  summary.

How a corpus becomes batches.  Documents are split into train and validation *by
document*, deterministically from ``seed`` (or ``split_seed``, which lets runs that differ
in data order share one validation set), so no validation text is ever seen in training.  Each split's documents are laid end to end, each followed by the
end-of-document id, and the stream is cut into sequences of ``seq_len + 1`` tokens that
overlap by one (inputs = ``[:-1]``, targets = ``[1:]``): every token is a target exactly
once per epoch, and a document shorter than a sequence simply shares it with its
neighbours.

Why the position is a single number.  The training stream is a grain ``MapDataset``: a
pure function from an element index to a sequence (shuffled anew each epoch from the
seed, repeated forever).  A batch iterator therefore needs to remember only how many
elements the whole job has consumed; resuming slices the dataset there.  The state is
the same on every host and does not depend on the number of hosts or the batch size, so
a checkpoint keeps one copy and may be restored onto another topology.  A weighted
mixture of sources (``grain.MapDataset.mix`` over several :func:`train_sequences`) is
again such a function, so it plugs into :class:`BatchIterator` unchanged.

Mixtures.  ``DataConfig.mixture`` names several weighted sources (:class:`MixtureSource`),
each a complete corpus description with its own split and order seeds.  Every entry point
here accepts such a config: training batches interleave the sources by weight
(:mod:`training.mixture`), :func:`build_eval_sets` gives held-out batches of each source
by name, and :func:`build_eval_batches` those of the primary source (the first entry
whose role is ``train``).  A ``replay`` entry is the original pre-training corpus, split
exactly as the original run split it, so its held-out loss measures forgetting; an
``eval`` entry is evaluated but never trained on (forgetting with no replay at all).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import grain
import numpy as np

from chinchax.errors import DataError
from training import corpus as corpus_lib
from training.corpus import TokenizedCorpus
from training.tokenizer import BYTE_TOKENIZER, load_tokenizer

__all__ = [
    "DataConfig",
    "SourceConfig",
    "MixtureSource",
    "NamedSource",
    "DataError",
    "BatchIterator",
    "PackedSequences",
    "data_sources",
    "primary_source",
    "build_train_iterator",
    "build_eval_batches",
    "build_eval_sets",
    "train_sequences",
    "to_global_batch",
    "vocab_size",
    "unigram_entropy_nats",
    "token_frequencies",
    "stream_identity",
    "loss_floor_nats",
    "corpus_summary",
    "describe",
]

log = logging.getLogger(__name__)

SOURCES = ("embedded", "prose", "synthetic", "text", "tfds")
# What a mixture entry is for: ``train`` (the data to learn), ``replay`` (original
# pre-training data mixed back in against forgetting) or ``eval`` (held-out loss only).
ROLES = ("train", "replay", "eval")
TRAINED_ROLES = ("train", "replay")
STATE_VERSION = 1
Batch = Dict[str, np.ndarray]


def _check(condition: bool, message: str, hint: str) -> None:
    if not condition:
        raise DataError(message, hint=hint)


def _did_you_mean(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


@dataclass(frozen=True)
class SourceConfig:
    """One corpus, and how its documents are split and its sequences ordered.

    The fields every data source has; :class:`DataConfig` (a run's data) and
    :class:`MixtureSource` (one entry of a mixture) both start from them.
    """

    source: str = "embedded"  # embedded | prose | synthetic | text | tfds
    # text: a file or directory, and/or a glob (``**`` recurses)
    path: Optional[str] = None
    glob: Optional[str] = None
    document_separator: str = ""  # text: split files into documents at this string ("" = one per file)
    # tfds
    tfds_name: Optional[str] = None
    tfds_split: str = "train"
    tfds_data_dir: Optional[str] = None  # None: TFDS's default (~/tensorflow_datasets)
    tfds_download: bool = True  # let TFDS download and prepare a dataset that is missing
    text_feature: str = "text"  # tfds: the feature holding the text ("a/b" for nested)
    max_documents: int = 0  # read at most this many documents (0 = all)
    # split and order
    validation_fraction: float = 0.05
    seed: int = 0  # the document split and the order of training sequences
    split_seed: Optional[int] = None  # fix the split apart from the order (None: use seed)
    # synthetic: a random sparse Markov chain with a known entropy rate
    synthetic_alphabet: int = 16
    synthetic_order: int = 2
    synthetic_branching: int = 4  # allowed next symbols per context
    synthetic_documents: int = 256
    synthetic_document_length: int = 4096
    synthetic_seed: int = 0  # the language itself; ``seed`` only splits and shuffles

    def __post_init__(self) -> None:
        _check_source(self, "data")


SOURCE_FIELDS = tuple(f.name for f in dataclasses.fields(SourceConfig))


def _check_source(cfg: SourceConfig, where: str) -> None:
    """Validate the corpus fields; ``where`` names them in messages (``data``, ``data.mixture[x]``)."""
    if cfg.source not in SOURCES:
        raise DataError(
            f"unknown data source {where}.source={cfg.source!r}",
            hint=f"{_did_you_mean(cfg.source, SOURCES)}{where}.source is one of {', '.join(SOURCES)}",
        )
    _check(
        cfg.source != "text" or bool(cfg.path or cfg.glob),
        f"{where}.source=text needs files",
        f"set {where}.path (a file or directory) or {where}.glob (e.g. 'corpus/**/*.txt')",
    )
    _check(
        cfg.source != "tfds" or bool(cfg.tfds_name),
        f"{where}.source=tfds needs a dataset name",
        f"set {where}.tfds_name (e.g. 'lm1b' or 'wikipedia/20230601.en')",
    )
    _check(
        0.0 <= cfg.validation_fraction < 1.0,
        f"{where}.validation_fraction={cfg.validation_fraction} is not in [0, 1)",
        "use a small fraction such as 0.05",
    )
    _check(0 <= cfg.seed < 2**32, f"{where}.seed={cfg.seed} is out of range", "use 0 <= seed < 2**32")
    _check(
        cfg.split_seed is None or cfg.split_seed >= 0,
        f"{where}.split_seed={cfg.split_seed} is negative",
        f"use a seed >= 0, or leave it unset to split by {where}.seed",
    )
    _check(cfg.max_documents >= 0, f"{where}.max_documents is negative", "use 0 for all documents")
    alphabet, order = cfg.synthetic_alphabet, cfg.synthetic_order
    _check(
        2 <= alphabet <= len(corpus_lib.SYNTHETIC_SYMBOLS),
        f"{where}.synthetic_alphabet={alphabet} is out of range",
        f"use 2..{len(corpus_lib.SYNTHETIC_SYMBOLS)} symbols",
    )
    _check(1 <= order <= 3, f"{where}.synthetic_order={order} is out of range", "use an order of 1, 2 or 3")
    _check(
        alphabet**order <= 2**16,
        f"{where}.synthetic_alphabet**synthetic_order = {alphabet**order} contexts is too many",
        f"lower {where}.synthetic_alphabet or {where}.synthetic_order (at most 65536 contexts)",
    )
    _check(
        1 <= cfg.synthetic_branching <= alphabet,
        f"{where}.synthetic_branching={cfg.synthetic_branching} is not in 1..{alphabet}",
        "allow between 1 and synthetic_alphabet next symbols per context",
    )
    _check(
        cfg.synthetic_documents >= 1 and cfg.synthetic_document_length >= 1,
        f"{where}.synthetic_documents and {where}.synthetic_document_length must be positive",
        "use e.g. 256 documents of 4096 symbols",
    )
    _check(cfg.synthetic_seed >= 0, f"{where}.synthetic_seed is negative", "use a seed >= 0")


@dataclass(frozen=True)
class MixtureSource(SourceConfig):
    """One named, weighted source of a mixture: a corpus (the :class:`SourceConfig` fields,
    flat) plus what it is for.

    ``weight`` is relative (weights are normalised over the trained entries) and must be
    positive; ``eval`` entries are never drawn from, so theirs is not used.  A ``replay``
    entry should repeat the original run's corpus fields, ``seed``, ``split_seed`` and
    ``validation_fraction`` included: then it replays only the original training documents
    and its held-out loss is measured on the documents the original run held out.
    """

    name: str = ""
    weight: float = 1.0
    role: str = "train"  # train | replay | eval

    def __post_init__(self) -> None:
        _check(
            bool(self.name) and self.name.strip() == self.name and "/" not in self.name,
            f"a data.mixture entry has the name {self.name!r}",
            "give every mixture entry a short name without '/' or surrounding spaces, e.g. "
            "name: prose (it labels eval_loss/<name>)",
        )
        where = f"data.mixture[{self.name}]"
        _check_source(self, where)
        _check(
            self.role in ROLES,
            f"unknown role {where}.role={self.role!r}",
            f"{_did_you_mean(self.role, ROLES)}role is one of {', '.join(ROLES)}",
        )
        _check(
            isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0,
            f"{where}.weight={self.weight} is not a positive number",
            "weights are relative sampling rates, e.g. 0.9 and 0.1; leave a source out (or give "
            "it role: eval) rather than weighting it 0",
        )


@dataclass(frozen=True)
class DataConfig(SourceConfig):
    """Where the tokens come from and how they are split.  Shapes (``seq_len``, batch)
    belong to the trainer and are passed to the entry points.

    Either the :class:`SourceConfig` fields describe one corpus, or ``mixture`` lists
    several (and the top-level corpus fields are not read).  Tokenizer, cache and reading
    settings are shared by all sources: a model has one vocabulary.
    """

    # tokenization and cache
    tokenizer: str = BYTE_TOKENIZER  # "byte" or the path of a SentencePiece .model file
    cache_dir: Optional[str] = None  # None: ~/.cache/chinchax (or $XDG_CACHE_HOME/chinchax)
    # reading
    num_threads: int = 2  # grain read threads (threads, not processes)
    prefetch_batches: int = 4
    # several weighted sources instead of the one above (see MixtureSource)
    mixture: List[MixtureSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_source(self, "data")
        _check(bool(self.tokenizer), "data.tokenizer is empty", "use 'byte' or a SentencePiece .model path")
        _check(self.num_threads >= 0, "data.num_threads is negative", "use 0 (no threads) or more")
        _check(self.prefetch_batches >= 0, "data.prefetch_batches is negative", "use 0 or more")
        entries = [MixtureSource(**e) if isinstance(e, Mapping) else e for e in self.mixture]
        for entry in entries:
            _check(
                isinstance(entry, MixtureSource),
                f"data.mixture holds {type(entry).__name__}, not a source",
                "write each entry as a mapping: {name: prose, source: prose, weight: 0.9}",
            )
        names = [e.name for e in entries]
        repeated = sorted({n for n in names if names.count(n) > 1})
        _check(not repeated, f"data.mixture names {', '.join(repeated)} more than once",
               "give every mixture entry its own name")
        _check(
            not entries or any(e.role == "train" for e in entries),
            "data.mixture has no entry with role 'train'",
            "mark the data the run is meant to learn with role: train (replay and eval "
            "entries come in addition to it)",
        )
        object.__setattr__(self, "mixture", entries)


@dataclass(frozen=True)
class NamedSource:
    """One source of a config, resolved: its name, weight and role, and a single-source
    :class:`DataConfig` that every single-corpus function of this module accepts."""

    name: str
    weight: float
    role: str
    config: DataConfig


def data_sources(cfg: DataConfig) -> List[NamedSource]:
    """The config's sources, primary first, then the others in listed order.

    A single-source config is one ``train`` source named after its kind (``"embedded"``).
    A mixture entry inherits the tokenizer, cache and reading settings of ``cfg``.
    """
    if not cfg.mixture:
        return [NamedSource(cfg.source, 1.0, "train", cfg)]
    resolved = [
        NamedSource(
            entry.name,
            float(entry.weight),
            entry.role,
            dataclasses.replace(cfg, mixture=[], **{name: getattr(entry, name) for name in SOURCE_FIELDS}),
        )
        for entry in cfg.mixture
    ]
    primary = next(i for i, s in enumerate(resolved) if s.role == "train")
    return [resolved[primary]] + resolved[:primary] + resolved[primary + 1 :]


def primary_source(cfg: DataConfig) -> NamedSource:
    """The source whose held-out loss is the run's ``eval_loss``: the first ``train`` entry."""
    return data_sources(cfg)[0]


# --- splitting and packing ----------------------------------------------------------------


def split_documents(num_documents: int, validation_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation document indices: a seeded permutation's prefix is the
    validation set (at least one document when the fraction is positive)."""
    if validation_fraction == 0.0:
        return np.arange(num_documents), np.arange(0)
    if num_documents < 2:
        raise DataError(
            f"the corpus has {num_documents} document(s); a train/validation split needs at least 2",
            hint="add documents, split files with data.document_separator, or set "
            "data.validation_fraction=0",
        )
    count = min(max(1, round(validation_fraction * num_documents)), num_documents - 1)
    order = np.random.default_rng([seed, num_documents]).permutation(num_documents)
    return np.sort(order[count:]), np.sort(order[:count])


def split_stream(corpus: TokenizedCorpus, documents: np.ndarray) -> np.ndarray:
    """The tokens of ``documents`` (each with its separator), end to end, as int32."""
    lengths = np.diff(corpus.offsets)
    keep = np.zeros(corpus.num_documents, dtype=bool)
    keep[documents] = True
    return np.asarray(corpus.tokens[np.repeat(keep, lengths)], dtype=np.int32)


class PackedSequences:
    """A token stream as random-access sequences of ``seq_len + 1`` tokens.

    Sequence ``i`` is ``stream[i * seq_len : i * seq_len + seq_len + 1]``: neighbours share
    one token, so every token but the first is a target exactly once.  (A grain data
    source: ``len`` and integer indexing.)
    """

    def __init__(self, stream: np.ndarray, seq_len: int) -> None:
        self.stream = stream
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (int(self.stream.shape[0]) - 1) // self.seq_len)

    def __getitem__(self, index: int) -> np.ndarray:
        start = int(index) * self.seq_len
        return np.asarray(self.stream[start : start + self.seq_len + 1], dtype=np.int32)

    def __repr__(self) -> str:
        return f"PackedSequences({len(self)} x {self.seq_len + 1} tokens)"


def _split_seed(cfg: DataConfig) -> int:
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


def _split(corpus: TokenizedCorpus, cfg: DataConfig) -> Tuple[np.ndarray, np.ndarray]:
    return split_documents(corpus.num_documents, cfg.validation_fraction, _split_seed(cfg))


def _check_shape(seq_len: int, batch: int, what: str) -> None:
    _check(seq_len >= 1, f"seq_len={seq_len} must be positive", "use e.g. seq_len=256")
    _check(batch >= 1, f"{what}={batch} must be positive", f"use a positive {what}")


def _too_few(split: str, tokens: int, sequences: int, seq_len: int, batch: int) -> DataError:
    return DataError(
        f"the {split} split has {tokens:,} tokens = {sequences} sequence(s) of {seq_len}, fewer "
        f"than one batch of {batch}",
        hint="lower seq_len or the batch size, or use a larger corpus"
        + (" or a larger data.validation_fraction" if split == "validation" else ""),
    )


def _train_source(cfg: DataConfig, seq_len: int) -> PackedSequences:
    corpus = corpus_lib.load_corpus(cfg)
    train_documents, _ = _split(corpus, cfg)
    return PackedSequences(split_stream(corpus, train_documents), seq_len)


def _endless(source: PackedSequences, seed: int) -> "grain.MapDataset":
    if len(source) == 0:
        raise _too_few("train", int(source.stream.shape[0]), 0, source.seq_len, 1)
    return grain.MapDataset.source(source).shuffle(seed=seed).repeat()


def train_sequences(cfg: DataConfig, *, seq_len: int) -> "grain.MapDataset":
    """The training split as an infinite grain ``MapDataset`` of packed sequences,
    reshuffled every epoch from ``cfg.seed``: element ``i`` is a pure function of ``i``.

    This is the unit a mixture combines: ``grain.MapDataset.mix([...], weights)`` over
    several of these is again an element-level stream for :class:`BatchIterator`.  For a
    mixture config it is that interleaving (:func:`training.mixture.mixed_train_sequences`).
    """
    _check_shape(seq_len, 1, "batch")
    if cfg.mixture:
        return _mixture_module().mixed_train_sequences(cfg, seq_len=seq_len)
    return _endless(_train_source(cfg, seq_len), cfg.seed)


# --- the resumable batch iterator ---------------------------------------------------------


def _inputs_and_targets(sequences: np.ndarray) -> Batch:
    return {
        "inputs": np.ascontiguousarray(sequences[:, :-1]),
        "targets": np.ascontiguousarray(sequences[:, 1:]),
    }


class BatchIterator(Iterator[Batch]):
    """Host-local batches from an infinite element-level ``MapDataset``, resumable.

    Global batch ``t`` (counting from the start position) is elements
    ``[start + t * global_batch, start + (t + 1) * global_batch)``; host ``p`` of ``n``
    reads the contiguous block ``p`` of it (rows ``p * local : (p + 1) * local``), so the
    global array that ``jax.make_array_from_process_local_data`` assembles in process
    order is the same, row for row, whatever the number of hosts.

    ``get_state()`` is ``{"version", "examples", "identity"}``: ``examples`` counts the
    elements the whole job has consumed; ``identity`` names the element stream (corpus
    digest, seed, ``seq_len``, ...) so a state cannot be restored onto different data.
    Prefetching threads may read ahead; the state counts only what was returned.
    """

    def __init__(
        self,
        elements: "grain.MapDataset",
        *,
        global_batch: int,
        process_index: int = 0,
        process_count: int = 1,
        identity: Optional[Mapping[str, Any]] = None,
        num_threads: int = 2,
        prefetch_batches: int = 4,
    ) -> None:
        _check(
            process_count >= 1 and 0 <= process_index < process_count,
            f"process_index={process_index} is not in [0, process_count={process_count})",
            "pass jax.process_index() and jax.process_count()",
        )
        _check(
            global_batch >= 1 and global_batch % process_count == 0,
            f"global batch {global_batch} does not split evenly over {process_count} hosts",
            "make the global batch a multiple of the number of hosts",
        )
        self._elements = elements
        self._global_batch = global_batch
        self._local_batch = global_batch // process_count
        self._process_index = process_index
        self._process_count = process_count
        self._identity = dict(identity or {})
        self._read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
        self._examples = 0
        self._iterator = self._start(0)

    @property
    def local_batch(self) -> int:
        return self._local_batch

    @property
    def examples_consumed(self) -> int:
        return self._examples

    def _start(self, examples: int) -> Iterator[Batch]:
        batches = self._elements[examples:].batch(self._local_batch, drop_remainder=True)
        mine = batches[self._process_index :: self._process_count].map(_inputs_and_targets)
        return iter(mine.to_iter_dataset(self._read_options))

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        self._examples += self._global_batch
        return batch

    def get_state(self) -> Dict[str, Any]:
        """Small and JSON-serialisable; identical on every host."""
        return {"version": STATE_VERSION, "examples": self._examples, "identity": copy.deepcopy(self._identity)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue right after the last batch returned before ``state`` was taken."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise DataError(
                f"not a data-iterator state of version {STATE_VERSION}: {state!r:.120}",
                hint="restore a state written by BatchIterator.get_state()",
            )
        saved = dict(state.get("identity", {}))
        if saved != self._identity:
            changed = sorted(k for k in set(saved) | set(self._identity) if saved.get(k) != self._identity.get(k))
            raise DataError(
                f"the saved data position belongs to a different data stream ({', '.join(changed)} differ)",
                hint="resume with the data config (and seq_len) the run started with, or start a new run",
            )
        examples = int(state["examples"])
        _check(examples >= 0, f"negative data position {examples}", "restore a state written by get_state()")
        self._examples = examples
        self._iterator = self._start(examples)


def stream_identity(cfg: DataConfig, seq_len: int) -> Dict[str, Any]:
    """What names a single source's training stream: a saved position is valid only for
    a stream with the same identity (see :meth:`BatchIterator.set_state`)."""
    corpus = corpus_lib.load_corpus(cfg)
    return {
        "corpus": corpus.fingerprint,
        "seq_len": seq_len,
        "seed": cfg.seed,
        "split_seed": _split_seed(cfg),
        "validation_fraction": cfg.validation_fraction,
    }


def build_train_iterator(
    cfg: DataConfig,
    *,
    seq_len: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchIterator:
    """Endless host-local training batches ``{"inputs", "targets"}: int32[local, seq_len]``
    where ``local = global_batch // process_count``; resumable through get/set_state.

    A mixture config gives the weighted interleaving of its trained sources
    (:func:`training.mixture.build_mixture_iterator`), with the same interface.
    """
    _check_shape(seq_len, global_batch, "global_batch")
    if cfg.mixture:
        return _mixture_module().build_mixture_iterator(
            cfg, seq_len=seq_len, global_batch=global_batch,
            process_index=process_index, process_count=process_count,
        )
    source = _train_source(cfg, seq_len)
    if len(source) < global_batch:
        raise _too_few("train", int(source.stream.shape[0]), len(source), seq_len, global_batch)
    return BatchIterator(
        _endless(source, cfg.seed),
        global_batch=global_batch,
        process_index=process_index,
        process_count=process_count,
        identity=stream_identity(cfg, seq_len),
        num_threads=cfg.num_threads,
        prefetch_batches=cfg.prefetch_batches,
    )


def build_eval_batches(
    cfg: DataConfig,
    *,
    seq_len: int,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> List[Batch]:
    """A fixed list of validation batches: a seeded sample of the validation sequences,
    the same on every call and every host count.

    ``batch_size`` is global; each host gets its contiguous block of rows (as in
    training).  When the validation split holds fewer than ``num_batches`` batches, all
    the whole batches it has are returned (a warning says so) rather than repeating text.
    For a mixture config these are the primary source's batches (:func:`build_eval_sets`
    has every source's).
    """
    if cfg.mixture:
        cfg = primary_source(cfg).config
    _check_shape(seq_len, batch_size, "batch_size")
    _check(num_batches >= 1, f"num_batches={num_batches} must be positive", "use num_batches >= 1")
    _check(
        batch_size % process_count == 0 and 0 <= process_index < process_count,
        f"eval batch {batch_size} does not split over {process_count} hosts (index {process_index})",
        "make the eval batch a multiple of the number of hosts",
    )
    corpus = corpus_lib.load_corpus(cfg)
    _, validation_documents = _split(corpus, cfg)
    if validation_documents.size == 0:
        raise DataError(
            "there is no validation split (data.validation_fraction=0)",
            hint="set data.validation_fraction > 0, e.g. 0.05",
        )
    stream = split_stream(corpus, validation_documents)
    sequences = PackedSequences(stream, seq_len)
    available = len(sequences) // batch_size
    if available == 0:
        raise _too_few("validation", int(stream.shape[0]), len(sequences), seq_len, batch_size)
    if available < num_batches:
        log.warning(
            "validation split holds %d batch(es) of %d x %d tokens; evaluating on those, not %d",
            available, batch_size, seq_len, num_batches,
        )
    count = min(num_batches, available)
    order = np.random.default_rng([_split_seed(cfg), 1]).permutation(len(sequences))[: count * batch_size]
    local = batch_size // process_count
    batches = []
    for b in range(count):
        rows = order[b * batch_size : (b + 1) * batch_size][process_index * local : (process_index + 1) * local]
        batches.append(_inputs_and_targets(np.stack([sequences[int(i)] for i in rows])))
    return batches


def build_eval_sets(
    cfg: DataConfig,
    *,
    seq_len: int,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Dict[str, List[Batch]]:
    """Fixed validation batches of every source, by name, the primary source first.

    The trainer reports the first entry as ``eval_loss`` and each as ``eval_loss/<name>``.
    A single-source config gives one entry named after its kind (e.g. ``"embedded"``).
    Each source's batches are what :func:`build_eval_batches` gives for it alone.
    """
    return {
        source.name: build_eval_batches(
            source.config, seq_len=seq_len, batch_size=batch_size, num_batches=num_batches,
            process_index=process_index, process_count=process_count,
        )
        for source in data_sources(cfg)
    }


def _mixture_module() -> Any:
    """``training.mixture`` builds on this module, so it is imported when first needed."""
    from training import mixture  # noqa: PLC0415

    return mixture


# --- from host-local numpy to a global jax.Array ------------------------------------------


def to_global_batch(batch: Mapping[str, np.ndarray], mesh: Any, sharding: Any = None) -> Dict[str, Any]:
    """Assemble every host's local rows into global ``jax.Array`` s sharded on ``mesh``.

    ``sharding`` is a ``NamedSharding``, a ``PartitionSpec`` (on ``mesh``), or ``None``:
    the batch dimension over whichever of the ``data`` and ``fsdp`` axes the mesh has,
    the sequence dimension replicated.  Each host passes only its own rows, in process
    order (see :class:`BatchIterator`).
    """
    import jax  # noqa: PLC0415 -- the one JAX-touching function of the data layer
    from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

    if sharding is None:
        batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
        sharding = PartitionSpec(batch_axes or None, None)
    if isinstance(sharding, PartitionSpec):
        sharding = NamedSharding(mesh, sharding)
    spec = sharding.spec
    axes = spec[0] if len(spec) else None
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    result = {}
    for key, local in batch.items():
        rows = int(local.shape[0]) * jax.process_count()
        _check(
            rows % ways == 0,
            f"global batch of {rows} rows does not split over the {ways}-way batch sharding {names}",
            "make the global batch a multiple of the mesh's data x fsdp size",
        )
        result[key] = jax.make_array_from_process_local_data(sharding, np.asarray(local))
    return result


# --- numbers about the data ---------------------------------------------------------------


def vocab_size(cfg: DataConfig) -> int:
    """Size of the tokenizer's vocabulary, end-of-document id included (257 for bytes)."""
    return load_tokenizer(cfg.tokenizer).vocab_size


def unigram_entropy_nats(cfg: DataConfig) -> float:
    """Entropy of the corpus's token frequencies, in nats per token: the loss of the best
    model that ignores context.  A language model that learned anything beats it.

    For a mixture: the entropy of the trained sources' frequencies mixed by weight, i.e.
    of the token distribution the training stream draws from.
    """
    if not cfg.mixture:
        return corpus_lib.load_corpus(cfg).unigram_entropy_nats
    trained = [s for s in data_sources(cfg) if s.role in TRAINED_ROLES]
    total = sum(s.weight for s in trained)
    mixed = sum((s.weight / total) * token_frequencies(s.config) for s in trained)
    present = mixed[mixed > 0]
    return float(-(present * np.log(present)).sum())


def token_frequencies(cfg: DataConfig) -> np.ndarray:
    """``[vocab_size]`` relative frequencies of the tokens of a single source's corpus."""
    if cfg.mixture:
        raise DataError(
            "token_frequencies() takes a single source, not a mixture",
            hint="pass data_sources(cfg)[i].config for each source",
        )
    corpus = corpus_lib.load_corpus(cfg)
    counts = np.bincount(np.asarray(corpus.tokens, dtype=np.int64), minlength=corpus.vocab_size)
    return counts / counts.sum()


def loss_floor_nats(cfg: DataConfig, *, seq_len: int) -> Optional[float]:
    """The exact lowest expected loss per token on synthetic data (see
    :func:`training.corpus.loss_floor_nats`); ``None`` for real corpora, whose floor is
    unknown, and for a non-byte tokenizer, which regroups the symbols."""
    if cfg.mixture or cfg.source != "synthetic" or cfg.tokenizer != BYTE_TOKENIZER:
        return None
    _check(seq_len >= 1, f"seq_len={seq_len} must be positive", "use e.g. seq_len=256")
    return corpus_lib.loss_floor_nats(cfg, seq_len)


def corpus_summary(cfg: DataConfig) -> Dict[str, Any]:
    """Plain numbers about the corpus and its split, for logs and ``summary.json``.

    For a mixture: ``{"primary", "unigram_entropy_nats", "vocab_size", "mixture": [...]}``
    with each source's own summary plus its ``name``, ``role`` and normalised ``weight``
    (0 for ``eval`` entries).
    """
    if cfg.mixture:
        sources = data_sources(cfg)
        total = sum(s.weight for s in sources if s.role in TRAINED_ROLES)
        return {
            "primary": sources[0].name,
            "vocab_size": vocab_size(cfg),
            "unigram_entropy_nats": unigram_entropy_nats(cfg),
            "mixture": [
                {
                    "name": s.name,
                    "role": s.role,
                    "weight": s.weight / total if s.role in TRAINED_ROLES else 0.0,
                    **corpus_summary(s.config),
                }
                for s in sources
            ],
        }
    corpus = corpus_lib.load_corpus(cfg)
    train_documents, validation_documents = _split(corpus, cfg)
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
        summary["entropy_rate_nats"] = corpus_lib.synthetic_language(cfg).entropy_rate_nats()
    return summary


def describe(cfg: DataConfig) -> str:
    """One line: what the corpus (or each source of a mixture) is and how big."""
    if cfg.mixture:
        parts = []
        for entry in corpus_summary(cfg)["mixture"]:
            share = f"{entry['weight']:.0%}" if entry["role"] != "eval" else "eval only"
            parts.append(
                f"{entry['name']} [{entry['role']}, {share}]: {entry['description']}, "
                f"{entry['tokens']:,} tokens, unigram entropy {entry['unigram_entropy_nats']:.3f} nats/token"
            )
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

