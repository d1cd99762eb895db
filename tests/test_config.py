"""Experiment files: validation, overrides, budget resolution and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from chinchax.errors import ConfigError
from launch.cli import main
from launch.config import load_experiment, load_run_config, resolve, run_config_to_yaml
from scaling.flops import train_flops_per_token

REPO = Path(__file__).resolve().parent.parent


def test_shipped_configs_load_and_resolve() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name.startswith("ladder"):
            continue  # ladder files add a ladder: section, read by 'chinchax ladder'
        exp = load_experiment(path)
        run = resolve(exp, data_parallel=1)
        assert run.steps > 0 and run.global_batch > 0, path.name


def test_budget_decides_shape_steps_and_learning_rate() -> None:
    exp = load_experiment(REPO / "configs" / "cpu_tiny.yaml")
    run = resolve(exp, data_parallel=1)
    assert run.plan is not None
    spent = run.steps * run.tokens_per_step * train_flops_per_token(run.model, run.train.seq_len)
    assert spent == pytest.approx(exp.budget.flops, rel=0.01)
    assert run.optim.learning_rate == pytest.approx(run.plan.allocation["learning_rate"])
    assert run.model.vocab_size == 257  # from the byte tokenizer


def test_dotted_overrides_change_keys() -> None:
    exp = load_experiment(
        REPO / "configs" / "cpu_tiny.yaml",
        ["train.seq_len=128", "budget.flops=2e12", "optim.schedule=wsd"],
    )
    assert exp.train.seq_len == 128 and exp.budget.flops == 2e12 and exp.optim.schedule == "wsd"


def test_model_section_beside_budget_may_set_numerics_only() -> None:
    exp = load_experiment(REPO / "configs" / "cpu_tiny.yaml", ["model.remat=full"])
    assert resolve(exp, data_parallel=1).model.remat == "full"
    with pytest.raises(ConfigError, match="model.d_model is chosen by the allocator"):
        load_experiment(REPO / "configs" / "cpu_tiny.yaml", ["model.d_model=256"])


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    run = resolve(load_experiment(REPO / "configs" / "cpu_tiny.yaml"), data_parallel=1)
    path = tmp_path / "config.yaml"
    path.write_text(run_config_to_yaml(run))
    assert load_run_config(path) == run


@pytest.mark.parametrize(
    ("overrides", "message", "hint"),
    [
        (["train.stepz=3"], "train.stepz", "did you mean"),
        (["train.steps=abc"], "train.steps", ""),
        (["budget.flops=-5"], "budget must be a positive", ""),
        (["optim.schedule=linear"], "schedule", ""),
        (["trian.steps=3"], "trian", "did you mean"),
        (["steps"], "not of the form key=value", ""),
    ],
)
def test_bad_overrides_are_one_line_errors(
    overrides: list[str], message: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", str(REPO / "configs" / "cpu_tiny.yaml"), *overrides, "--print-config"])
    err = capsys.readouterr().err
    assert code == 2
    first, *rest = err.strip().splitlines()
    assert first.startswith("chinchax train: error:") and message in first
    assert len(rest) <= 1 and "Traceback" not in err
    if hint:
        assert hint in err.lower()


def test_bad_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  steps: [1,\n")
    neither = tmp_path / "neither.yaml"
    neither.write_text("name: x\n")
    for path, message in (
        (tmp_path / "missing.yaml", "does not exist"),
        (broken, "not valid YAML"),
        (neither, "neither a model: nor a budget:"),
    ):
        assert main(["train", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err.splitlines()[0] and "Traceback" not in err


def test_explicit_model_needs_steps_and_batch() -> None:
    exp = load_experiment(
        {"model": {"vocab_size": 257, "d_model": 32, "n_layers": 1, "n_heads": 1, "d_ff": 64}}
    )
    with pytest.raises(ConfigError, match="train.steps and train.global_batch"):
        resolve(exp)
    small_vocab = load_experiment(
        {"model": {"vocab_size": 64}, "train": {"steps": 1, "global_batch": 1}}
    )
    with pytest.raises(ConfigError, match="vocab_size=64"):
        resolve(small_vocab)
