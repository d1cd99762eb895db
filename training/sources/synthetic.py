"""A random sparse Markov chain over a small alphabet whose entropy rate is known exactly,
so a model's loss floor and a fit's irreducible term can be checked against it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from chinchax.errors import DataError
from training.data_config import SYNTHETIC_SYMBOLS


@dataclasses.dataclass(frozen=True)
class MarkovLanguage:
    """``transition[c, s]`` = P(``s`` | context ``c``), ``c`` the last ``order`` symbols in base
    ``alphabet``. ``branching`` successors per context with Dirichlet(1) weights, so the entropy
    rate is no round number a model could guess."""

    alphabet: int
    order: int
    transition: np.ndarray  # [alphabet**order, alphabet]
    stationary: np.ndarray  # [alphabet**order], the stationary law of the context

    @classmethod
    def from_seed(cls, alphabet: int, order: int, branching: int, seed: int) -> "MarkovLanguage":
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

    def sample(self, num_documents: int, length: int, seed: int) -> np.ndarray:
        """Each row starts from the stationary law."""
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
    from scipy.sparse import csr_matrix  # noqa: PLC0415 -- only the synthetic source needs scipy

    contexts = transition.shape[0]
    sources, symbols = np.nonzero(transition)
    targets = _successors(transition, alphabet)[sources, symbols]
    return csr_matrix((transition[sources, symbols], (sources, targets)), shape=(contexts, contexts))


def _recurrent_class(transition: np.ndarray, alphabet: int) -> Optional[np.ndarray]:
    """Largest closed communicating class (transient contexts carry no stationary mass), or ``None``
    if periodic (then redraw): on it every long document samples one stationary law."""
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
    """Power iteration: a random sparse chain mixes in ~100 steps; a direct sparse solve fills in."""
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


def synthetic_language(cfg: Any) -> MarkovLanguage:
    return MarkovLanguage.from_seed(
        cfg.synthetic_alphabet, cfg.synthetic_order, cfg.synthetic_branching, cfg.synthetic_seed
    )


def documents(cfg: Any, cache_dir: Path) -> Iterator[bytes]:
    symbols = np.frombuffer(SYNTHETIC_SYMBOLS.encode("ascii"), dtype=np.uint8)
    rows = synthetic_language(cfg).sample(cfg.synthetic_documents, cfg.synthetic_document_length,
                                          cfg.synthetic_seed)
    for row in rows:
        yield symbols[row].tobytes()


def cache_parts(cfg: Any) -> Tuple[str, Dict[str, object]]:
    return "synthetic", {"synthetic": [
        cfg.synthetic_alphabet, cfg.synthetic_order, cfg.synthetic_branching,
        cfg.synthetic_documents, cfg.synthetic_document_length, cfg.synthetic_seed,
    ]}


def description(cfg: Any) -> str:
    return f"synthetic order-{cfg.synthetic_order} Markov language over {cfg.synthetic_alphabet} symbols"

