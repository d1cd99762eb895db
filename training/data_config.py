"""What a run reads: one corpus or a weighted mixture, validated on construction so every
mistake is a one-line :class:`DataError` whose hint names the fix."""

from __future__ import annotations

import dataclasses
import difflib
import math
import string
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence

from chinchax.errors import DataError
from training.tokenizer import BYTE_TOKENIZER, TOKENIZER_KINDS

SOURCES = ("embedded", "prose", "synthetic", "text", "tfds", "hf", "shards")
# train: the data to learn; replay: original pre-training data mixed back in against
# forgetting; eval: held-out loss only.
ROLES = ("train", "replay", "eval")
TRAINED_ROLES = ("train", "replay")
SYNTHETIC_SYMBOLS = string.ascii_lowercase + string.ascii_uppercase + string.digits


def check(condition: bool, message: str, hint: str) -> None:
    if not condition:
        raise DataError(message, hint=hint)


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


@dataclass(frozen=True)
class SourceConfig:
    source: str = "embedded"  # embedded | prose | synthetic | text | tfds | hf | shards
    # text, hf: a file or directory, and/or a glob (``**`` recurses); hf: or a save_to_disk
    # folder; shards: the folder `chinchax tokenize` wrote (its manifest.json)
    path: Optional[str] = None
    glob: Optional[str] = None
    document_separator: str = ""  # text: split files into documents at this string ("" = one per file)
    tfds_name: Optional[str] = None
    tfds_split: str = "train"
    tfds_data_dir: Optional[str] = None  # None: TFDS's default (~/tensorflow_datasets)
    tfds_download: bool = True  # let TFDS download and prepare a dataset that is missing
    text_feature: str = "text"  # tfds, hf: the feature/column holding the text ("a/b" for nested tfds)
    # hf: a dataset on the Hugging Face Hub (unless path/glob name local data)
    hf_name: Optional[str] = None
    hf_config: Optional[str] = None
    hf_split: str = "train"
    max_documents: int = 0  # read at most this many documents (0 = all)
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
        check_source(self, "data")


SOURCE_FIELDS = tuple(f.name for f in dataclasses.fields(SourceConfig))


def split_seed(cfg: SourceConfig) -> int:
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


def check_source(cfg: SourceConfig, where: str) -> None:
    """``where`` names the fields in messages (``data``, ``data.mixture[x]``)."""
    check(cfg.source in SOURCES, f"unknown data source {where}.source={cfg.source!r}",
          f"{did_you_mean(cfg.source, SOURCES)}{where}.source is one of {', '.join(SOURCES)}")
    check(cfg.source != "text" or bool(cfg.path or cfg.glob), f"{where}.source=text needs files",
          f"set {where}.path (a file or directory) or {where}.glob (e.g. 'corpus/**/*.txt')")
    check(cfg.source != "tfds" or bool(cfg.tfds_name), f"{where}.source=tfds needs a dataset name",
          f"set {where}.tfds_name (e.g. 'lm1b' or 'wikipedia/20230601.en')")
    check(cfg.source != "hf" or bool(cfg.hf_name or cfg.path or cfg.glob), f"{where}.source=hf needs a dataset",
          f"set {where}.hf_name (a Hub dataset) or {where}.path (a save_to_disk folder, JSONL or Parquet files)")
    check(cfg.source != "shards" or bool(cfg.path), f"{where}.source=shards needs the shards folder",
          f"set {where}.path to the folder `chinchax tokenize` wrote (it holds manifest.json)")
    check(0.0 <= cfg.validation_fraction < 1.0,
          f"{where}.validation_fraction={cfg.validation_fraction} is not in [0, 1)",
          "use a small fraction such as 0.05")
    check(0 <= cfg.seed < 2**32, f"{where}.seed={cfg.seed} is out of range", "use 0 <= seed < 2**32")
    check(cfg.split_seed is None or cfg.split_seed >= 0, f"{where}.split_seed={cfg.split_seed} is negative",
          f"use a seed >= 0, or leave it unset to split by {where}.seed")
    check(cfg.max_documents >= 0, f"{where}.max_documents is negative", "use 0 for all documents")
    _check_synthetic(cfg, where)


def _check_synthetic(cfg: SourceConfig, where: str) -> None:
    alphabet, order = cfg.synthetic_alphabet, cfg.synthetic_order
    check(2 <= alphabet <= len(SYNTHETIC_SYMBOLS), f"{where}.synthetic_alphabet={alphabet} is out of range",
          f"use 2..{len(SYNTHETIC_SYMBOLS)} symbols")
    check(1 <= order <= 3, f"{where}.synthetic_order={order} is out of range", "use an order of 1, 2 or 3")
    check(alphabet**order <= 2**16,
          f"{where}.synthetic_alphabet**synthetic_order = {alphabet**order} contexts is too many",
          f"lower {where}.synthetic_alphabet or {where}.synthetic_order (at most 65536 contexts)")
    check(1 <= cfg.synthetic_branching <= alphabet,
          f"{where}.synthetic_branching={cfg.synthetic_branching} is not in 1..{alphabet}",
          "allow between 1 and synthetic_alphabet next symbols per context")
    check(cfg.synthetic_documents >= 1 and cfg.synthetic_document_length >= 1,
          f"{where}.synthetic_documents and {where}.synthetic_document_length must be positive",
          "use e.g. 256 documents of 4096 symbols")
    check(cfg.synthetic_seed >= 0, f"{where}.synthetic_seed is negative", "use a seed >= 0")


@dataclass(frozen=True)
class MixtureSource(SourceConfig):
    """Weights are relative over trained entries. A ``replay`` entry should repeat the original run's
    corpus fields and seeds, so it replays only that run's training documents and evaluates on the
    ones it held out."""

    name: str = ""
    weight: float = 1.0
    role: str = "train"  # train | replay | eval

    def __post_init__(self) -> None:
        check(bool(self.name) and self.name.strip() == self.name and "/" not in self.name,
              f"a data.mixture entry has the name {self.name!r}",
              "give every mixture entry a short name without '/' or surrounding spaces, e.g. "
              "name: prose (it labels eval_loss/<name>)")
        where = f"data.mixture[{self.name}]"
        check_source(self, where)
        check(self.role in ROLES, f"unknown role {where}.role={self.role!r}",
              f"{did_you_mean(self.role, ROLES)}role is one of {', '.join(ROLES)}")
        check(isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0,
              f"{where}.weight={self.weight} is not a positive number",
              "weights are relative sampling rates, e.g. 0.9 and 0.1; leave a source out (or give "
              "it role: eval) rather than weighting it 0")


@dataclass(frozen=True)
class DataConfig(SourceConfig):
    """The corpus fields, or ``mixture`` (then those are not read); the tokenizer is shared, as a
    model has one vocabulary."""

    tokenizer: str = BYTE_TOKENIZER  # "byte", a SentencePiece .model, a tokenizer.json or an HF tokenizer folder
    cache_dir: Optional[str] = None  # None: ~/.cache/chinchax (or $XDG_CACHE_HOME/chinchax)
    num_threads: int = 2  # grain read threads (threads, not processes)
    prefetch_batches: int = 4
    mixture: List[MixtureSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_source(self, "data")
        check(bool(self.tokenizer), "data.tokenizer is empty", f"use {TOKENIZER_KINDS}")
        check(self.num_threads >= 0, "data.num_threads is negative", "use 0 (no threads) or more")
        check(self.prefetch_batches >= 0, "data.prefetch_batches is negative", "use 0 or more")
        entries = [MixtureSource(**e) if isinstance(e, Mapping) else e for e in self.mixture]
        for entry in entries:
            check(isinstance(entry, MixtureSource), f"data.mixture holds {type(entry).__name__}, not a source",
                  "write each entry as a mapping: {name: prose, source: prose, weight: 0.9}")
        names = [e.name for e in entries]
        repeated = sorted({n for n in names if names.count(n) > 1})
        check(not repeated, f"data.mixture names {', '.join(repeated)} more than once",
              "give every mixture entry its own name")
        check(not entries or any(e.role == "train" for e in entries), "data.mixture has no entry with role 'train'",
              "mark the data the run is meant to learn with role: train (replay and eval "
              "entries come in addition to it)")
        object.__setattr__(self, "mixture", entries)


@dataclass(frozen=True)
class NamedSource:
    name: str
    weight: float
    role: str
    config: DataConfig


def data_sources(cfg: DataConfig) -> List[NamedSource]:
    """Primary (first ``train`` entry) first; a single source is named after its kind."""
    if not cfg.mixture:
        return [NamedSource(cfg.source, 1.0, "train", cfg)]
    resolved = [
        NamedSource(entry.name, float(entry.weight), entry.role,
                    dataclasses.replace(cfg, mixture=[], **{n: getattr(entry, n) for n in SOURCE_FIELDS}))
        for entry in cfg.mixture
    ]
    primary = next(i for i, s in enumerate(resolved) if s.role == "train")
    return [resolved[primary]] + resolved[:primary] + resolved[primary + 1 :]


def primary_source(cfg: DataConfig) -> NamedSource:
    """The source whose held-out loss is the run's ``eval_loss``."""
    return data_sources(cfg)[0]


def trained_sources(cfg: DataConfig) -> List[NamedSource]:
    """``train`` and ``replay`` sources, primary first."""
    return [s for s in data_sources(cfg) if s.role in TRAINED_ROLES]
