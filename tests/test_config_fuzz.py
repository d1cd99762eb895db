"""Config fuzzer: mutated shipped configs and command lines, run through ``chinchax train
--print-config`` in-process.  Every outcome is exit 0 or one short error (exit 2), within a
deadline, and no non-finite or out-of-range value is accepted in silence."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import signal
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from launch.cli import main
from launch.config import ExperimentConfig
from models.config import ModelConfig
from scaling.allocate import BudgetConfig

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("ladder"))
DEADLINE_S = 10
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _leaf_keys() -> list[str]:
    schema = OmegaConf.structured(ExperimentConfig)
    keys = []
    for section in schema:
        node = OmegaConf.select(schema, str(section))
        if OmegaConf.is_config(node) and not OmegaConf.is_list(node):
            keys += [f"{section}.{k}" for k in node]
        else:
            keys.append(str(section))
    keys += [f"budget.{f.name}" for f in dataclasses.fields(BudgetConfig)]
    keys += [f"model.{f.name}" for f in dataclasses.fields(ModelConfig)]
    return keys + ["nosuch", "train.nosuch"]


KEYS = _leaf_keys()
# Non-finite values still accepted by keys other sessions own (remove an entry once it is checked).
KNOWN_GAPS: set[str] = set()  # numeric keys not yet range-checked (none)


def _is_numeric(dotted: str) -> bool:
    """Whether the schema types ``dotted`` as int or float (optional or not)."""
    owner: Any = ExperimentConfig
    hint: Any = None
    for part in dotted.split("."):
        hints = typing.get_type_hints(owner) if dataclasses.is_dataclass(owner) else {}
        if part not in hints:
            return False
        hint = hints[part]
        owner = next((t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None)
    numeric = hint is not None and bool({int, float} & {hint, *typing.get_args(hint)})
    return numeric and dotted not in KNOWN_GAPS
NON_FINITE = [math.nan, math.inf, -math.inf]
VALUES = st.one_of(
    st.sampled_from([*NON_FINITE, -1, 0, -(10**6), 10**20, 10**400, 1e308, 5e-324, True, None, "",
                     "abc", [], {}, [1, 2], {"a": 1}, [math.inf]]),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _deadline(DEADLINE_S):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def _numbers(tree: Any) -> Iterator[float]:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def _non_finite(value: Any) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in _numbers(value))


def _check(argv: list[str], injected: Any = None, key: str = "") -> None:
    code, out, err = _run(argv)
    assert "Traceback" not in err and "error: unexpected " not in err, (argv, err)
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert 1 <= len(lines) <= 3 and all(len(line) < 600 for line in lines), (argv, err)
        return
    printed = yaml.safe_load(out)
    assert key in KNOWN_GAPS or not _non_finite(printed), (argv, key, "non-finite value printed")
    assert not (_is_numeric(key) and _non_finite(injected)), (argv, key, "non-finite value accepted")
    assert 0 <= printed["seed"] < 2**32


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(tree.get(key), dict):
            tree[key] = {}
        tree = tree[key]
    tree[leaf] = value


@FUZZ
@given(config=st.sampled_from(CONFIGS), key=st.sampled_from(KEYS), value=VALUES,
       as_override=st.booleans())
def test_mutated_keys_are_rejected_in_one_line_or_accepted_finite(config: Path, key: str, value: Any,
                                                                   as_override: bool) -> None:
    if as_override:
        _check(["train", str(config), f"{key}={_render(value)}", "--print-config"], value, key)
        return
    data = yaml.safe_load(config.read_text())
    _set(data, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.yaml"
        path.write_text(yaml.safe_dump(data))
        _check(["train", str(path), "--print-config"], value, key)


LAUGHS = "a0: &a0 [lol, lol]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
                                          for i in range(1, 12))
RAW = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xfe\x00", "caf\xe9".encode("latin-1"), LAUGHS.encode(), b"{[", b"- a\n- b\n",
                     b"!!python/object:os.system {}\n", b"a: !!binary AAAA\n", b"\x00", b"'", b": :"]),
)


@settings(FUZZ, max_examples=60)
@given(config=st.sampled_from(CONFIGS), cut=st.floats(0, 1), junk=RAW, mode=st.sampled_from(
    ["truncate", "insert", "replace", "append"]))
def test_corrupted_files_are_one_line_errors(config: Path, cut: float, junk: bytes, mode: str) -> None:
    text = config.read_bytes()
    at = int(cut * len(text))
    content = {"truncate": text[:at], "insert": text[:at] + junk + text[at:], "replace": junk,
               "append": text + b"\n" + junk}[mode]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corrupt.yaml"
        path.write_bytes(content)
        _check(["train", str(path), "--print-config"])


ARGS = st.lists(st.one_of(
    st.sampled_from(["--run-dir", "--bogus", "--", "-x", "=", "=1", "a.b=", ".a=1", "a..b=1", "train.steps==1",
                     "train.steps=[1", "seed=1e400", "budget.flops=.nan", "model.d_model=1e999",
                     "\udcff=1", "train.steps=\x00", "--print-config", "--debug"]),
    st.text(max_size=16).filter(lambda s: not s.startswith("--debug"))), max_size=4)


@settings(FUZZ, max_examples=45)
@given(config=st.sampled_from(CONFIGS), args=ARGS)
def test_fuzzed_command_lines(config: Path, args: list[str]) -> None:
    _check(["train", str(config), *args, "--print-config"])


@pytest.mark.parametrize("argv", [["allocate", "--flops", "nan"], ["allocate", "--flops", "inf"],
                                  ["allocate", "--flops", "1e19", "--inference-tokens", "inf"],
                                  ["allocate", "--flops", "1e19", "--min-aspect", "nan"]])
def test_allocate_rejects_non_finite_flags(argv: list[str]) -> None:
    code, _out, err = _run(argv)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) <= 3
