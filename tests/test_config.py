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
    # a rate the budget states is the rate that trains (not the optimiser's default)
    assert exp.budget.learning_rate == 0.01 and run.optim.learning_rate == 0.01
    ruled = resolve(load_experiment(REPO / "configs" / "cpu_tiny.yaml", ["budget.learning_rate=null"]),
                    data_parallel=1)
    assert ruled.optim.learning_rate == pytest.approx(ruled.plan.allocation["learning_rate"]) != 0.01


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
        (["budget.head_dims=[32,64"], "not valid YAML", ""),
        (["train=5"], "train must be a section", ""),
        (["seed=100000000000000000000"], "seed must be an integer in 0..4294967295", ""),
        (["seed=-1"], "seed must be", ""),
        (["optim.eps=inf"], "optim.eps must be positive, finite", ""),
        (["optim.learning_rate=1e9"], "optim.learning_rate", ""),
        (["budget.seq_len=64"], "budget.seq_len=64 would be ignored", ""),
        (["optim.learning_rate=.nan"], "optim.learning_rate", ""),
        (["optim.weight_decay=inf"], "optim.weight_decay", ""),
        (["optim.clip_norm=-1"], "optim.clip_norm", ""),
        (["budget.learning_rate=inf"], "budget.learning_rate", ""),
        (["budget.ff_ratio=inf"], "budget.ff_ratio", ""),
        (["budget.max_aspect=inf"], "aspect range", ""),
        (["name=*alias"], "alias", ""),
        (["runtime.gpu_memory_fraction=1.5"], "gpu_memory_fraction", ""),
        (["runtime.xla_flags=[not-a-flag]"], "xla_flags", ""),
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


def test_unreadable_and_hostile_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "latin1.yaml": ("name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        "binary.yaml": (bytes(range(256)), "not UTF-8"),
        "nul.yaml": (b"name: a\x00b\n", "NUL"),
        "budget5.yaml": (b"budget: 5\n", "budget must be a section"),
        "train_list.yaml": (b"train: [1, 2]\n", "train must be a section"),
        "merge.yaml": (b"base: &b {steps: 1}\ntrain:\n  <<: *b\n", "alias"),
    }
    laughs = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    cases["laughs.yaml"] = (("\n".join(laughs) + "\n").encode(), "alias")
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert main(["train", str(tmp_path / name), "--print-config"]) == 2, name
        err = capsys.readouterr().err
        assert message in err.splitlines()[0] and "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) <= 2
    assert main(["train", str(tmp_path), "--print-config"]) == 2  # a directory without config.yaml
    assert "config.yaml" in capsys.readouterr().err
    cache_file = tmp_path / "cache"
    cache_file.write_text("")
    config = str(REPO / "configs" / "cpu_tiny.yaml")
    assert main(["train", config, f"data.cache_dir={cache_file}", "--print-config"]) == 2
    assert "data.cache_dir" in capsys.readouterr().err.splitlines()[0]


def test_unexpected_exceptions_are_one_line_and_interrupts_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from launch import cmd_allocate

    def boom(args: object) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cmd_allocate, "run", boom)
    assert main(["allocate", "--flops", "1e19"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "chinchax allocate: error: unexpected RuntimeError: disk on fire"
    assert "--debug" in err[1] and len(err) == 2
    with pytest.raises(RuntimeError):
        main(["--debug", "allocate", "--flops", "1e19"])

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd_allocate, "run", interrupted)
    assert main(["allocate", "--flops", "1e19"]) == 130


def test_overrides_may_follow_flags() -> None:
    from launch.cli import build_parser

    args = build_parser().parse_args(["local", "2", "c.yaml", "a=1", "--cpu-devices", "3", "b=2"])
    assert (args.config, args.overrides, args.cpu_devices) == ("c.yaml", ["a=1", "b=2"], 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["allocate", "--flops", "1e19", "stray=1"])


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
