"""Continual pre-training: a run starting from another run's checkpoint (``init.from_run``).
Only parameters travel, so warm-up, step and token counts are the new run's own (``D`` of the CPT
law counts continual tokens).  Applied only without checkpoints of its own: a restart resumes."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from chinchax.errors import ChinchaxError, CheckpointError, TrainingError
from models.config import ModelConfig
from scaling.rundir import CHECKPOINTS_DIR, CONFIG_NAME, SUMMARY_NAME, read_json, read_yaml
from training.checkpoint import STATE_ITEM, CheckpointConfig, Checkpointer, has_steps
from training.optim import key_name

log = logging.getLogger("chinchax.init")

PARAMS_KEY = "params"  # the parameters' subtree of a trainer checkpoint


@dataclass(frozen=True)
class InitSource:
    """``step`` None: newest; ``run_dir`` (for config.yaml, summary.json) when there is one."""

    checkpoint_dir: epath.Path
    step: Optional[int]
    run_dir: Optional[epath.Path]


def missing_hint(path: str) -> str:
    return (f"train the source run first (its run directory then holds {CHECKPOINTS_DIR}/), or "
            f"point init.from_run at a run directory that has one instead of {path}")


def resolve_source(path: str) -> InitSource:
    """A run directory, a ``checkpoints/`` folder or a single step folder."""
    # orbax wants absolute paths
    where = epath.Path(path if "://" in path else os.path.abspath(path))
    if not where.exists():
        raise TrainingError(f"init.from_run={path} does not exist", hint=missing_hint(path))
    if not where.is_dir():
        raise TrainingError(f"init.from_run={path} is a file, not a directory",
                        hint="name the source's run directory (runs/<name>) or its checkpoints/")
    if (where / CHECKPOINTS_DIR).is_dir():
        resolved = InitSource(where / CHECKPOINTS_DIR, None, where)
    elif where.name.isdigit() and (where / STATE_ITEM).exists():
        parent = where.parent
        return InitSource(parent, int(where.name), parent.parent if parent.name == CHECKPOINTS_DIR else None)
    else:
        resolved = InitSource(where, None, where.parent if where.name == CHECKPOINTS_DIR else None)
    if not has_steps(resolved.checkpoint_dir):
        raise TrainingError(f"init.from_run={path} holds no checkpoint", hint=missing_hint(path))
    return resolved


def _leaf_name(path: tuple) -> str:
    """As ``training.checkpoint`` names leaves."""
    return "/".join(key_name(k) for k in path)


def named_leaves(tree: Any) -> dict[str, Any]:
    return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def read_stored_tree(source: InitSource, step: int) -> Any:
    """Shapes and dtypes only, no arrays."""
    try:
        return ocp.StandardCheckpointHandler().metadata(
            source.checkpoint_dir / str(step) / STATE_ITEM).tree
    except Exception as error:
        raise TrainingError(f"cannot read checkpoint step {step} in {source.checkpoint_dir}: {error}",
                        hint="the files may be damaged; point init.from_run at an older step "
                        f"folder ({source.checkpoint_dir}/<step>)") from error


def _read_mapping(path: epath.Path) -> dict[str, Any]:
    """{} if absent or unreadable."""
    try:
        data = read_json(path) if path.suffix == ".json" else read_yaml(path)
    except ChinchaxError:
        return {}
    return data if isinstance(data, dict) else {}


def source_model_fields(source: InitSource) -> Optional[dict[str, Any]]:
    """From the resolved config.yaml, else summary.json."""
    if source.run_dir is None:
        return None
    for name in (CONFIG_NAME, SUMMARY_NAME):
        model = _read_mapping(source.run_dir / name).get("model")
        if isinstance(model, dict):
            return model
    return None


def _shape_mismatch(source: InitSource, step: int, problem: str, model: ModelConfig) -> TrainingError:
    """Names the model fields that differ, when the source's config says."""
    theirs = source_model_fields(source)
    ours = model.to_dict()
    differing = ([f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in ours
                  if k in theirs and theirs[k] != ours[k]] if theirs else [])
    detail = f" (model fields that differ: {'; '.join(differing)})" if differing else ""
    return TrainingError(
        f"cannot start from {source.checkpoint_dir} step {step}: {problem}{detail}",
        hint="init.from_run loads parameters of the same shape: copy the model: section of the "
        "source run's config.yaml into this config (dtypes and remat may differ)")


def _check_params(source: InitSource, step: int, stored: dict[str, Any],
                  expected: dict[str, Any], model: ModelConfig) -> None:
    stored_params = {k: v for k, v in stored.items() if k.split("/", 1)[0] == PARAMS_KEY}
    if not stored_params:
        raise TrainingError(f"checkpoint step {step} in {source.checkpoint_dir} holds no '{PARAMS_KEY}'",
                        hint="point init.from_run at a run written by chinchax train")
    for name, target in expected.items():
        if name not in stored_params:
            raise _shape_mismatch(source, step, f"it has no parameter {name!r}", model)
        if tuple(stored_params[name].shape) != tuple(target.shape):
            raise _shape_mismatch(
                source, step, f"{name!r} is stored with shape {tuple(stored_params[name].shape)}, "
                f"this run's is {tuple(target.shape)}", model)
    surplus = sorted(set(stored_params) - set(expected))
    if surplus:
        raise _shape_mismatch(source, step, f"it has {len(surplus)} parameters this model lacks, "
                              f"first {surplus[0]!r}", model)


def _restore_target(stored_tree: Any, expected: dict[str, Any], like: dict[str, Any],
                    replicated: NamedSharding) -> Any:
    """The whole tree, since ``Checkpointer.restore`` refuses a partial one: other leaves are laid
    out like this run's leaf of that name and shape, else replicated."""

    def target(path: tuple, meta: Any) -> Any:
        name = _leaf_name(path)
        if name in expected:
            return expected[name]
        mine = like.get(name)
        if mine is not None and tuple(mine.shape) == tuple(meta.shape):
            return mine
        return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=replicated)

    return jax.tree_util.tree_map_with_path(target, stored_tree)


def _source_summary(source: InitSource) -> dict[str, Any]:
    """What the source run spent, for total-cost accounting."""
    summary = _read_mapping(source.run_dir / SUMMARY_NAME) if source.run_dir is not None else {}
    keys = {"run_name": "source_run_name", "steps": "source_steps", "tokens": "source_tokens",
            "flops": "source_flops", "final_eval_loss": "source_final_eval_loss"}
    return {ours: summary[theirs] for theirs, ours in keys.items() if theirs in summary}


def load_pretrained_params(path: str, abstract_state: dict[str, Any],
                           model: ModelConfig) -> tuple[Any, dict[str, Any]]:
    """Onto ``abstract_state["params"]``'s structure and shardings, whatever mesh wrote them;
    ``record`` (JSON) says what was loaded."""
    source = resolve_source(path)
    params_abstract = abstract_state[PARAMS_KEY]
    expected = named_leaves({PARAMS_KEY: params_abstract})
    like = named_leaves(abstract_state)
    replicated = NamedSharding(next(iter(expected.values())).sharding.mesh, PartitionSpec())
    reader = Checkpointer(source.checkpoint_dir, CheckpointConfig(async_save=False))
    try:
        step = source.step if source.step is not None else reader.latest_step()
        if step is None:
            raise TrainingError(f"init.from_run={path} holds no checkpoint", hint=missing_hint(path))
        stored_tree = read_stored_tree(source, step)
        _check_params(source, step, named_leaves(stored_tree), expected, model)
        target = _restore_target(stored_tree, expected, like, replicated)
        try:
            restored = reader.restore(step, target, fallback=False).state
        except CheckpointError as error:
            raise TrainingError(f"cannot start from {source.checkpoint_dir} step {step}: {error}",
                            hint="the files may be damaged; point init.from_run at an older "
                            f"step folder ({source.checkpoint_dir}/<step>)") from error
    finally:
        reader.close()
    by_name = named_leaves({PARAMS_KEY: restored[PARAMS_KEY]})
    params = jax.tree_util.tree_map_with_path(
        lambda p, _: by_name[_leaf_name((jax.tree_util.DictKey(PARAMS_KEY), *p))], params_abstract)
    record = {"from_run": path, "checkpoint_dir": str(source.checkpoint_dir), "step": int(step),
              **_source_summary(source)}
    log.info("initialised parameters from %s step %d", source.checkpoint_dir, step)
    return params, record
