"""Starting a run from another run's parameters (init.from_run): continual pre-training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from chinchax.errors import ConfigError, TrainingError
from launch.config import load_experiment, resolve
from models.sharding import make_mesh
from training.checkpoint import CheckpointConfig, Checkpointer
from training.data import build_train_iterator, to_global_batch
from training.config import InitConfig
from training.grow import initialise_state
from training.init import load_pretrained_params, resolve_source
from training.metrics import read_records
from training.step import make_eval_step
from training.state import initial_train_state
from training.trainer import train

MODEL = {"vocab_size": 257, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64}
SOURCE_STEPS, CPT_STEPS = 6, 4


def language(seed: int) -> dict[str, Any]:
    """A small synthetic language; another ``synthetic_seed`` is another language."""
    return {
        "source": "synthetic",
        "synthetic_seed": seed,
        "synthetic_documents": 48,
        "synthetic_document_length": 1024,
        "validation_fraction": 0.1,
    }


def experiment(run_dir: Path, cache: Path, **sections: Any) -> dict[str, Any]:
    exp: dict[str, Any] = {
        "name": run_dir.name,
        "run_dir": str(run_dir),
        "model": dict(MODEL),
        "data": {"cache_dir": str(cache), **language(0)},
        "train": {
            "steps": SOURCE_STEPS,
            "global_batch": 8,
            "seq_len": 32,
            "log_every": 1,
            "eval_every": 100,
            "eval_batches": 1,
        },
        "optim": {"learning_rate": 1e-2, "warmup_steps": 2},
        "checkpoint": {"every_steps": 3, "keep_last": 2},
    }
    for key, value in sections.items():
        exp[key] = {**exp.get(key, {}), **value} if isinstance(value, dict) else value
    return exp


def cpt_experiment(run_dir: Path, cache: Path, source: Path, **sections: Any) -> dict[str, Any]:
    """CPT onto language 1 with 25% replay of language 0, on another mesh than the source's."""
    mixture = [
        {"name": "new", "weight": 0.75, **language(1)},
        {"name": "old", "weight": 0.25, "role": "replay", **language(0)},
    ]
    base = {
        "init": {"from_run": str(source)},
        "data": {"cache_dir": str(cache), "mixture": mixture},
        "train": {"steps": CPT_STEPS},
        "mesh": {"data": -1, "fsdp": 2},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return experiment(run_dir, cache, **base)


def run(exp: dict[str, Any]) -> dict[str, Any]:
    return train(resolve(load_experiment(exp)))


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_records(run_dir, "train")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cpt-cache")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A finished run on language 0: checkpoints at steps 3 and 6."""
    run_dir = tmp_path_factory.mktemp("source") / "run"
    assert run(experiment(run_dir, cache))["status"] == "complete"
    return run_dir


@pytest.fixture(scope="module")
def straight_cpt(tmp_path_factory: pytest.TempPathFactory, cache: Path, source: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("cpt") / "run"
    run(cpt_experiment(run_dir, cache, source))
    return run_dir


@pytest.fixture(scope="module")
def cpt_start(
    tmp_path_factory: pytest.TempPathFactory, cache: Path, source: Path
) -> dict[str, Any]:
    """The CPT run's config, mesh, and fresh state (built the trainer's way), unrun."""
    cfg = resolve(
        load_experiment(cpt_experiment(tmp_path_factory.mktemp("unrun") / "run", cache, source))
    )
    mesh = make_mesh(cfg.mesh)
    graphdef, state, _ = initial_train_state(cfg, mesh)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )
    return {"cfg": cfg, "mesh": mesh, "graphdef": graphdef, "state": state, "abstract": abstract}


def test_a_cpt_run_starts_from_the_source_parameters(
    source: Path, straight_cpt: Path, cpt_start: dict[str, Any]
) -> None:
    cfg, mesh = cpt_start["cfg"], cpt_start["mesh"]
    with Checkpointer(source / "checkpoints", CheckpointConfig()) as reader:  # the ordinary way
        source_final = reader.restore(None, cpt_start["abstract"]).state
    batch = next(
        build_train_iterator(cfg.data, seq_len=cfg.train.seq_len, global_batch=cfg.global_batch)
    )
    batch = to_global_batch(batch, mesh)
    loss_of = jax.jit(make_eval_step(cpt_start["graphdef"]))
    first_step = step_losses(straight_cpt)[1]
    assert first_step == pytest.approx(float(loss_of(source_final, batch)), rel=1e-5)
    # a fresh model is far off on that batch: the loaded parameters are what made it equal
    assert abs(first_step - float(loss_of(cpt_start["state"], batch))) > 0.3

    summary = json.loads((straight_cpt / "summary.json").read_text())
    source_summary = json.loads((source / "summary.json").read_text())
    assert summary["init"]["step"] == SOURCE_STEPS and summary["init"]["from_run"] == str(source)
    assert summary["init"]["source_flops"] == source_summary["flops"]
    # counts and schedule are the new run's own: tokens from zero, warmup again
    assert summary["tokens"] == CPT_STEPS * 8 * 32
    lrs = [r["lr"] for r in read_records(straight_cpt, "train")]
    assert lrs[0] < lrs[1] and lrs[1] == pytest.approx(1e-2)
    assert {"final_eval_loss/new", "final_eval_loss/old"} <= set(summary)


def test_a_resumed_cpt_run_repeats_the_same_losses(
    tmp_path: Path, source: Path, straight_cpt: Path, cache: Path
) -> None:
    run_dir = tmp_path / "run"
    stopped = run(cpt_experiment(run_dir, cache, source, train={"stop_after_steps": 2}))
    assert stopped["status"] == "stopped" and stopped["init"]["step"] == SOURCE_STEPS
    # The run resumes its own state: init is not applied again, so even a source that is no
    # longer there does not matter.
    resumed = run(cpt_experiment(run_dir, cache, tmp_path / "gone"))
    assert resumed["status"] == "complete"
    assert step_losses(run_dir) == step_losses(straight_cpt)
    assert resumed["init"]["from_run"] == str(source)  # still says where it started


def test_a_step_folder_picks_that_checkpoint_onto_another_mesh(
    source: Path, cpt_start: dict[str, Any]
) -> None:
    abstract = cpt_start["abstract"]
    params, record = load_pretrained_params(
        str(source / "checkpoints" / "3"), abstract, cpt_start["cfg"].model
    )
    assert record["step"] == 3 and record["checkpoint_dir"] == str(source / "checkpoints")
    with Checkpointer(source / "checkpoints", CheckpointConfig()) as reader:
        stored = reader.restore(3, abstract).state["params"]
    for got, want, target in zip(
        jax.tree.leaves(params), jax.tree.leaves(stored), jax.tree.leaves(abstract["params"])
    ):
        assert (
            got.sharding == target.sharding
        )  # laid out on this run's mesh (fsdp=2, not the source's)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert resolve_source(str(source / "checkpoints")).step is None  # the folder: newest step


def test_another_shape_is_one_error_naming_the_fields(
    tmp_path: Path, source: Path, cache: Path
) -> None:
    wider = cpt_experiment(tmp_path / "run", cache, source, model={"d_model": 48, "d_ff": 96})
    with pytest.raises(TrainingError, match="d_model: 32 there, 48 here") as caught:
        run(wider)
    assert "model: section" in caught.value.hint
    assert "shape" in str(caught.value)


@pytest.mark.parametrize(
    "where, words",
    [("missing", "does not exist"), ("empty", "holds no checkpoint"), ("file", "is a file")],
)
def test_a_source_without_checkpoints_is_one_error_with_a_hint(
    tmp_path: Path, where: str, words: str
) -> None:
    path = tmp_path / where
    if where == "empty":
        (path / "checkpoints").mkdir(parents=True)
    if where == "file":
        path.write_text("not a run")
    with pytest.raises(TrainingError, match=words) as caught:
        resolve_source(str(path))
    assert caught.value.hint and ("run directory" in caught.value.hint)
    assert not (tmp_path / "missing").exists()  # reading a source never creates it


@pytest.mark.parametrize(
    "init, words",
    [
        ({"from_run": "a", "grow_from": "b"}, "both set"),
        ({"factor": 2}, "without init.grow_from"),
        ({"grow_from": "b", "factor": 0}, "positive integer"),
        ({"from_run": " "}, "empty path"),
    ],
)
def test_bad_init_sections_are_config_errors(tmp_path: Path, init: dict, words: str) -> None:
    exp = {"model": dict(MODEL), "train": {"steps": 2, "global_batch": 4}, "init": init}
    with pytest.raises(ConfigError, match=words) as caught:
        load_experiment(exp)
    assert caught.value.hint


def test_init_from_is_spelled_from_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="init.from") as caught:
        load_experiment({"model": dict(MODEL), "init": {"from": "runs/python"}})
    assert "from_run" in caught.value.hint
    exp = load_experiment(
        {"model": dict(MODEL), "init": {"from_run": "runs/python"}}, ["init.from_run=runs/other"]
    )
    assert exp.init == InitConfig(from_run="runs/other")


def test_without_an_init_section_the_fresh_state_is_kept() -> None:
    state = {"params": object()}
    assert initialise_state(InitConfig(), state, None) == (state, None)  # type: ignore[arg-type]
    assert not InitConfig().active and InitConfig(from_run="x").active
