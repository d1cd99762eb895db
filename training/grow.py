"""Growing a smaller run (HyperCloning) into this run's parameters, always at start-up, so a
config from ``chinchax grow`` and one written by hand take the same path.  Only parameters
travel; the optimiser state, step and data position stay this run's fresh ones."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import jax

from chinchax.errors import ChinchaxError, TrainingError
from models import grow_shape, hypercloning
from models.config import ModelConfig
from training.checkpoint import CheckpointConfig, Checkpointer
from training.config import InitConfig
from training.state import abstract
from training.init import (PARAMS_KEY, InitSource, missing_hint, named_leaves, source_model_fields,
                           read_stored_tree, load_pretrained_params, resolve_source)

log = logging.getLogger("chinchax.init")


def _growth_source(path: str) -> InitSource:
    """:func:`resolve_source` with messages naming ``init.grow_from``."""
    try:
        return resolve_source(path)
    except TrainingError as error:
        raise TrainingError(str(error).replace("init.from_run", "init.grow_from"),
                        hint=(error.hint or "").replace("init.from_run", "init.grow_from")) from None


def source_model_config(source: InitSource) -> Optional[ModelConfig]:
    """From the small run's config.yaml or summary.json."""
    fields = source_model_fields(source)
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
    grown = grow_shape.grow_config(source_model, factor)
    differing = grow_shape.shape_differences(grown, model)
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
    from flax import nnx

    from models.build import abstract_model

    _, params, _ = nnx.split(abstract_model(model), nnx.Param, ...)
    return params


def _check_stored_params(source: InitSource, step: int, stored: dict[str, Any],
                         expected: dict[str, Any]) -> None:
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
    """``narrow``: the source's shape with this run's numerics, to read its parameters into."""

    source: InitSource
    step: int
    narrow: ModelConfig
    stored: dict  # stored leaf name -> metadata (shape, dtype)


def check_growth(cfg: InitConfig, model: ModelConfig) -> GrowthSource:
    """Everything checkable without reading arrays; ``chinchax grow`` calls it before writing."""
    if cfg.grow_from is None:
        raise TrainingError("init.grow_from is not set", hint="name the smaller run to widen")
    factor = cfg.factor
    source = _growth_source(cfg.grow_from)
    source_model = source_model_config(source)
    if source_model is None:
        source_model = grow_shape.shrink_config(model, factor)
    check_growth_shapes(source_model, factor, model, cfg.grow_from)
    narrow = grow_shape.shrink_config(model, factor)
    reader = Checkpointer(source.checkpoint_dir, CheckpointConfig(async_save=False))
    try:
        step = source.step if source.step is not None else reader.latest_step()
    finally:
        reader.close()
    if step is None:
        raise TrainingError(f"init.grow_from={cfg.grow_from} holds no checkpoint",
                        hint=missing_hint(cfg.grow_from).replace("init.from_run", "init.grow_from"))
    stored = named_leaves(read_stored_tree(source, step))
    _check_stored_params(source, step, stored, named_leaves({PARAMS_KEY: _abstract_params(narrow)}))
    return GrowthSource(source, int(step), narrow, stored)


def _moments_like_params(stored: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """Moments are read and dropped, but must not sit replicated on every device meanwhile."""
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
    """The record keeps the source's tokens and FLOPs, so a total cost can include them."""
    growth = check_growth(cfg, model)
    wide_params = state[PARAMS_KEY]
    small = _abstract_params(growth.narrow)
    small_abstract = abstract(small, jax.tree.map(  # the narrow leaves laid out like the wide ones
        lambda s, w: hypercloning.narrow_sharding(w.sharding, s.shape), small, wide_params))
    expected = named_leaves({PARAMS_KEY: small_abstract})
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


def initialise_state(cfg: InitConfig, state: dict[str, Any],
                     model: ModelConfig) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """``state`` with only its parameters replaced; ``record`` None for a fresh initialisation."""
    if cfg.grow_from is not None:
        return grow_state(cfg, state, model)
    if cfg.from_run is None:
        return state, None
    params, record = load_pretrained_params(cfg.from_run, abstract(state), model)
    return {**state, PARAMS_KEY: params}, record
