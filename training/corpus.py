"""Corpora: where documents come from, tokenized once and cached as ``.npy``.

Four sources, one product.  Whatever the source, the result is a :class:`TokenizedCorpus`:
one flat token array in which every document is followed by the end-of-document id, plus
the offsets where documents start.  The pipeline (``training.data``) splits, packs and
batches that product and never needs to know where it came from.

* ``embedded``: a deterministic few-MB subset of the Python standard library's own ``.py``
  files, present on every machine with Python, so the default run needs no download.
* ``prose``: the English prose of the Python language reference that ships with every
  interpreter for ``help()`` (``pydoc_data/topics.py``), with code, grammar and examples
  taken out: a second natural "language" next to ``embedded``'s Python source, for
  continual pre-training from one to the other.
* ``synthetic``: a random sparse Markov chain over a small alphabet, whose entropy rate is
  known exactly; a model's loss floor and a scaling fit's irreducible term can be checked
  against it.
* ``text``: local files or a glob, turned into an ArrayRecord TFDS dataset by
  :mod:`training.text_builder` and read back through ``tfds.data_source``.
* ``tfds``: any TFDS dataset with a text feature, through ``tfds.data_source``.

Tokenizing is the slow part, so its result is cached under ``cache_dir/corpus/<key>``;
the key digests everything the tokens depend on (source settings, file sizes and times,
tokenizer), so a changed input builds a new entry rather than reusing a stale one.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import re
import string
import sys
import sysconfig
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from chinchax.errors import DataError
from training.tokenizer import Tokenizer, load_tokenizer

if TYPE_CHECKING:  # the config lives with the public entry points; only its fields are read here
    from training.data import DataConfig

CACHE_FORMAT = 1  # bump when the cached layout or a source's document list changes

# --- the embedded corpus ------------------------------------------------------------------

EMBEDDED_MAX_BYTES = 4_000_000
EMBEDDED_MAX_FILE_BYTES = 400_000  # one huge generated file would dominate the corpus
# Parts of the standard library that are not representative source code: tests, bundled
# third-party packages, codec tables, generated documentation strings, demos.
EMBEDDED_EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "pydoc_data",
        "encodings",
        "ensurepip",
        "__pycache__",
        "__phello__",
    }
)


def stdlib_root() -> Path:
    """Where this interpreter's standard library sources live."""
    return Path(sysconfig.get_paths()["stdlib"])


def embedded_files(root: Optional[Path] = None) -> List[Tuple[str, int]]:
    """The embedded corpus's files as ``(relative path, size)``, sorted by path.

    The subset is chosen by a hash of each relative path, not by the directory order or
    by name, so it samples the whole library evenly and is the same on every machine that
    has the same Python version.
    """
    root = stdlib_root() if root is None else root
    candidates: List[Tuple[str, str, int]] = []
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
                order = hashlib.sha256(relative.encode("utf-8")).hexdigest()
                candidates.append((order, relative, size))
    chosen: List[Tuple[str, int]] = []
    total = 0
    for _, relative, size in sorted(candidates):
        if total + size > EMBEDDED_MAX_BYTES:
            continue
        chosen.append((relative, size))
        total += size
    if not chosen:
        raise DataError(
            f"no Python source files found under {str(root)!r} for the embedded corpus",
            hint="this Python ships without its .py sources; use data.source=synthetic or text",
        )
    return sorted(chosen)


# --- the prose corpus ---------------------------------------------------------------------

PROSE_FORMAT = 1  # bump when the paragraph filter or the grouping below changes
PROSE_DOCUMENT_CHARS = 2_000  # paragraphs of one topic are grouped into documents this long
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# Four words in a row separated by single spaces, the last three lower-case: what running
# English has and headings, tables, signatures and keyword lists lack.
_RUNNING_TEXT = re.compile(r"[A-Za-z]+(?: [a-z]+){3}")


def prose_topics_path() -> Path:
    """The module holding the language reference's text (``pydoc_data/topics.py``)."""
    return stdlib_root() / "pydoc_data" / "topics.py"


def _is_code(paragraph: str) -> bool:
    """Grammar rules, doctest sessions and anything Python can compile are not prose."""
    text = textwrap.dedent(paragraph).strip()
    if "::=" in text or text.startswith((">>>", "...")):
        return True
    with warnings.catch_warnings():  # odd escapes in examples warn while compiling
        warnings.simplefilter("ignore")
        try:
            compile(text, "<paragraph>", "exec")
        except (SyntaxError, ValueError):
            return False
    return True


def prose_paragraphs(text: str) -> List[str]:
    """The running-English paragraphs of a reference topic, dedented, in order."""
    paragraphs = (textwrap.dedent(p).strip() for p in _PARAGRAPH_BREAK.split(text))
    return [p for p in paragraphs if p and _RUNNING_TEXT.search(p) and not _is_code(p)]


def _literal_assignment(path: Path, name: str) -> object:
    """The literal value a module assigns to ``name`` (None when it assigns none)."""
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    return None


def prose_documents() -> List[str]:
    """The prose corpus's documents: each reference topic's prose paragraphs (topics in
    name order), grouped into documents of about :data:`PROSE_DOCUMENT_CHARS` characters.

    Topics range from 200 characters to 60 kB; grouping makes documents of similar size,
    so that a by-document validation split holds a predictable share of the text.
    """
    path = prose_topics_path()
    if not path.is_file():
        raise DataError(
            f"this Python has no {path.name} under {path.parent} for the prose corpus",
            hint="use a full Python install (with pydoc_data), or data.source=text with your own prose",
        )
    topics = _literal_assignment(path, "topics")  # read as data, never executed
    if not isinstance(topics, dict):
        raise DataError(
            f"{path} holds no 'topics' dictionary",
            hint="use a standard CPython install, or data.source=text with your own prose",
        )
    documents: List[str] = []
    for name in sorted(topics):
        group: List[str] = []
        for paragraph in prose_paragraphs(str(topics[name])):
            group.append(paragraph)
            if sum(len(p) for p in group) >= PROSE_DOCUMENT_CHARS:
                documents.append("\n\n".join(group))
                group = []
        if group:
            documents.append("\n\n".join(group))
    return documents


# --- the synthetic language ---------------------------------------------------------------

SYNTHETIC_SYMBOLS = string.ascii_lowercase + string.ascii_uppercase + string.digits


def _entropy_nats(probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis``; zero-probability entries contribute 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, -probabilities * np.log(probabilities), 0.0)
    return terms.sum(axis=axis)


@dataclasses.dataclass(frozen=True)
class MarkovLanguage:
    """A sparse Markov chain of order ``order`` over ``alphabet`` symbols.

    ``transition[c, s]`` is the probability of symbol ``s`` after context ``c`` (the last
    ``order`` symbols, most recent last, as a base-``alphabet`` number).  Each context
    allows ``branching`` next symbols with Dirichlet(1) weights, so the per-context
    entropies differ and the entropy rate is not a round number a model could guess.
    """

    alphabet: int
    order: int
    transition: np.ndarray  # [alphabet**order, alphabet]
    stationary: np.ndarray  # [alphabet**order], the stationary law of the context

    @classmethod
    def from_seed(cls, alphabet: int, order: int, branching: int, seed: int) -> "MarkovLanguage":
        """Draw a chain and find its stationary law (see :func:`_recurrent_class`)."""
        rng = np.random.default_rng([seed, alphabet, order, branching])
        contexts = alphabet**order
        for _ in range(100):
            allowed = np.argsort(rng.random((contexts, alphabet)), axis=1)[:, :branching]
            weights = rng.standard_gamma(1.0, size=(contexts, branching))  # Dirichlet(1) rows
            transition = np.zeros((contexts, alphabet))
            np.put_along_axis(transition, allowed, weights / weights.sum(axis=1, keepdims=True), axis=1)
            members = _recurrent_class(transition, alphabet)
            if members is not None and 2 * members.size >= contexts:
                return cls(alphabet, order, transition, _stationary(transition, alphabet, members))
        raise DataError(  # pragma: no cover -- needs ~100 unlucky draws in a row
            f"could not draw an ergodic Markov chain with alphabet {alphabet}, order {order}, "
            f"branching {branching}",
            hint="raise data.synthetic_branching",
        )

    def entropy_rate_nats(self) -> float:
        """Entropy per symbol of the stationary chain: sum_c pi(c) H(next | c)."""
        return float(self.stationary @ _entropy_nats(self.transition))

    def conditional_entropy_nats(self, context_length: int) -> float:
        """H(next symbol | the previous ``context_length`` symbols), at stationarity.

        Equals the entropy rate once ``context_length >= order``; shorter contexts know less.
        """
        if context_length >= self.order:
            return self.entropy_rate_nats()
        return self._block_entropy(context_length + 1) - self._block_entropy(context_length)

    def _block_entropy(self, length: int) -> float:
        """Entropy of ``length`` consecutive symbols (``length <= order + 1``)."""
        if length == 0:
            return 0.0
        joint = (self.stationary[:, None] * self.transition).reshape(
            (self.alphabet,) * (self.order + 1)
        )
        # joint is over (x_1..x_order, x_next); keep the last `length` axes.
        marginal = joint.sum(axis=tuple(range(self.order + 1 - length)))
        return float(_entropy_nats(marginal.ravel()))

    def sample(self, num_documents: int, length: int, seed: int) -> np.ndarray:
        """``[num_documents, length]`` symbols, each row started from the stationary law."""
        rng = np.random.default_rng([seed, 1])
        contexts = self.alphabet**self.order
        cumulative = np.cumsum(self.transition, axis=1)
        context = rng.choice(contexts, size=num_documents, p=self.stationary)
        out = np.empty((num_documents, max(length, self.order)), dtype=np.int64)
        for position in range(self.order):  # unpack the starting context into symbols
            power = self.alphabet ** (self.order - 1 - position)
            out[:, position] = (context // power) % self.alphabet
        for position in range(self.order, out.shape[1]):
            u = 1.0 - rng.random(num_documents)  # in (0, 1]
            symbol = np.minimum((cumulative[context] < u[:, None]).sum(axis=1), self.alphabet - 1)
            out[:, position] = symbol
            context = (context * self.alphabet + symbol) % contexts
        return out[:, :length]


def _successors(transition: np.ndarray, alphabet: int) -> np.ndarray:
    """``[contexts, alphabet]``: the context that follows context ``c`` and symbol ``s``."""
    contexts = transition.shape[0]
    return (np.arange(contexts)[:, None] * alphabet + np.arange(alphabet)[None, :]) % contexts


def _step_graph(transition: np.ndarray, alphabet: int):
    """The sparse graph of allowed context-to-context steps, weighted by probability."""
    from scipy.sparse import csr_matrix  # noqa: PLC0415 -- only the synthetic source needs scipy

    contexts = transition.shape[0]
    sources, symbols = np.nonzero(transition)
    targets = _successors(transition, alphabet)[sources, symbols]
    return csr_matrix((transition[sources, symbols], (sources, targets)), shape=(contexts, contexts))


def _recurrent_class(transition: np.ndarray, alphabet: int) -> Optional[np.ndarray]:
    """The contexts of the largest closed communicating class, if it is aperiodic.

    A random sparse chain usually has a few contexts no other context leads to; those are
    transient and carry no stationary mass.  The language lives on one closed class, where
    the chain is irreducible; aperiodic as well, it has one stationary law that every long
    document samples.  ``None`` when that class is periodic (then the draw is repeated).
    """
    from scipy.sparse.csgraph import connected_components, shortest_path  # noqa: PLC0415

    graph = _step_graph(transition, alphabet).tocoo()
    count, label = connected_components(graph, directed=True, connection="strong")
    has_exit = np.zeros(count, dtype=bool)
    has_exit[label[graph.row[label[graph.row] != label[graph.col]]]] = True
    closed = [c for c in range(count) if not has_exit[c]]
    sizes = np.bincount(label, minlength=count)
    best = max(closed, key=lambda c: (sizes[c], -c))
    members = np.flatnonzero(label == best)
    # Period of an irreducible class: gcd of level[u] + 1 - level[v] over its edges, with
    # BFS levels from any member.
    inside = (label[graph.row] == best) & (label[graph.col] == best)
    rows, cols = graph.row[inside], graph.col[inside]
    level = shortest_path(graph.tocsr(), unweighted=True, indices=int(members[0]))
    period = int(np.gcd.reduce(np.abs(level[rows] + 1 - level[cols]).astype(np.int64)))
    return members if period == 1 else None


def _stationary(transition: np.ndarray, alphabet: int, members: np.ndarray) -> np.ndarray:
    """The stationary law on the closed class ``members`` (zero elsewhere).

    Power iteration: on an irreducible aperiodic class it converges geometrically, and a
    random sparse chain mixes in about a hundred steps; a direct sparse solve is slower
    here because the de Bruijn-like step graph fills in.
    """
    step = _step_graph(transition, alphabet)[members][:, members].T.tocsr()
    law = np.full(members.size, 1.0 / members.size)
    for _ in range(100_000):
        updated = step @ law
        converged = np.abs(updated - law).max() < 1e-17
        law = updated / updated.sum()
        if converged:
            break
    full = np.zeros(transition.shape[0])
    full[members] = law
    return full


def synthetic_language(cfg: "DataConfig") -> MarkovLanguage:
    """The Markov language a synthetic config describes."""
    return MarkovLanguage.from_seed(
        cfg.synthetic_alphabet, cfg.synthetic_order, cfg.synthetic_branching, cfg.synthetic_seed
    )


# --- documents of each source -------------------------------------------------------------


def _embedded_documents(cfg: "DataConfig") -> Iterator[bytes]:
    root = stdlib_root()
    for relative, _ in embedded_files(root):
        yield (root / relative).read_bytes()


def _prose_documents(cfg: "DataConfig") -> Iterator[bytes]:
    for document in prose_documents():
        yield document.encode("utf-8")


def _synthetic_documents(cfg: "DataConfig") -> Iterator[bytes]:
    symbols = np.frombuffer(SYNTHETIC_SYMBOLS.encode("ascii"), dtype=np.uint8)
    rows = synthetic_language(cfg).sample(
        cfg.synthetic_documents, cfg.synthetic_document_length, cfg.synthetic_seed
    )
    for row in rows:
        yield symbols[row].tobytes()


def _feature(record: object, feature: str) -> object:
    """``record[feature]``; ``a/b`` reaches into nested features."""
    value = record
    for key in feature.split("/"):
        if not isinstance(value, dict) or key not in value:
            available = sorted(value) if isinstance(value, dict) else []
            raise DataError(
                f"the dataset has no text feature {feature!r} (features: {', '.join(available)})",
                hint="set data.text_feature to one of the features listed",
            )
        value = value[key]
    return value


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_bytes(value.item())
    raise DataError(
        f"the text feature holds {type(value).__name__}, not text",
        hint="set data.text_feature to a Text feature of the dataset",
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def tfds_documents(
    name: str,
    *,
    split: str,
    data_dir: Optional[str],
    feature: str,
    download: bool,
    max_documents: int = 0,
) -> Iterator[bytes]:
    """The ``feature`` of every record of a TFDS dataset, as bytes, in record order."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 -- heavy; only the tfds/text paths pay

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except tfds.core.registered.DatasetNotFoundError as exc:
        raise DataError(
            f"unknown TFDS dataset {name!r}",
            hint="check the name against tfds.list_builders() (or `tfds build --help`); "
            "for local files use data.source=text",
        ) from exc
    except Exception as exc:  # tfds raises many kinds for unprepared data, bad splits, offline
        raise DataError(
            f"cannot open TFDS dataset {name!r} split {split!r}: {_first_line(exc)}",
            hint="prepare it first (`tfds build NAME --file_format=array_record`), point "
            "data.tfds_data_dir at it, and check data.tfds_split",
        ) from exc
    total = len(source)
    if max_documents:
        total = min(total, max_documents)
    chunk = 1024
    for start in range(0, total, chunk):
        for record in source.__getitems__(range(start, min(start + chunk, total))):
            yield _as_bytes(_feature(record, feature))


def _text_documents(cfg: "DataConfig", cache_dir: Path) -> Iterator[bytes]:
    from training import text_builder  # noqa: PLC0415 -- imports tensorflow_datasets

    files = text_builder.resolve_text_files(cfg.path, cfg.glob)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(
            f"the text source's {len(files)} file(s) are all empty",
            hint="point data.path / data.glob at files with text in them",
        )
    data_dir = str(cache_dir / "tfds")
    name = text_builder.build_text_dataset(files, data_dir, cfg.document_separator)
    return tfds_documents(
        name, split=text_builder.SPLIT, data_dir=data_dir, feature="text", download=False
    )


# --- the tokenized product and its cache --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """Every document's tokens followed by the end-of-document id, back to back.

    Document ``i`` (its separator included) is ``tokens[offsets[i]:offsets[i + 1]]``.
    The arrays are memory-mapped from the cache, so a large corpus costs disk, not RAM.
    """

    tokens: np.ndarray  # [num_tokens], uint16 when the vocabulary fits, else int32
    offsets: np.ndarray  # [num_documents + 1], int64
    vocab_size: int
    eod_id: int
    fingerprint: str  # digest of the token content: the identity of the data
    description: str
    unigram_entropy_nats: float
    build_seconds: float

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


def _size_and_time(path: Path) -> Tuple[int, int]:
    try:
        stat = os.stat(path)
    except OSError:
        return (-1, -1)  # missing: building the corpus will say so
    return (stat.st_size, stat.st_mtime_ns)


def _source_key(cfg: "DataConfig", tokenizer: Tokenizer) -> Tuple[str, Dict[str, object]]:
    """A readable prefix and everything the tokens depend on, for the cache key."""
    parts: Dict[str, object] = {
        "format": CACHE_FORMAT,
        "tokenizer": tokenizer.fingerprint,
        "max_documents": cfg.max_documents,
    }
    if cfg.source == "embedded":
        root = stdlib_root()
        files = embedded_files(root)
        parts["python"] = f"{sys.implementation.name}-{platform.python_version()}"
        parts["files"] = [
            (relative, size, os.stat(root / relative).st_mtime_ns) for relative, size in files
        ]
        return "embedded", parts
    if cfg.source == "prose":
        topics = prose_topics_path()
        parts["python"] = f"{sys.implementation.name}-{platform.python_version()}"
        parts["prose"] = [PROSE_FORMAT, PROSE_DOCUMENT_CHARS, str(topics), *_size_and_time(topics)]
        return "prose", parts
    if cfg.source == "synthetic":
        parts["synthetic"] = [
            cfg.synthetic_alphabet,
            cfg.synthetic_order,
            cfg.synthetic_branching,
            cfg.synthetic_documents,
            cfg.synthetic_document_length,
            cfg.synthetic_seed,
        ]
        return "synthetic", parts
    if cfg.source == "text":
        from training import text_builder  # noqa: PLC0415

        files = text_builder.resolve_text_files(cfg.path, cfg.glob)
        parts["text"] = text_builder.config_name(files, cfg.document_separator)
        return "text", parts
    parts["tfds"] = [cfg.tfds_name, cfg.tfds_split, cfg.tfds_data_dir, cfg.text_feature]
    safe = "".join(c if c.isalnum() else "_" for c in str(cfg.tfds_name))[:40]
    return f"tfds-{safe}", parts


def _describe_source(cfg: "DataConfig") -> str:
    if cfg.source == "embedded":
        return f"Python {platform.python_version()} standard library sources"
    if cfg.source == "prose":
        return f"English prose of the Python {platform.python_version()} language reference"
    if cfg.source == "synthetic":
        return (
            f"synthetic order-{cfg.synthetic_order} Markov language over "
            f"{cfg.synthetic_alphabet} symbols"
        )
    if cfg.source == "text":
        return f"local text {cfg.path or cfg.glob}"
    return f"TFDS {cfg.tfds_name}[{cfg.tfds_split}]"


def _documents(cfg: "DataConfig", cache_dir: Path) -> Iterable[bytes]:
    if cfg.source == "embedded":
        return _embedded_documents(cfg)
    if cfg.source == "prose":
        return _prose_documents(cfg)
    if cfg.source == "synthetic":
        return _synthetic_documents(cfg)
    if cfg.source == "text":
        return _text_documents(cfg, cache_dir)
    return tfds_documents(
        str(cfg.tfds_name),
        split=cfg.tfds_split,
        data_dir=cfg.tfds_data_dir,
        feature=cfg.text_feature,
        download=cfg.tfds_download,
        max_documents=cfg.max_documents,
    )


def unigram_entropy_nats(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy of the token frequencies: the loss of the best context-free predictor."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size)
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


def _tokenize(cfg: "DataConfig", tokenizer: Tokenizer, cache_dir: Path) -> Tuple[np.ndarray, np.ndarray]:
    pieces: List[np.ndarray] = []
    lengths: List[int] = []
    eod = np.array([tokenizer.eod_id], dtype=np.int32)
    for document in _documents(cfg, cache_dir):
        if cfg.max_documents and len(lengths) >= cfg.max_documents:
            break
        ids = tokenizer.encode(document)
        if ids.size == 0:
            continue  # an empty document would add nothing but a separator
        pieces.extend((ids, eod))
        lengths.append(int(ids.size) + 1)
    if not lengths:
        raise DataError(
            f"the {cfg.source} corpus is empty (no non-empty documents)",
            hint="point the data source at documents with text in them",
        )
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    tokens = np.concatenate(pieces).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    return tokens, offsets


def _build(cfg: "DataConfig", tokenizer: Tokenizer, cache_dir: Path, entry: Path, description: str) -> None:
    """Tokenize the source into ``entry`` (atomically: a half-written entry never exists)."""
    started = time.perf_counter()
    tokens, offsets = _tokenize(cfg, tokenizer, cache_dir)
    digest = hashlib.sha256(np.ascontiguousarray(tokens))
    digest.update(np.ascontiguousarray(offsets))
    fingerprint = digest.hexdigest()[:16]
    meta = {
        "format": CACHE_FORMAT,
        "description": description,
        "documents": int(offsets.shape[0] - 1),
        "tokens": int(tokens.shape[0]),
        "vocab_size": tokenizer.vocab_size,
        "eod_id": tokenizer.eod_id,
        "fingerprint": fingerprint,
        "unigram_entropy_nats": unigram_entropy_nats(tokens, tokenizer.vocab_size),
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        np.save(staging / "tokens.npy", tokens)
        np.save(staging / "offsets.npy", offsets)
        (staging / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(staging, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


_LOADED: Dict[str, TokenizedCorpus] = {}


def load_corpus(cfg: "DataConfig") -> TokenizedCorpus:
    """The tokenized corpus ``cfg`` describes, built on first use and cached on disk."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    prefix, parts = _source_key(cfg, tokenizer)
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    entry = cache_dir / "corpus" / f"{prefix}-{digest}"
    if str(entry) in _LOADED:
        return _LOADED[str(entry)]
    if not (entry / "meta.json").is_file():
        _build(cfg, tokenizer, cache_dir, entry, _describe_source(cfg))
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
    )
    _LOADED[str(entry)] = corpus
    return corpus


def loss_floor_nats(cfg: "DataConfig", seq_len: int) -> float:
    """The lowest expected loss per target on synthetic data, for a model with ``seq_len``
    tokens of context.

    Target ``j`` of a sequence is predicted from ``j + 1`` tokens, so the first
    ``order - 1`` targets see a shorter context than the chain's order and cost more than
    the entropy rate.  Document boundaries are left out: a separator every
    ``L = synthetic_document_length`` symbols that a model cannot see coming, and a fresh
    start after it, raise the achievable loss by at most about
    ``(1 + ln L + order * ln alphabet) / (L + 1)`` nats per token (0.004 for the defaults).
    """
    language = synthetic_language(cfg)
    costs = [language.conditional_entropy_nats(min(j + 1, language.order)) for j in range(seq_len)]
    return float(math.fsum(costs) / seq_len)
