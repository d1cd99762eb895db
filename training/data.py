"""Input pipeline entry points: a corpus, or a mixture, as resumable packed batches."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping

import numpy as np

from training.batch_iterator import Batch, BatchIterator, interleave_proportions
from training.data_config import (DataConfig, MixtureSource, check, data_sources, primary_source, split_seed,
                                  trained_sources)
from training.data_stats import (bits_per_byte, data_fingerprint, data_identity, eval_bytes_per_token,
                                 vocab_size)
from training.packing import (PackedSequences, check_shape, eval_batches, split_documents, split_stream,
                              train_sequences)

log = logging.getLogger("training.data")


def stream_identity(cfg: DataConfig, seq_len: int) -> Dict[str, Any]:
    """A saved position is valid only for a stream with the same identity."""
    return {
        "corpus": data_fingerprint(cfg),
        "seq_len": seq_len,
        "seed": cfg.seed,
        "split_seed": split_seed(cfg),
        "validation_fraction": cfg.validation_fraction,
    }


def build_train_iterator(cfg: DataConfig, *, seq_len: int, global_batch: int, process_index: int = 0,
                         process_count: int = 1) -> BatchIterator:
    """Host-local ``{"inputs", "targets"}: int32[global_batch // process_count, seq_len]``."""
    check_shape(seq_len, global_batch, "global_batch")
    elements = train_sequences(cfg, seq_len=seq_len, min_sequences=global_batch)
    kwargs: Dict[str, Any] = {}
    if cfg.mixture:
        sources = trained_sources(cfg)
        proportions = interleave_proportions([s.weight for s in sources])
        identity: Dict[str, Any] = {"seq_len": seq_len, "mixture": [
            {"name": s.name, "role": s.role, "proportion": p, **stream_identity(s.config, seq_len)}
            for s, p in zip(sources, proportions)]}
        kwargs = {"names": [s.name for s in sources], "proportions": proportions, "seq_len": seq_len}
    else:
        identity = stream_identity(cfg, seq_len)
    local = global_batch // max(process_count, 1)
    log.info("data: process %d of %d reads rows %d-%d of every global batch of %d", process_index,
             process_count, process_index * local, (process_index + 1) * local - 1, global_batch)
    return BatchIterator(elements, global_batch=global_batch, process_index=process_index,
                         process_count=process_count, identity=identity, num_threads=cfg.num_threads,
                         prefetch_batches=cfg.prefetch_batches, **kwargs)


def build_eval_batches(cfg: DataConfig, *, seq_len: int, batch_size: int, num_batches: int,
                       process_index: int = 0, process_count: int = 1) -> List[Batch]:
    """Primary source only; ``batch_size`` is global; fewer batches, with a warning, if the split is short."""
    if cfg.mixture:
        cfg = primary_source(cfg).config
    check_shape(seq_len, batch_size, "batch_size")
    check(num_batches >= 1, f"num_batches={num_batches} must be positive", "use num_batches >= 1")
    check(batch_size % process_count == 0 and 0 <= process_index < process_count,
          f"eval batch {batch_size} does not split over {process_count} hosts (index {process_index})",
          "make the eval batch a multiple of the number of hosts")
    return eval_batches(cfg, seq_len=seq_len, batch_size=batch_size, num_batches=num_batches,
                        process_index=process_index, process_count=process_count)


def build_eval_sets(cfg: DataConfig, *, seq_len: int, batch_size: int, num_batches: int,
                    process_index: int = 0, process_count: int = 1) -> Dict[str, List[Batch]]:
    """Primary source first (reported as ``eval_loss``, the others as ``eval_loss/<name>``)."""
    return {
        source.name: build_eval_batches(source.config, seq_len=seq_len, batch_size=batch_size,
                                        num_batches=num_batches, process_index=process_index,
                                        process_count=process_count)
        for source in data_sources(cfg)
    }


def to_global_batch(batch: Mapping[str, np.ndarray], mesh: Any, sharding: Any = None) -> Dict[str, Any]:
    """``sharding`` None: batch over the mesh's ``data`` and ``fsdp`` axes, sequence replicated."""
    import jax  # noqa: PLC0415 -- the one JAX-touching function of the data layer
    from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

    if sharding is None:
        batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
        sharding = PartitionSpec(batch_axes or None, None)
    if isinstance(sharding, PartitionSpec):
        sharding = NamedSharding(mesh, sharding)
    axes = sharding.spec[0] if len(sharding.spec) else None
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    ways = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    result = {}
    for key, local in batch.items():
        rows = int(local.shape[0]) * jax.process_count()
        check(rows % ways == 0, f"global batch of {rows} rows does not split over the {ways}-way batch sharding {names}",
              "make the global batch a multiple of the mesh's data x fsdp size")
        result[key] = jax.make_array_from_process_local_data(sharding, np.asarray(local))
    return result
