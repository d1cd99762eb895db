"""Host-local batches from an endless element stream, resumable from one number: element ``k``
is a pure function of ``k``, so the position is the same on every host for any host count, and
a mixture's per-source counts follow in closed form."""

from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import grain
import numpy as np

from chinchax.errors import DataError
from training.data_config import check

STATE_VERSION = 1
INTERLEAVE_RESOLUTION = 100  # grain.MapDataset.mix's own scale for the smallest weight
Batch = Dict[str, np.ndarray]


def interleave_proportions(weights: Sequence[float]) -> List[int]:
    if not weights:
        raise DataError("a mixture needs at least one trained source", hint="give data.mixture an entry with role: train")
    for weight in weights:
        if not weight > 0:
            raise DataError(f"mixture weight {weight} is not positive",
                            hint="use positive relative weights such as 0.9 and 0.1")
    smallest = min(weights)
    return [max(INTERLEAVE_RESOLUTION, round(INTERLEAVE_RESOLUTION * w / smallest)) for w in weights]


def interleave_counts(position: int, proportions: Sequence[int]) -> List[int]:
    """Grain's interleave in closed form: source 0 gets ``k - floor(k (R - p_0) / R)`` of the first
    ``k`` (``R`` the sum); the rest recurse."""
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


def inputs_and_targets(sequences: np.ndarray) -> Batch:
    return {
        "inputs": np.ascontiguousarray(sequences[:, :-1]),
        "targets": np.ascontiguousarray(sequences[:, 1:]),
    }


class BatchIterator(Iterator[Batch]):
    """Global batch ``t`` is elements ``[start + t B, start + (t + 1) B)``; each host reads its own
    contiguous rows, so the global array is the same for any host count. The state's ``identity``
    refuses a restore onto other data; it counts what was returned, not what prefetch read."""

    def __init__(self, elements: "grain.MapDataset", *, global_batch: int, process_index: int = 0,
                 process_count: int = 1, identity: Optional[Mapping[str, Any]] = None, num_threads: int = 2,
                 prefetch_batches: int = 4, names: Sequence[str] = (), proportions: Sequence[int] = (),
                 seq_len: int = 0) -> None:
        check(process_count >= 1 and 0 <= process_index < process_count,
              f"process_index={process_index} is not in [0, process_count={process_count})",
              "pass jax.process_index() and jax.process_count()")
        check(global_batch >= 1 and global_batch % process_count == 0,
              f"global batch {global_batch} does not split evenly over {process_count} hosts",
              "make the global batch a multiple of the number of hosts")
        self._elements = elements
        self._global_batch = global_batch
        self._local_batch = global_batch // process_count
        self._process_index = process_index
        self._process_count = process_count
        self._identity = dict(identity or {})
        self._read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
        self._names = list(names)
        self._proportions = [int(p) for p in proportions]
        self._seq_len = seq_len
        self._examples = 0
        self._iterator = self._start(0)

    @property
    def local_batch(self) -> int:
        return self._local_batch

    def _start(self, examples: int) -> Iterator[Batch]:
        batches = self._elements[examples:].batch(self._local_batch, drop_remainder=True)
        mine = batches[self._process_index :: self._process_count].map(inputs_and_targets)
        return iter(mine.to_iter_dataset(self._read_options))

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Batch:
        batch = next(self._iterator)
        self._examples += self._global_batch
        return batch

    def consumed(self) -> Dict[str, int]:
        """Sequences drawn from each source by the whole job."""
        return dict(zip(self._names, interleave_counts(self._examples, self._proportions)))

    def consumed_tokens(self) -> Dict[str, int]:
        return {name: count * self._seq_len for name, count in self.consumed().items()}

    def get_state(self) -> Dict[str, Any]:
        state = {"version": STATE_VERSION, "examples": self._examples, "identity": copy.deepcopy(self._identity)}
        if self._proportions:
            state["consumed"] = self.consumed()
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue right after the last batch returned before ``state`` was taken."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise DataError(f"not a data-iterator state of version {STATE_VERSION}: {state!r:.120}",
                            hint="restore a state written by BatchIterator.get_state()")
        saved = dict(state.get("identity", {}))
        if saved != self._identity:
            changed = sorted(k for k in set(saved) | set(self._identity) if saved.get(k) != self._identity.get(k))
            raise DataError(
                f"the saved data position belongs to a different data stream ({', '.join(changed)} differ)",
                hint="resume with the data config (and seq_len) the run started with, or start a new run",
            )
        examples = int(state["examples"])
        check(examples >= 0, f"negative data position {examples}", "restore a state written by get_state()")
        self._examples = examples
        self._iterator = self._start(examples)
        consumed = state.get("consumed")
        if self._proportions and consumed is not None and dict(consumed) != self.consumed():
            raise DataError(
                f"the saved per-source counts {dict(consumed)} do not match position "
                f"{examples} of this mixture ({self.consumed()})",
                hint="restore a state written by this mixture's get_state()",
            )
