"""Weighted mixtures of corpora: one training stream drawn from several sources.

Continual pre-training moves a model to new data while a little of the old keeps it from
forgetting; both are sources of one mixture (see ``DataConfig.mixture`` and
:class:`training.data.MixtureSource`).  This module turns the trained entries of such a
config into one resumable element stream.

Why the interleaving is a pure function.  ``grain.MapDataset.mix`` places the sources'
elements in a fixed, stratified order: among the first ``k`` elements, source ``i``
supplies ``k * w_i`` of them up to rounding, so every stretch of the stream, however
short, holds each source in its proportion, and element ``k`` is the next unread element
of its source.  The mixed stream is therefore again a function of the element index
alone; :class:`training.data.BatchIterator` resumes it from the single count of elements
consumed, exactly, on any number of hosts.  The per-source counts needed for logs and for
token accounting follow from that count in closed form (:func:`interleave_counts`), so
the state carries them without having to observe the stream.

Weights are relative; grain resolves them as integers with the smallest weight scaled to
100, so a weight is honoured to within 1% of the smallest weight (0.3 : 0.7 becomes
300 : 700 exactly, 1 : 3.14159 becomes 100 : 314).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import grain

from chinchax.errors import DataError
from training import data as data_lib
from training.data import TRAINED_ROLES, BatchIterator, DataConfig, NamedSource

__all__ = [
    "INTERLEAVE_RESOLUTION",
    "MixtureIterator",
    "build_mixture_iterator",
    "interleave_counts",
    "interleave_proportions",
    "mixed_train_sequences",
    "trained_sources",
]

# The smallest weight becomes this many parts: the scale grain.MapDataset.mix itself uses,
# so the integer proportions given to it are taken as they are.
INTERLEAVE_RESOLUTION = 100


def interleave_proportions(weights: Sequence[float]) -> List[int]:
    """Positive relative weights as the integer proportions the stream realises exactly."""
    if not weights:
        raise DataError("a mixture needs at least one trained source",
                        hint="give data.mixture an entry with role: train")
    for weight in weights:
        if not weight > 0:
            raise DataError(f"mixture weight {weight} is not positive",
                            hint="use positive relative weights such as 0.9 and 0.1")
    smallest = min(weights)
    return [max(INTERLEAVE_RESOLUTION, round(INTERLEAVE_RESOLUTION * w / smallest)) for w in weights]


def interleave_counts(position: int, proportions: Sequence[int]) -> List[int]:
    """How many of the stream's first ``position`` elements each source supplies.

    The stratified order assigns source 0 ``k - floor(k (R - p_0) / R)`` of the first
    ``k`` elements (``R`` the sum of the proportions), then shares the rest among the
    other sources the same way.  This is the order of ``grain.MapDataset.mix``; the tests
    check the two against each other on a real stream.
    """
    if position < 0:
        raise DataError(f"negative stream position {position}", hint="count elements from 0")
    counts: List[int] = []
    remaining = sum(int(p) for p in proportions)
    rest = int(position)
    for proportion in proportions:
        others = (rest * (remaining - int(proportion))) // remaining
        counts.append(rest - others)
        rest, remaining = others, remaining - int(proportion)
    return counts


def trained_sources(cfg: DataConfig) -> List[NamedSource]:
    """The sources the training stream draws from (roles ``train`` and ``replay``), in
    the order of :func:`training.data.data_sources` (primary first)."""
    return [s for s in data_lib.data_sources(cfg) if s.role in TRAINED_ROLES]


def mixed_train_sequences(cfg: DataConfig, *, seq_len: int) -> "grain.MapDataset":
    """The weighted interleaving of the trained sources' training splits: an infinite
    ``MapDataset`` of packed ``seq_len + 1`` sequences, element ``k`` a pure function of ``k``.

    Each source is shuffled and repeated on its own (by its own ``seed``); a source
    smaller than the others simply goes through more epochs.
    """
    sources = trained_sources(cfg)
    streams = [data_lib.train_sequences(s.config, seq_len=seq_len) for s in sources]
    if len(streams) == 1:
        return streams[0]
    return grain.MapDataset.mix(streams, interleave_proportions([s.weight for s in sources]))


class MixtureIterator(BatchIterator):
    """A :class:`~training.data.BatchIterator` over a mixture, whose state also says how
    many sequences each source has supplied so far.

    ``get_state()`` adds ``"consumed": {name: sequences}`` (each ``seq_len`` target
    tokens) to the position and identity; the position alone fixes the resume point, and
    ``set_state`` checks that the identity (sources, weights, corpora, seeds) is the same.
    """

    def __init__(self, elements: "grain.MapDataset", *, names: Sequence[str], proportions: Sequence[int],
                 seq_len: int, **kwargs: Any) -> None:
        super().__init__(elements, **kwargs)
        self._names = list(names)
        self._proportions = [int(p) for p in proportions]
        self._seq_len = seq_len

    def consumed(self) -> Dict[str, int]:
        """Sequences drawn from each source by the whole job so far."""
        counts = interleave_counts(self.examples_consumed, self._proportions)
        return dict(zip(self._names, counts))

    def consumed_tokens(self) -> Dict[str, int]:
        """Target tokens drawn from each source so far (``consumed() * seq_len``)."""
        return {name: count * self._seq_len for name, count in self.consumed().items()}

    def get_state(self) -> Dict[str, Any]:
        state = super().get_state()
        state["consumed"] = self.consumed()
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        super().set_state(state)
        saved = state.get("consumed")
        if saved is not None and dict(saved) != self.consumed():
            raise DataError(
                f"the saved per-source counts {dict(saved)} do not match position "
                f"{self.examples_consumed} of this mixture ({self.consumed()})",
                hint="restore a state written by this mixture's get_state()",
            )


def build_mixture_iterator(
    cfg: DataConfig,
    *,
    seq_len: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> MixtureIterator:
    """Endless host-local training batches drawn from the mixture ``cfg`` describes.

    What :func:`training.data.build_train_iterator` returns for a mixture config: the
    same batches ``{"inputs", "targets"}``, the same host layout, and a state that resumes
    exactly.
    """
    if not cfg.mixture:
        raise DataError("build_mixture_iterator() needs a config with data.mixture",
                        hint="use training.data.build_train_iterator for a single source")
    sources = trained_sources(cfg)
    proportions = interleave_proportions([s.weight for s in sources])
    identity = {
        "seq_len": seq_len,
        "mixture": [
            {"name": s.name, "role": s.role, "proportion": p, **data_lib.stream_identity(s.config, seq_len)}
            for s, p in zip(sources, proportions)
        ],
    }
    return MixtureIterator(
        mixed_train_sequences(cfg, seq_len=seq_len),
        names=[s.name for s in sources],
        proportions=proportions,
        seq_len=seq_len,
        global_batch=global_batch,
        process_index=process_index,
        process_count=process_count,
        identity=identity,
        num_threads=cfg.num_threads,
        prefetch_batches=cfg.prefetch_batches,
    )
