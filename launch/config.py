"""Experiment files: YAML validated into frozen dataclasses, dotted overrides, budget resolution.

OmegaConf does the type checks and "did you mean"; its exceptions become one-line ConfigErrors.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chinchax.errors import ChinchaxError, ConfigError
from models.config import ModelConfig

from launch.distributed import DistributedConfig
from launch.runtime_env import RuntimeConfig, runtime_record
from models.sharding import MeshConfig
from scaling.allocate import BudgetConfig, plan_run
from scaling.prediction import PredictionConfig
from scaling.rundir import CONFIG_NAME, plan_for, plan_from_dict
from training.config import CheckpointConfig, InitConfig, RunConfig, TrainConfig
from training.data import DataConfig, vocab_size
from training.optim import OptimConfig
from training.wandb_sink import LoggingConfig

MAX_SEED = 2**32 - 1

# With a budget: section the allocator chooses these; a model: section may set only the rest
# (dtypes, remat, attention implementation, scanning).
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "mlp", "tie_embeddings", "use_bias")


@dataclass(frozen=True)
class ExperimentConfig:
    """With ``budget`` set, ``model`` (if any) only contributes non-shape fields."""

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
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # XLA flags, GPU memory share
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # logging.wandb: {project, entity, mode}

    def __post_init__(self) -> None:
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}"[:200],
                              hint="use e.g. seed: 0 (one seed per run of a sweep)")


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: nested aliases expand exponentially (billion laughs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "found an alias (*name); aliases are not "
                                              "supported", self.peek_event().start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what} is not valid YAML{where}: {problem}",
                          hint="check brackets, quotes and 'key: value' syntax there; anchors and "
                          "aliases (&a, *a) are not supported") from None
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply", hint="flatten it") from None


def read_text(path: Path, what: str = "config file") -> str:
    """A UTF-8 text file, or one :class:`ConfigError` (missing, unreadable, binary)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist",
                          hint="pass a YAML file such as configs/cpu_tiny.yaml") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}",
                          hint="pass a readable YAML file, not a directory or device") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})",
                          hint="is it a binary file? save the config as UTF-8 YAML") from None
    if "\x00" in text:
        raise ConfigError(f"{what} {path} holds NUL bytes: it is not a text file",
                          hint="pass a YAML file such as configs/cpu_tiny.yaml")
    return text


def read_yaml(path: Path) -> dict[str, Any]:
    data = parse_yaml(read_text(path), f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}",
                          hint="start it with keys such as 'name:', 'budget:' or 'model:'")
    return data


def _section_names() -> frozenset[str]:
    hints = typing.get_type_hints(ExperimentConfig)
    return frozenset(name for name, hint in hints.items()
                     if any(dataclasses.is_dataclass(t) for t in (hint, *typing.get_args(hint))))


def _check_section(key: str, value: Any, where: str) -> None:
    if key in _section_names() and value is not None and not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a section of keys, not {type(value).__name__} {value!r}"[:200],
                          hint=f"write e.g. {key}.KEY=VALUE, or {key}: {{KEY: VALUE}} in the file")


def _check_numbers(tree: Any, where: str) -> None:
    """Integers beyond a float's range: OmegaConf would fail converting them, without a key."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            _check_numbers(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, list):
        for value in tree:
            _check_numbers(value, where)
    elif isinstance(tree, int) and not isinstance(tree, bool) and abs(tree) > sys.float_info.max:
        raise ConfigError(f"{where}: the number {str(tree)[:12]}... ({len(str(abs(tree)))} digits) is too large",
                          hint="write a number below 1e308, e.g. 1e21 for FLOPs")


def _parse_overrides(overrides: Sequence[str]) -> list[str]:
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value"[:200],
                              hint="write dotted keys, e.g. train.steps=300 model.d_model=256")
        where = f"override {item!r}"[:120]
        parsed = parse_yaml(value, where)
        _check_section(key.strip(), parsed, where)
        _check_numbers(parsed, key.strip())
    return list(overrides)


def config_error(exc: OmegaConfBaseException) -> ConfigError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    message = (str(getattr(exc, "msg", None) or exc).splitlines() or ["invalid value"])[0][:300]
    where = f"{key}: " if key else ""
    if "Did you mean" in message:
        head, _, suggestion = message.partition("Did you mean")
        return ConfigError(f"{where}{head.strip()}", hint=f"did you mean{suggestion}")
    return ConfigError(f"{where}{message}", hint="see configs/*.yaml for valid keys and types")


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
            hint = (f"set budget.{key} instead" if key in ("mlp", "tie_embeddings", "use_bias") else
                    "remove it, or drop the budget: section to give the whole shape yourself")
            raise ConfigError(f"model.{key} is chosen by the allocator when a budget: section is given",
                              hint=hint)


def load_experiment(source: str | Path | dict[str, Any], overrides: Sequence[str] = ()) -> ExperimentConfig:
    data = source if isinstance(source, dict) else read_yaml(Path(source))
    for key, value in data.items():
        _check_section(str(key), value, "config")
    _check_numbers(data, "")
    overrides = _parse_overrides(overrides)
    _check_budget_model_fields(data, overrides)
    schema = OmegaConf.structured(ExperimentConfig)
    OmegaConf.set_readonly(schema, False)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(data))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise config_error(exc) from None
    except yaml.YAMLError:
        raise ConfigError(f"an override in {list(overrides)} is not valid YAML"[:200],
                          hint="quote values fully, e.g. budget.head_dims=[32,64]") from None
    except TypeError as exc:  # e.g. a dotted key into one item of a list
        raise ConfigError(f"override cannot be applied: {exc}",
                          hint="override a whole list at once, e.g. data.mixture='[{...}, {...}]'") from None
    experiment = _to_object(merged)
    _check_paths(experiment)
    return experiment


def _check_paths(exp: ExperimentConfig) -> None:
    cache = exp.data.cache_dir
    if cache and Path(cache).expanduser().exists() and not Path(cache).expanduser().is_dir():
        raise ConfigError(f"data.cache_dir={cache} is a file, not a directory",
                          hint="point data.cache_dir at a directory (it is created if missing)")


def data_parallel_size(mesh: MeshConfig, n_devices: int | None = None) -> int:
    """Data × fsdp, across slices; without ``n_devices`` (planning off the training machine) a
    ``-1`` axis counts as 1."""
    if n_devices is None:
        data, fsdp = max(mesh.data, 1), max(mesh.fsdp, 1)
    else:
        data, fsdp, _tensor = mesh.ici_shape(n_devices)
    return data * fsdp * mesh.dcn_data * mesh.dcn_fsdp


def _check_budget_echoes(budget: BudgetConfig, seq_len: int, vocab: int) -> None:
    """budget.seq_len/vocab_size come from train: and the tokenizer; a differing value is refused,
    not silently ignored."""
    for key, value, source in (("seq_len", seq_len, "train.seq_len"), ("vocab_size", vocab, "the tokenizer")):
        given = getattr(budget, key)
        if given != getattr(BudgetConfig, key) and given != value:
            raise ConfigError(f"budget.{key}={given} would be ignored: it comes from {source} ({value})",
                              hint=f"remove budget.{key}" + (", set train.seq_len" if key == "seq_len" else ""))


def resolve(exp: ExperimentConfig, *, data_parallel: int | None = None) -> RunConfig:
    """``data_parallel`` defaults to the mesh section's explicit axes; the launcher passes the real one."""
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
                         seed=exp.seed, plan=plan_for(model, exp.train.seq_len),
                         runtime=runtime_record(exp.runtime, os.environ), logging=exp.logging)

    _check_budget_echoes(exp.budget, exp.train.seq_len, vocab)
    budget = dataclasses.replace(exp.budget, seq_len=exp.train.seq_len, vocab_size=vocab)
    if exp.train.global_batch is not None and budget.global_batch is None:
        budget = dataclasses.replace(budget, global_batch=exp.train.global_batch)
    plan = plan_run(budget, data_parallel=dp * exp.train.grad_accum_steps, base_model=exp.model)
    train = dataclasses.replace(exp.train, steps=exp.train.steps or plan.steps,
                                global_batch=plan.global_batch)
    optim = exp.optim
    if plan.learning_rate is not None:  # budget.learning_rate, else the budget's rule
        optim = dataclasses.replace(optim, learning_rate=plan.learning_rate)
    prediction = exp.prediction
    if prediction.law is None:  # predict with the law that sized the run
        prediction = dataclasses.replace(prediction, law=budget.law)
    return RunConfig(name=exp.name, run_dir=run_dir, model=plan.model, train=train, data=exp.data,
                     optim=optim, mesh=exp.mesh, checkpoint=exp.checkpoint, prediction=prediction,
                     init=exp.init, seed=exp.seed,
                     plan=plan_for(plan.model, train.seq_len, plan.to_dict()),
                     runtime=runtime_record(exp.runtime, os.environ), logging=exp.logging)


def run_config_to_yaml(cfg: RunConfig) -> str:
    return cfg.to_yaml()


def load_run_config(path: str | Path) -> RunConfig:
    data = read_yaml(Path(path))
    stored_plan = data.pop("plan", None)
    schema = OmegaConf.structured(RunConfig(name="", run_dir="", model=ModelConfig(),
                                            train=TrainConfig()))
    OmegaConf.set_readonly(schema, False)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(data))
        cfg: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise config_error(exc) from None
    return dataclasses.replace(cfg, plan=plan_from_dict(stored_plan, cfg.model, cfg.train.seq_len))


def read_run_dir_config(run_dir: str | Path) -> RunConfig:
    config = Path(run_dir) / CONFIG_NAME
    if not config.is_file():
        raise ConfigError(f"{run_dir} has no {CONFIG_NAME}",
                          hint="pass a run directory written by chinchax train (runs/<name>)")
    return load_run_config(config)
