"""Where a run's parameters come from: fresh initialisation, or another run's checkpoint.

Continual pre-training (CPT) starts a model from the parameters a finished run left behind
and trains it on new data.  Only the *parameters* travel: the optimiser state, the step and
the data position are the new run's own, so the new run warms up and decays on its own
schedule (``optim.warmup_steps`` / ``warmup_fraction`` as usual) and its token and FLOP
counts start at zero (``D`` of the CPT law counts continual-training tokens only).

Written in a config as::

    init:
      from_run: runs/python     # a run directory, its checkpoints/ folder, or one step folder

``from`` would read better but is a Python keyword, so the dataclass field and the YAML key
are both ``from_run``.  A run directory means its newest checkpoint; ``.../checkpoints/300``
picks step 300.  The source must have the same parameter shapes as this run (copy the
source's ``model:`` section); a mismatch is one :class:`TrainingError` naming the fields that
differ.

Why the trainer applies it only to a run directory without checkpoints: once a CPT run has
saved its own state, a restart must resume *that* state (parameters it has since updated,
its optimiser moments, its data position), exactly as any other run resumes.  What was
loaded is recorded in the run's checkpoints and in ``summary.json`` (``init``), so a resumed
run still says where it started.

Why the whole stored tree is read.  :meth:`training.checkpoint.Checkpointer.restore` reads a
complete checkpoint tree (it refuses a tree with fewer leaves, which protects every ordinary
resume), so the source's optimiser state is read along with its parameters and dropped at
once.  The moments are laid out like this run's parameters where the trees agree, so the
transient cost is one optimiser state's worth of memory, spread like the parameters.

``grow_from`` and ``factor`` start from a *smaller* model widened by an integer factor
(HyperCloning, ``models/hypercloning.py``): see :func:`grow_state` at the end of this module.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
import yaml
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec

from chinchax.errors import ChinchaxError, CheckpointError, TrainingError
from models import hypercloning
from models.config import ModelConfig

from training.checkpoint import STATE_ITEM, CheckpointConfig, Checkpointer

log = logging.getLogger("chinchax.init")

CHECKPOINTS_DIR = "checkpoints"  # what the trainer names the folder inside a run directory
PARAMS_KEY = "params"  # the parameters' subtree of a trainer checkpoint


@dataclass(frozen=True)
class InitConfig:
    """Where the parameters of a new run come from (the ``init:`` section).

    All unset: fresh random parameters.  ``from_run``: the newest checkpoint of that run
    directory (or of that ``checkpoints/`` folder, or that one step folder), same shape.
    ``grow_from`` and ``factor``: the newest checkpoint of a smaller run, widened ``factor``
    times by HyperCloning (``variant`` ``symmetric`` or ``noisy``; ``noise_scale`` and
    ``noise_seed`` for the noisy one); this run's model must be the grown shape.
    """

    from_run: Optional[str] = None
    grow_from: Optional[str] = None
    factor: int = 1
    variant: str = "symmetric"
    noise_scale: float = hypercloning.DEFAULT_NOISE_SCALE  # noise std / cloned block std
    noise_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("from_run", "grow_from"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise TrainingError(f"init.{name} is an empty path",
                                hint=f"name a run directory, e.g. init.{name}=runs/python, or "
                                "leave it unset")
        if self.from_run is not None and self.grow_from is not None:
            raise TrainingError("init.from_run and init.grow_from are both set",
                            hint="from_run loads a model of the same shape, grow_from widens a "
                            "smaller one: keep one of them")
        if self.factor < 1:
            raise TrainingError(f"init.factor={self.factor} must be a positive integer",
                            hint="the widening factor is 2, 3, ... (1 means no widening)")
        if self.factor != 1 and self.grow_from is None:
            raise TrainingError(f"init.factor={self.factor} is set without init.grow_from",
                            hint="set init.grow_from to the smaller run to widen, or drop "
                            "init.factor")
        _check_growth_settings(self)

    @property
    def active(self) -> bool:
        """Whether the run starts from another run's parameters at all."""
        return self.from_run is not None or self.grow_from is not None


@dataclass(frozen=True)
class InitSource:
    """A ``from_run`` path resolved: the checkpoint folder, the step (None: newest) and the
    run directory around it, when there is one (for its config.yaml and summary.json)."""

    checkpoint_dir: epath.Path
    step: Optional[int]
    run_dir: Optional[epath.Path]


def _has_steps(directory: epath.Path) -> bool:
    return any(child.name.isdigit() for child in directory.iterdir())


def _missing_hint(path: str) -> str:
    return (f"train the source run first (its run directory then holds {CHECKPOINTS_DIR}/), or "
            f"point init.from_run at a run directory that has one instead of {path}")


def resolve_source(path: str) -> InitSource:
    """Tell a run directory, a ``checkpoints/`` folder and a single step folder apart."""
    # orbax wants absolute paths; a URL (gs://...) is left as it is
    where = epath.Path(path if "://" in path else os.path.abspath(path))
    if not where.exists():
        raise TrainingError(f"init.from_run={path} does not exist", hint=_missing_hint(path))
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
    if not _has_steps(resolved.checkpoint_dir):
        raise TrainingError(f"init.from_run={path} holds no checkpoint", hint=_missing_hint(path))
    return resolved


# -- reading the stored tree ------------------------------------------------------------------


def _key_name(key: Any) -> str:
    """One path component as ``training.checkpoint`` names it (dict key, attribute, index)."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _leaf_name(path: tuple) -> str:
    return "/".join(_key_name(k) for k in path)


def _named_leaves(tree: Any) -> dict[str, Any]:
    return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _stored_tree(source: InitSource, step: int) -> Any:
    """The stored state's metadata tree (shape and dtype of every leaf), read without arrays."""
    try:
        return ocp.StandardCheckpointHandler().metadata(
            source.checkpoint_dir / str(step) / STATE_ITEM).tree
    except Exception as error:
        raise TrainingError(f"cannot read checkpoint step {step} in {source.checkpoint_dir}: {error}",
                        hint="the files may be damaged; point init.from_run at an older step "
                        f"folder ({source.checkpoint_dir}/<step>)") from error


def _read_mapping(path: epath.Path) -> dict[str, Any]:
    """A YAML or JSON file of the source run as a dict ({} if absent or unreadable)."""
    try:
        if not path.exists():
            return {}
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _source_model(source: InitSource) -> Optional[dict[str, Any]]:
    """The source run's model fields: its resolved config.yaml, else its summary.json."""
    if source.run_dir is None:
        return None
    for name in ("config.yaml", "summary.json"):
        model = _read_mapping(source.run_dir / name).get("model")
        if isinstance(model, dict):
            return model
    return None


def _shape_mismatch(source: InitSource, step: int, problem: str, model: ModelConfig) -> TrainingError:
    """A shape error that names the model fields that differ, when the source's config says."""
    theirs = _source_model(source)
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
    """The whole stored tree as restore targets: parameters onto this run's shardings, other
    leaves laid out like this run's leaf of the same name and shape, else replicated."""

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
    """Tokens and FLOPs the source run spent (from its summary.json), for total-cost accounting."""
    summary = _read_mapping(source.run_dir / "summary.json") if source.run_dir is not None else {}
    keys = {"run_name": "source_run_name", "steps": "source_steps", "tokens": "source_tokens",
            "flops": "source_flops", "final_eval_loss": "source_final_eval_loss"}
    return {ours: summary[theirs] for theirs, ours in keys.items() if theirs in summary}


def load_pretrained_params(path: str, abstract_state: dict[str, Any],
                           model: ModelConfig) -> tuple[Any, dict[str, Any]]:
    """Read the parameters of the checkpoint at ``path`` onto ``abstract_state["params"]``.

    ``abstract_state`` is this run's state tree of ``jax.ShapeDtypeStruct`` leaves with
    shardings (the current mesh's): the parameters come back in exactly that structure and
    layout, whatever mesh wrote them.  Returns ``(params, record)``; the record (JSON) says
    what was loaded: the path, the checkpoint folder and step, and the source run's tokens
    and FLOPs when its summary.json is there.
    """
    source = resolve_source(path)
    params_abstract = abstract_state[PARAMS_KEY]
    expected = _named_leaves({PARAMS_KEY: params_abstract})
    like = _named_leaves(abstract_state)
    replicated = NamedSharding(next(iter(expected.values())).sharding.mesh, PartitionSpec())
    reader = Checkpointer(source.checkpoint_dir, CheckpointConfig(async_save=False))
    try:
        step = source.step if source.step is not None else reader.latest_step()
        if step is None:
            raise TrainingError(f"init.from_run={path} holds no checkpoint", hint=_missing_hint(path))
        stored_tree = _stored_tree(source, step)
        _check_params(source, step, _named_leaves(stored_tree), expected, model)
        target = _restore_target(stored_tree, expected, like, replicated)
        try:
            restored = reader.restore(step, target, fallback=False).state
        except CheckpointError as error:
            raise TrainingError(f"cannot start from {source.checkpoint_dir} step {step}: {error}",
                            hint="the files may be damaged; point init.from_run at an older "
                            f"step folder ({source.checkpoint_dir}/<step>)") from error
    finally:
        reader.close()
    by_name = _named_leaves({PARAMS_KEY: restored[PARAMS_KEY]})
    params = jax.tree_util.tree_map_with_path(
        lambda p, _: by_name[_leaf_name((jax.tree_util.DictKey(PARAMS_KEY), *p))], params_abstract)
    record = {"from_run": path, "checkpoint_dir": str(source.checkpoint_dir), "step": int(step),
              **_source_summary(source)}
    log.info("initialised parameters from %s step %d", source.checkpoint_dir, step)
    return params, record


def initialise_state(cfg: InitConfig, state: dict[str, Any],
                     model: ModelConfig) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """The trainer's entry point: ``state`` with its parameters replaced as ``cfg`` says.

    Returns ``(state, record)``; ``record`` is None for a fresh initialisation.  The optimiser
    state, step and everything else in ``state`` are kept as they are (fresh).
    """
    if cfg.grow_from is not None:
        return grow_state(cfg, state, model)
    if cfg.from_run is None:
        return state, None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    params, record = load_pretrained_params(cfg.from_run, abstract, model)
    return {**state, PARAMS_KEY: params}, record


# -- growing a smaller run (HyperCloning) -----------------------------------------------------
#
# One code path: ``chinchax grow`` only checks the source and writes a config whose ``init:``
# names the small run and whose ``model:`` is the grown shape; the widening itself always
# happens here, when the grown run starts (a config written by hand works the same way).  The
# small checkpoint is read straight onto this run's mesh (shardings derived from the wide
# parameters'), widened by one jitted function whose outputs are laid out as this run's
# parameters, and the optimiser state, step and data position stay this run's fresh ones.


def _check_growth_settings(cfg: InitConfig) -> None:
    """Validate the HyperCloning fields of ``init:`` (called from ``InitConfig.__post_init__``)."""
    try:
        hypercloning.check_variant(cfg.variant, cfg.noise_scale)
    except ChinchaxError as error:
        raise TrainingError(f"init: {error}", hint=error.hint) from None
    if cfg.grow_from is not None and cfg.factor < 2:
        raise TrainingError(f"init.grow_from is set but init.factor={cfg.factor}",
                        hint="set init.factor to the widening factor (2, 3, ...); to load a "
                        "model of the same shape use init.from_run instead")


def _growth_source(path: str) -> InitSource:
    """:func:`resolve_source`, with its messages naming ``init.grow_from``."""
    try:
        return resolve_source(path)
    except TrainingError as error:
        raise TrainingError(str(error).replace("init.from_run", "init.grow_from"),
                        hint=(error.hint or "").replace("init.from_run", "init.grow_from")) from None


def source_model_config(source: InitSource) -> Optional[ModelConfig]:
    """The small run's ModelConfig from its config.yaml / summary.json (None without them)."""
    fields = _source_model(source)
    if fields is None:
        return None
    known = set(ModelConfig.__dataclass_fields__)
    try:
        return ModelConfig(**{k: v for k, v in fields.items() if k in known})
    except (ChinchaxError, TypeError) as error:
        raise TrainingError(f"the model: section of {source.run_dir}'s config is invalid: {error}",
                        hint="point init.grow_from at a run written by chinchax train") from None


def check_growth_shapes(source_model: ModelConfig, factor: int, model: ModelConfig,
                        grow_from: str) -> None:
    """This run's model must be exactly the source's grown ``factor`` times (same layout)."""
    grown = hypercloning.grow_config(source_model, factor)
    differing = hypercloning.shape_differences(grown, model)
    if differing:
        raise TrainingError(
            f"init.grow_from={grow_from} widened {factor}x is not this run's model: "
            f"{'; '.join(differing)}",
            hint=f"write the grown run with `chinchax grow {grow_from} --factor {factor} --out "
            "NEW_RUN_DIR`, or set those model fields")
    if source_model.scan_layers != model.scan_layers:
        raise TrainingError(
            f"init.grow_from={grow_from} has model.scan_layers={source_model.scan_layers} but this "
            f"run has model.scan_layers={model.scan_layers}",
            hint=f"set model.scan_layers={source_model.scan_layers} (the parameter layout must match)")


def _abstract_params(model: ModelConfig) -> Any:
    """The parameter tree (``ShapeDtypeStruct`` leaves) of the model ``model`` builds."""
    from flax import nnx

    from models.transformer import Transformer

    _, params, _ = nnx.split(nnx.eval_shape(lambda: Transformer(model, rngs=nnx.Rngs(0))),
                             nnx.Param, ...)
    return params


def _check_stored_params(source: InitSource, step: int, stored: dict[str, Any],
                         expected: dict[str, Any]) -> None:
    """The small checkpoint must hold the parameters its own config describes."""
    hint = ("the checkpoint was written by a model other than the one its config.yaml names: "
            "point init.grow_from at the run that wrote it, or restore that run's config.yaml")
    stored_params = {k: v for k, v in stored.items() if k.split("/", 1)[0] == PARAMS_KEY}
    if not stored_params:
        raise TrainingError(f"checkpoint step {step} in {source.checkpoint_dir} holds no "
                        f"'{PARAMS_KEY}'", hint="point init.grow_from at a run written by "
                        "chinchax train")
    for name, target in expected.items():
        if name not in stored_params:
            raise TrainingError(f"checkpoint step {step} in {source.checkpoint_dir} has no {name!r}",
                            hint=hint)
        if tuple(stored_params[name].shape) != tuple(target.shape):
            raise TrainingError(f"checkpoint step {step} in {source.checkpoint_dir} stores {name!r} "
                            f"with shape {tuple(stored_params[name].shape)}, but the source "
                            f"model gives {tuple(target.shape)}", hint=hint)
    surplus = sorted(set(stored_params) - set(expected))
    if surplus:
        raise TrainingError(f"checkpoint step {step} in {source.checkpoint_dir} has parameters the "
                        f"source model lacks, first {surplus[0]!r}", hint=hint)


@dataclass(frozen=True)
class GrowthSource:
    """A checked ``init.grow_from``: where its checkpoint is, which step, and the narrow model
    (the source's shape with this run's numerics) that its parameters are read into."""

    source: InitSource
    step: int
    narrow: ModelConfig
    stored: dict  # stored leaf name -> metadata (shape, dtype)


def check_growth(cfg: InitConfig, model: ModelConfig) -> GrowthSource:
    """Everything about ``init.grow_from`` that can be checked without reading arrays.

    The small model's shape comes from the source run's config.yaml (without one: this model
    narrowed by the factor); this run's model must be that shape grown, and the source's
    checkpoint must hold parameters of that shape.  Used by the trainer and by ``chinchax
    grow`` (which checks before writing a run directory).
    """
    if cfg.grow_from is None:
        raise TrainingError("init.grow_from is not set", hint="name the smaller run to widen")
    factor = cfg.factor
    source = _growth_source(cfg.grow_from)
    source_model = source_model_config(source)
    if source_model is None:
        source_model = hypercloning.shrink_config(model, factor)
    check_growth_shapes(source_model, factor, model, cfg.grow_from)
    narrow = hypercloning.shrink_config(model, factor)
    reader = Checkpointer(source.checkpoint_dir, CheckpointConfig(async_save=False))
    try:
        step = source.step if source.step is not None else reader.latest_step()
    finally:
        reader.close()
    if step is None:
        raise TrainingError(f"init.grow_from={cfg.grow_from} holds no checkpoint",
                        hint=_missing_hint(cfg.grow_from).replace("init.from_run", "init.grow_from"))
    stored = _named_leaves(_stored_tree(source, step))
    _check_stored_params(source, step, stored, _named_leaves({PARAMS_KEY: _abstract_params(narrow)}))
    return GrowthSource(source, int(step), narrow, stored)


def _moments_like_params(stored: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Restore targets for the stored optimiser moments, laid out like their parameters (they
    are read and dropped, but should not sit replicated on every device meanwhile)."""
    by_suffix = {name.split("/", 1)[1]: target for name, target in expected.items()}
    like: dict[str, Any] = {}
    for name, meta in stored.items():
        if name.split("/", 1)[0] == PARAMS_KEY:
            continue
        for suffix, target in by_suffix.items():
            if name.endswith("/" + suffix) and tuple(meta.shape) == tuple(target.shape):
                like[name] = target
                break
    return like


def grow_state(cfg: InitConfig, state: dict[str, Any],
               model: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``state`` with its parameters taken from ``cfg.grow_from`` widened ``cfg.factor`` times.

    Returns ``(state, record)`` like :func:`initialise_state`; the record says ``grow_from``,
    ``factor``, ``variant`` (with the noise settings), the checkpoint and step read, and the
    source run's tokens and FLOPs (so a total cost can include the small model's).
    """
    growth = check_growth(cfg, model)
    wide_params = state[PARAMS_KEY]
    def onto_wide_mesh(small: Any, wide: Any) -> jax.ShapeDtypeStruct:
        sharding = hypercloning.narrow_sharding(wide.sharding, small.shape)
        return jax.ShapeDtypeStruct(small.shape, small.dtype, sharding=sharding)

    small_abstract = jax.tree.map(onto_wide_mesh, _abstract_params(growth.narrow), wide_params)
    expected = _named_leaves({PARAMS_KEY: small_abstract})
    step_path = str(growth.source.checkpoint_dir / str(growth.step))
    small_params, loaded = load_pretrained_params(
        step_path, {PARAMS_KEY: small_abstract, **_moments_like_params(growth.stored, expected)},
        growth.narrow)
    params = hypercloning.grow_params(
        small_params, growth.narrow, cfg.factor, variant=cfg.variant, noise_scale=cfg.noise_scale,
        rng=jax.random.key(cfg.noise_seed),
        out_shardings=jax.tree.map(lambda x: x.sharding, wide_params))
    loaded.pop("from_run", None)
    record = {"grow_from": cfg.grow_from, "factor": cfg.factor, "variant": cfg.variant,
              **({"noise_scale": cfg.noise_scale, "noise_seed": cfg.noise_seed}
                 if cfg.variant == "noisy" else {}), **loaded}
    log.info("grew %s step %d by %dx (%s) to d_model=%d", growth.source.checkpoint_dir,
             growth.step, cfg.factor, cfg.variant, model.d_model)
    return {**state, PARAMS_KEY: params}, record
