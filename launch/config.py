"""Experiment files: YAML validated into frozen dataclasses, dotted overrides, budget resolution.

A YAML experiment names either a ``model:`` (explicit shape) or a ``budget:`` (FLOPs and a law);
:func:`resolve` turns it into the :class:`training.config.RunConfig` the trainer runs, asking the
allocator for shape, batch, steps and learning rate when a budget is given.  Parsing, type
checking and "did you mean" suggestions come from OmegaConf structured configs; this module only
translates their exceptions into one-line :class:`ConfigError` messages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chinchax.errors import ChinchaxError, ConfigError
from models.config import ModelConfig

from launch.distributed import DistributedConfig
from models.sharding import MeshConfig
from scaling.allocate import BudgetConfig, plan_run
from scaling.prediction import PredictionConfig
from training.checkpoint import CheckpointConfig
from training.config import RunConfig, TrainConfig
from training.data import DataConfig, vocab_size
from training.init import InitConfig
from training.optim import OptimConfig
from training.wandb_sink import LoggingConfig

RESOLVED_CONFIG_NAME = "config.yaml"

# With a budget: section the allocator chooses these; a model: section may set only the rest
# (dtypes, remat, attention implementation, scanning).
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "mlp", "tie_embeddings", "use_bias")


@dataclass(frozen=True)
class ExperimentConfig:
    """The schema of ``configs/*.yaml``.

    ``budget`` set: the allocator picks shape, batch, steps and learning rate, and ``model`` (if
    any) only contributes non-shape fields.  ``budget`` unset: ``model`` is the shape.
    """

    name: str = "run"
    run_dir: Optional[str] = None  # default: runs/<name>
    seed: int = 0
    model: Optional[ModelConfig] = None
    budget: Optional[BudgetConfig] = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    prediction: PredictionConfig = field(default_factory=PredictionConfig)
    init: InitConfig = field(default_factory=InitConfig)  # init.from_run: continue from a run
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # logging.wandb: {project, entity, mode}


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``, or one :class:`ConfigError` naming what is wrong with it."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist",
                          hint="pass a YAML file such as configs/cpu_tiny.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}",
                          hint="check indentation and 'key: value' syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}",
                          hint="start it with keys such as 'name:', 'budget:' or 'model:'")
    return data


def _parse_overrides(overrides: Sequence[str]) -> list[str]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value",
                              hint="write dotted keys, e.g. train.steps=300 model.d_model=256")
    return list(overrides)


def config_error(exc: OmegaConfBaseException) -> ConfigError:
    """An OmegaConf validation error as one line (the key, the problem) plus a hint."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    message = str(getattr(exc, "msg", exc)).splitlines()[0]
    if "Did you mean" in message:
        head, _, suggestion = message.partition("Did you mean")
        return ConfigError(f"{key}: {head.strip()}", hint=f"did you mean{suggestion}")
    return ConfigError(f"{key}: {message}", hint="see configs/*.yaml for valid keys and types")


def _to_object(merged: Any) -> ExperimentConfig:
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ChinchaxError as exc:  # a dataclass __post_init__ rejected a value
        raise ConfigError(str(exc), hint=exc.hint) from None
    except OmegaConfBaseException as exc:
        raise config_error(exc) from None


def _check_budget_model_fields(data: dict[str, Any], overrides: Sequence[str]) -> None:
    has_budget = bool(data.get("budget")) or any(o.startswith("budget.") for o in overrides)
    if not has_budget:
        return
    named = set((data.get("model") or {}).keys())
    named |= {o.split("=", 1)[0].split(".", 1)[1] for o in overrides if o.startswith("model.")}
    for key in SHAPE_FIELDS:
        if key in named:
            budget_key = {"mlp": "mlp", "tie_embeddings": "tie_embeddings", "use_bias": "use_bias"}
            hint = (f"set budget.{budget_key[key]} instead" if key in budget_key else
                    "remove it, or drop the budget: section to give the whole shape yourself")
            raise ConfigError(f"model.{key} is chosen by the allocator when a budget: section is given",
                              hint=hint)


def load_experiment(source: str | Path | dict[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML file (or a dict), apply ``key=value`` overrides, validate everything.

    With a ``budget:`` section a ``model:`` section may still set the non-shape fields
    (dtypes, remat, attention implementation, scanning); the allocator picks the shape.
    """
    data = source if isinstance(source, dict) else read_yaml(Path(source))
    _check_budget_model_fields(data, _parse_overrides(overrides))
    schema = OmegaConf.structured(ExperimentConfig)
    OmegaConf.set_readonly(schema, False)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(data))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(_parse_overrides(overrides)))
    except OmegaConfBaseException as exc:
        raise config_error(exc) from None
    except TypeError as exc:  # e.g. a dotted key into one item of a list
        raise ConfigError(f"override cannot be applied: {exc}",
                          hint="override a whole list at once, e.g. data.mixture='[{...}, {...}]'") from None
    return _to_object(merged)


def data_parallel_size(mesh: MeshConfig, n_devices: int | None = None) -> int:
    """Ways the global batch is split (data × fsdp, across slices too).

    With ``n_devices`` the ``-1`` axis is resolved; without, it counts as 1 (planning on a
    machine that is not the one that will train).
    """
    if n_devices is None:
        data, fsdp = max(mesh.data, 1), max(mesh.fsdp, 1)
    else:
        data, fsdp, _tensor = mesh.ici_shape(n_devices)
    return data * fsdp * mesh.dcn_data * mesh.dcn_fsdp


def resolve(exp: ExperimentConfig, *, data_parallel: int | None = None) -> RunConfig:
    """Turn an experiment into a run: the allocator fills shape, batch, steps, learning rate.

    ``data_parallel`` (devices the batch is split over) defaults to what the mesh section
    names explicitly; the launcher passes the real number once devices are known.
    """
    if exp.model is None and exp.budget is None:
        raise ConfigError("the config has neither a model: nor a budget: section",
                          hint="add budget: {flops: 3e13} or an explicit model: shape")
    run_dir = exp.run_dir or str(Path("runs") / exp.name)
    vocab = vocab_size(exp.data)
    dp = data_parallel or data_parallel_size(exp.mesh)
    if exp.budget is None:
        assert exp.model is not None
        model = exp.model
        if model.vocab_size < vocab:
            raise ConfigError(
                f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's {vocab}",
                hint=f"set model.vocab_size to at least {vocab}")
        if exp.train.steps is None or exp.train.global_batch is None:
            raise ConfigError("an explicit model: needs train.steps and train.global_batch",
                              hint="set both, or replace model: by a budget: section")
        return RunConfig(name=exp.name, run_dir=run_dir, model=model, train=exp.train,
                         data=exp.data, optim=exp.optim, mesh=exp.mesh,
                         checkpoint=exp.checkpoint, prediction=exp.prediction, init=exp.init,
                         seed=exp.seed, logging=exp.logging)

    budget = dataclasses.replace(exp.budget, seq_len=exp.train.seq_len, vocab_size=vocab)
    if exp.train.global_batch is not None and budget.global_batch is None:
        budget = dataclasses.replace(budget, global_batch=exp.train.global_batch)
    plan = plan_run(budget, data_parallel=dp * exp.train.grad_accum_steps, base_model=exp.model)
    train = dataclasses.replace(exp.train, steps=exp.train.steps or plan.steps,
                                global_batch=plan.global_batch)
    optim = exp.optim
    if budget.learning_rate is None and plan.learning_rate is not None:
        optim = dataclasses.replace(optim, learning_rate=plan.learning_rate)
    prediction = exp.prediction
    if prediction.law is None:  # predict with the law that sized the run
        prediction = dataclasses.replace(prediction, law=budget.law)
    return RunConfig(name=exp.name, run_dir=run_dir, model=plan.model, train=train, data=exp.data,
                     optim=optim, mesh=exp.mesh, checkpoint=exp.checkpoint, prediction=prediction,
                     init=exp.init, seed=exp.seed, plan=plan.to_dict(), logging=exp.logging)


def run_config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (what the trainer writes into the run directory)."""
    return cfg.to_yaml()


def load_run_config(path: str | Path) -> RunConfig:
    """Read back a resolved ``config.yaml`` from a run directory."""
    data = read_yaml(Path(path))
    schema = OmegaConf.structured(RunConfig(name="", run_dir="", model=ModelConfig(),
                                            train=TrainConfig()))
    OmegaConf.set_readonly(schema, False)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(data))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise config_error(exc) from None
