"""``chinchax fit`` on runs: the curve law, the backtest, the identity a law records, refusing to
mix runs of different data, and one line for law and CSV files it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from curve_ladders import draw_ladder, write_ladder_runs
from launch.cli import main
from scaling.identity import common_identity, run_identity
from scaling.laws import get_law

QUICK = ["--grid", "coarse", "--bootstrap", "10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("curve") / "runs"
    write_ladder_runs(root, draw_ladder(1))
    return root


def test_curve_fit_writes_a_law_that_knows_its_data_and_its_backtest(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "law.json"
    assert main(["fit", str(runs), "--approach", "curve", "--backtest", "--out", str(out), *QUICK]) == 0
    text = capsys.readouterr().out
    assert "approach curve" in text and "backtest (approach curve)" in text
    assert "fitted on: tokenizer.kind byte" in text
    data = json.loads(out.read_text())
    assert data["approach"] == "curve" and set(data["curve"]) >= {"E", "A", "B", "alpha", "beta", "C", "lambda"}
    identity = data["identity"]
    assert identity["tokenizer"] == {"kind": "byte", "vocab": "257", "hash": "byte"}
    assert identity["seq_len"] == "128" and identity["init"] == "scratch"
    assert identity["data"]["source"] == "embedded" and identity["compute"] == "exact"
    assert identity["family"]["tied_embedding"] == "true"
    backtest = data["settings"]["backtest"]
    assert backtest["held_out_by"] == "budget" and len(backtest["rows"]) == 3
    assert backtest["are"] == pytest.approx(sum(abs(r["error"]) for r in backtest["rows"]) / 3)
    assert backtest["are"] < 0.03
    law = get_law(out)  # the allocator reads the L(N, D) reduction
    assert law.E == data["law"]["E"] and law.allocate(1e16).n_params > 0


def test_runs_of_different_tokenizers_are_refused_in_one_line(
        runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mixed = tmp_path / "mixed"
    write_ladder_runs(mixed, draw_ladder(2, budgets=(3e12, 1e13)), tokenizer="byte")
    other = write_ladder_runs(tmp_path / "sp", draw_ladder(3, budgets=(3e13,)), tokenizer="sp.model")
    for run in other:
        run.rename(mixed / f"sp-{run.name}")
    assert main(["fit", str(mixed), "--approach", "3", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "differ in tokenizer.kind" in err[0] and "--allow-mixed" in err[1]
    assert main(["fit", str(mixed), "--approach", "3", "--allow-mixed", "--out",
                 str(tmp_path / "law.json"), *QUICK]) == 0
    recorded = json.loads((tmp_path / "law.json").read_text())["identity"]["tokenizer"]["kind"]
    assert recorded == "mixed: byte, sentencepiece"


def test_identity_fields_of_old_and_grown_runs(runs: Path, tmp_path: Path) -> None:
    run = next(runs.iterdir())
    config = yaml.safe_load((run / "config.yaml").read_text())
    grown = tmp_path / "grown"
    grown.mkdir()
    (grown / "config.yaml").write_text(yaml.safe_dump({**config, "init": {"grow_from": "x"}}))
    (grown / "summary.json").write_text((run / "summary.json").read_text())
    assert run_identity(grown)["init"] == "grown"
    old = tmp_path / "old"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({"n_params": 10}))
    assert set(run_identity(old).values()) == {"unknown"}
    # unknown fields match anything: an old run joins a group without a refusal
    assert common_identity({"a": run_identity(run), "b": run_identity(old)}) == run_identity(run)


@pytest.mark.parametrize("content,message", [
    (b'{"law": {"E": NaN, "A": 1, "B": 1, "alpha": 0.3, "beta": 0.3}}', "non-finite coefficient E"),
    (b'[1, 2, 3]', "is a JSON list, not an object"),
    (b'\xff\xfe\x00garbage', "not valid UTF-8 JSON"),
])
def test_unusable_law_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         content: bytes, message: str) -> None:
    law = tmp_path / "law.json"
    law.write_bytes(content)
    assert main(["allocate", "--flops", "1e18", "--law", str(law)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and message in err[0]


def test_a_csv_that_is_not_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"n_params,tokens,loss\n\xff\xfe,1,2\n")
    assert main(["fit", str(csv), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not UTF-8" in err[0]


def test_a_law_of_other_data_predicts_informationally_and_never_alerts(tmp_path: Path) -> None:
    """A law that far misses the run but was fitted on another sequence length raises no alert;
    the same law recording the run's own identity does."""
    from test_trainer import run_in_process, tiny_experiment
    from training.metrics import read_records

    def law_file(seq_len: str) -> Path:
        path = tmp_path / f"law_{seq_len}.json"
        path.write_text(json.dumps({
            "law": {"form": "parametric", "E": 10.0, "A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3},
            "identity": {"tokenizer": {"kind": "byte", "vocab": "257"}, "seq_len": seq_len}}))
        return path

    def run(seq_len: str) -> dict:
        exp = tiny_experiment(tmp_path / seq_len, prediction={"law": str(law_file(seq_len)), "patience": 2,
                                                              "skip_fraction": 0.0},
                              train={"steps": 8, "eval_every": 2})
        return run_in_process(exp)

    other = run("2048")  # the run trains at seq_len 32
    assert other["prediction"]["informational"] is True
    assert other["prediction"]["identity_differences"] == ["seq_len: law 2048, run 32"]
    assert read_records(tmp_path / "2048" / "run", "alert") == [] and other["status"] == "complete"
    stored = json.loads((tmp_path / "2048" / "run" / "prediction.json").read_text())
    assert stored["identity_differences"] == ["seq_len: law 2048, run 32"]
    same = run("32")
    assert "informational" not in same["prediction"] and same["prediction"]["alerts"] >= 1


def test_allocate_says_when_its_law_knows_other_runs(capsys: pytest.CaptureFixture) -> None:
    assert main(["allocate", "--flops", "1e21", "--law", "embedded-byte"]) == 0
    err = capsys.readouterr().err
    assert "note: law embedded-byte was fitted on other runs" in err
    assert "tokenizer.vocab: law 257, run 32000" in err and "seq_len: law 128, run 2048" in err
    assert main(["allocate", "--flops", "1e21"]) == 0  # Chinchilla's own vocabulary and context
    assert "note:" not in capsys.readouterr().err


def test_the_shipped_law_knows_the_embedded_corpus() -> None:
    """The law that sizes and predicts the main job records the corpus the main job trains on."""
    from scaling.identity import law_identity
    from scaling.laws import law_file_data
    from training.data import data_fingerprint
    from training.data_config import DataConfig

    data = law_file_data("embedded-byte")
    identity = law_identity(data)
    assert identity["data.fingerprint"] == data_fingerprint(DataConfig(source="embedded"))
    assert identity["tokenizer.kind"] == "byte" and identity["seq_len"] == "128"
    assert data["curve"]["lambda"] == 0.998 and get_law("embedded-byte").name == "embedded-byte"
