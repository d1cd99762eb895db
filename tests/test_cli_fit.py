"""``chinchax fit``: tables, law files the allocator reads, plots, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from launch.cli import main
from scaling.laws import PUBLISHED_LAWS, ParametricLaw, PowerLawAllocation, get_law
from fixtures import isoflop_design, simulate_runs, write_run_dir

LAW = PUBLISHED_LAWS["chinchilla"]
QUICK = ["--grid", "coarse", "--target-flops", "1e22"]


def _write_runs(root: Path, shapes, evals_per_run: int, law=LAW, seed: int = 0) -> Path:
    """A ladder of run directories in the ``chinchax train`` format, losses from ``law``."""
    obs = simulate_runs(law, shapes, evals_per_run=evals_per_run, noise=0.002, seed=seed)
    for run in obs.runs:
        rows = np.flatnonzero(obs.run_id == run)
        evals = [(int(obs.step[i]) * 100, int(obs.tokens[i]), float(obs.loss[i])) for i in rows]
        write_run_dir(root, run, n_params=int(obs.n_params[rows[0]]), evals=evals, seed=seed)
    return root


def _csv(path: Path) -> Path:
    shapes = [(n, 100.0 * n) for n in np.geomspace(2e7, 2e9, 6)]
    obs = simulate_runs(LAW, shapes, evals_per_run=10, noise=0.002, run_noise=0.002)
    lines = ["run_id,step,n_params,tokens,loss"]
    lines += [
        f"{obs.run_id[i]},{obs.step[i]},{float(obs.n_params[i])!r},{float(obs.tokens[i])!r},"
        f"{float(obs.loss[i])!r}"
        for i in range(len(obs))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_csv_prints_table_writes_law_and_plots(tmp_path: Path, capsys) -> None:
    out, plots = tmp_path / "law.json", tmp_path / "plots"
    code = main(
        [
            "fit",
            str(_csv(tmp_path / "runs.csv")),
            "--bootstrap",
            "40",
            "--out",
            str(out),
            "--plot",
            str(plots),
            *QUICK,
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for word in ("alpha", "beta", "95% interval", "compute-optimal: N_opt ∝ C^", "law written to"):
        assert word in text, word
    law = get_law(str(out))
    assert isinstance(law, ParametricLaw) and len(law.samples) == 40
    assert law.alpha == pytest.approx(LAW.alpha, abs=0.05)
    data = json.loads(out.read_text())
    assert data["settings"]["drop_early"] == 0.1 and data["settings"]["grid"]["e"] == [-1.0, 1.0]
    assert min(r["step"] for r in data["data"]) == 1  # the first eval, at 10% of tokens, is kept
    names = sorted(p.name for p in plots.iterdir())
    assert {"frontier.png", "residuals.png", "bootstrap.png"} <= set(names)
    assert all(_is_png(plots / n) for n in names)


def test_isoflop_ladder_from_a_parent_directory(tmp_path: Path, capsys) -> None:
    shapes = isoflop_design(LAW, np.geomspace(1e18, 1e20, 4), 6)
    root = _write_runs(tmp_path / "ladder", shapes, evals_per_run=4)
    out, plots = tmp_path / "iso.json", tmp_path / "plots"
    assert (
        main(
            [
                "fit",
                str(root),
                "--approach",
                "2",
                "--bootstrap",
                "50",
                "--out",
                str(out),
                "--plot",
                str(plots),
                *QUICK,
            ]
        )
        == 0
    )
    law = get_law(str(out))
    assert isinstance(law, PowerLawAllocation)
    assert law.a == pytest.approx(LAW.params_exponent, abs=0.03)
    assert "n_coef" in capsys.readouterr().out
    assert _is_png(plots / "isoflops.png") and _is_png(plots / "frontier.png")


def test_envelope_from_run_directories(tmp_path: Path, capsys) -> None:
    shapes = [(n, 160.0 * n) for n in np.geomspace(2e7, 2e9, 10)]
    root = _write_runs(tmp_path / "curves", shapes, evals_per_run=30)
    assert (
        main(
            [
                "fit",
                *sorted(str(p) for p in root.iterdir()),
                "--approach",
                "1",
                "--bootstrap",
                "30",
                *QUICK,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "approach 1" in text and "D_opt ∝ C^" in text


def test_continual_pretraining_fit_holds_the_base_coefficients(tmp_path: Path, capsys) -> None:
    cpt = ParametricLaw(E=LAW.E, A=LAW.A, B=433.3, alpha=LAW.alpha, beta=0.20, gamma=0.08)
    root = _write_runs(
        tmp_path / "cpt", [(n, 2e10) for n in np.geomspace(1e8, 1e10, 6)], evals_per_run=20, law=cpt
    )
    out = tmp_path / "cpt.json"
    assert (
        main(
            [
                "fit",
                str(root),
                "--cpt-base",
                "chinchilla",
                "--bootstrap",
                "30",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    law = get_law(str(out))
    assert (law.E, law.A, law.alpha) == (LAW.E, LAW.A, LAW.alpha)
    assert law.gamma == pytest.approx(0.08, abs=0.01) and law.beta == pytest.approx(0.20, abs=0.01)
    text = capsys.readouterr().out
    assert "fixed" in text and "gamma" in text


def test_evaluate_reports_are(tmp_path: Path, capsys) -> None:
    assert (
        main(["fit", str(_csv(tmp_path / "runs.csv")), "--bootstrap", "0", "--evaluate", *QUICK])
        == 0
    )
    assert "ARE on the last 30% of run run005" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content,args,message",
    [
        ("n_params,tokens\n1e6,1e8\n", [], "lacks a column for loss"),
        ("n_params,tokens,loss\n1e6,1e8,-1\n", [], "loss must be positive"),
        ("n_params,tokens,loss\n1e6,1e8,3\n2e6,1e8,2.9\n", [], "at least 3 runs"),
        ("n_params,tokens,loss\n1e6,1e8,3\n", ["--fix", "E:1.7"], "not NAME=VALUE"),
    ],
)
def test_bad_input_is_one_line_and_a_hint(
    tmp_path: Path, capsys, content: str, args: list[str], message: str
) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    assert main(["fit", str(csv), "--bootstrap", "0", *args, *QUICK]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and message in lines[0] and lines[0].startswith("chinchax fit: error:")
    assert lines[1].strip().startswith("hint:")


def test_missing_input_path(tmp_path: Path, capsys) -> None:
    assert main(["fit", str(tmp_path / "nowhere"), "--bootstrap", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
