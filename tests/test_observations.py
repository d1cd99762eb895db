"""Reading fit inputs: CSVs, run directories, Hitchhiker filtering, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chinchax.errors import ChinchaxError, ScalingError
from fixtures import write_run_dir
from scaling.observations import (Observations, find_run_dirs, load_observations, read_csv, read_run_dir, require_runs)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _assert_one_line(error: ChinchaxError) -> None:
    assert "\n" not in str(error)
    assert error.hint


def test_reads_epoch_columns_and_derives_tokens_from_flops(anchors_dir: Path) -> None:
    obs = read_csv(anchors_dir / "svg_extracted_data.csv")
    assert len(obs) == 245
    assert obs.n_runs == 245  # no run column: every row is its own run
    np.testing.assert_allclose(obs.tokens, obs.flops / (6.0 * obs.n_params))
    assert obs.loss.min() > 1.5 and obs.n_params.min() > 1e7


def test_csv_with_tokens_run_seed_and_step(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "ladder.csv",
        "run_id,seed,step,n_params,tokens,eval_loss\n"
        "a,1,10,1e6,1e8,3.5\n"
        "a,1,20,1e6,2e8,3.2\n"
        "b,2,10,4e6,1e8,3.3\n",
    )
    obs = read_csv(csv)
    assert obs.runs == ("a", "b")
    np.testing.assert_allclose(obs.flops, 6.0 * obs.n_params * obs.tokens)
    assert obs.seed.tolist() == [1, 1, 2] and obs.step.tolist() == [10, 20, 10]
    np.testing.assert_array_equal(obs.run_codes, [0, 0, 1])


@pytest.mark.parametrize(
    "header,missing",
    [
        ("n_params,tokens\n1e6,1e8\n", "loss"),
        ("n_params,loss\n1e6,3.0\n", "tokens or flops"),
        ("tokens,loss\n1e8,3.0\n", "n_params"),
    ],
)
def test_missing_columns_name_what_is_missing(tmp_path: Path, header: str, missing: str) -> None:
    with pytest.raises(ScalingError, match=missing) as info:
        read_csv(_write(tmp_path / "bad.csv", header))
    _assert_one_line(info.value)


@pytest.mark.parametrize(
    "row,problem",
    [
        ("1e6,1e8,nan", "NaN"),
        ("1e6,1e8,", "NaN"),
        ("1e6,1e8,0", "positive"),
        ("1e6,-5,3.0", "positive"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_the_row(
    tmp_path: Path, row: str, problem: str
) -> None:
    csv = _write(tmp_path / "bad.csv", f"n_params,tokens,loss\n1e6,1e8,3.0\n{row}\n")
    with pytest.raises(ScalingError, match=problem) as info:
        read_csv(csv)
    assert "row 1" in str(info.value)
    _assert_one_line(info.value)


def test_run_directory_evals_become_observations(tmp_path: Path) -> None:
    run = write_run_dir(
        tmp_path,
        "d128-s0",
        n_params=123_456,
        evals=[(0, 0, 5.5), (100, 1_000_000, 3.4), (200, 2_000_000, 3.1)],
        seed=7,
    )
    obs = read_run_dir(run)
    assert obs.runs == ("d128-s0",)
    assert obs.tokens.tolist() == [
        1_000_000,
        2_000_000,
    ]  # the zero-token eval is no point of L(N, D)
    assert obs.loss.tolist() == [3.4, 3.1]  # train records (loss * 1.01) are ignored
    assert set(obs.n_params) == {123_456.0} and set(obs.seed) == {7}
    assert obs.step.tolist() == [100, 200]


def test_run_without_evals_falls_back_to_its_summary(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path, "r", n_params=1000, evals=[(10, 5000, 4.0)])
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 9.0}) + "\n")
    obs = read_run_dir(run)
    assert obs.loss.tolist() == [4.0] and obs.tokens.tolist() == [5000]


def test_metrics_cut_short_at_the_end_is_tolerated_but_not_in_the_middle(tmp_path: Path) -> None:
    run = write_run_dir(tmp_path, "r", n_params=1000, evals=[(10, 5000, 4.0), (20, 10000, 3.5)])
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text + '{"kind": "eval", "ste')
    assert len(read_run_dir(run)) == 2
    (run / "metrics.jsonl").write_text('{"kind": \n' + text)
    with pytest.raises(ScalingError, match=r"metrics.jsonl:1 ") as info:
        read_run_dir(run)
    _assert_one_line(info.value)


def test_nan_eval_loss_in_a_run_is_an_error(tmp_path: Path) -> None:
    run = write_run_dir(
        tmp_path, "diverged", n_params=1000, evals=[(10, 5000, 4.0), (20, 10000, float("nan"))]
    )
    with pytest.raises(ScalingError, match="NaN.*diverged"):
        read_run_dir(run)


def test_parent_directories_csvs_and_duplicate_run_names(tmp_path: Path) -> None:
    for parent in ("sweep1", "sweep2"):
        for size in (1000, 2000):
            write_run_dir(
                tmp_path / parent,
                f"n{size}",
                n_params=size,
                evals=[(i, 1000 * i, 5.0 - 0.1 * i) for i in range(1, 11)],
            )
    (tmp_path / "sweep1" / "notes").mkdir()  # not a run: ignored
    csv = _write(tmp_path / "extra.csv", "n_params,flops,loss\n1e6,6e14,3.0\n")
    obs = load_observations(
        [tmp_path / "sweep1", tmp_path / "sweep2" / "n1000", tmp_path / "sweep2" / "n2000", csv],
        drop_early=0.0,
    )
    assert obs.n_runs == 5
    assert set(obs.runs) == {"n1000", "n2000", "sweep2/n1000", "sweep2/n2000", "row0"}
    assert len(find_run_dirs(tmp_path / "sweep1")) == 2


@pytest.mark.parametrize("make", ["missing", "empty", "not_a_run"])
def test_unusable_inputs_are_one_line_errors(tmp_path: Path, make: str) -> None:
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
    if make == "not_a_run":
        target.mkdir()
        (target / "metrics.jsonl").write_text("")
    with pytest.raises(ScalingError) as info:
        load_observations([target])
    _assert_one_line(info.value)


def test_drop_early_removes_each_runs_first_tenth(tmp_path: Path) -> None:
    write_run_dir(tmp_path, "small", n_params=100, evals=[(i, 100 * i, 4.0) for i in range(1, 21)])
    write_run_dir(tmp_path, "large", n_params=900, evals=[(i, 1000 * i, 3.0) for i in range(1, 6)])
    obs = load_observations([tmp_path])  # default: 10%
    small = obs.tokens[obs.run_id == "small"]
    large = obs.tokens[obs.run_id == "large"]
    assert small.min() == 200 and small.size == 19  # 100 < 0.1 * 2000 is dropped, 200 is kept
    assert large.min() == 1000 and large.size == 5  # 0.1 * 5000 = 500: nothing below it
    assert len(load_observations([tmp_path], drop_early=0.5)) == 11 + 3
    with pytest.raises(ScalingError, match="drop-early"):
        obs.drop_early(1.0)


@settings(max_examples=40, deadline=None)
@given(
    runs=st.lists(st.lists(st.floats(1.0, 1e6), min_size=1, max_size=12), min_size=1, max_size=6),
    fraction=st.floats(0.0, 0.95),
)
def test_drop_early_keeps_exactly_the_late_points_of_every_run(
    runs: list[list[float]], fraction: float
) -> None:
    tokens = np.concatenate([np.array(r) for r in runs])
    ids = np.concatenate([[f"r{i}"] * len(r) for i, r in enumerate(runs)])
    obs = Observations.from_arrays(
        n_params=np.full(tokens.size, 10.0),
        loss=np.full(tokens.size, 2.0),
        tokens=tokens,
        run_id=ids,
    )
    kept = obs.drop_early(fraction)
    assert kept.n_runs == obs.n_runs  # a run's final point always survives
    for i, r in enumerate(runs):
        expected = sorted(t for t in r if t >= fraction * max(r))
        assert sorted(kept.tokens[kept.run_id == f"r{i}"]) == expected


def test_require_runs_and_drop_highest_loss() -> None:
    obs = Observations.from_arrays(n_params=[1, 2, 3], loss=[3.0, 9.0, 2.0], tokens=[1, 1, 1])
    require_runs(obs, 3, "this")
    with pytest.raises(ScalingError, match="needs at least 4 runs, got 3") as info:
        require_runs(obs, 4, "this")
    _assert_one_line(info.value)
    assert obs.drop_highest_loss(1).loss.tolist() == [3.0, 2.0]
    with pytest.raises(ScalingError):
        obs.drop_highest_loss(3)


def test_a_step_floor_keeps_evals_of_unknown_step() -> None:
    obs = Observations.from_arrays(n_params=[1e3] * 4, loss=[4.0, 3.0, 2.5, 2.0],
                                   tokens=[1e4, 2e4, 3e4, 4e4], step=[-1, 100, 200, 300])
    assert obs.drop_before_step(200).step.tolist() == [-1, 200, 300]
    assert obs.drop_before_step(0) is obs
    with pytest.raises(ScalingError, match="non-negative") as info:
        obs.drop_before_step(-5)
    _assert_one_line(info.value)
