"""The quantized Perceptron program equals an exact integer Perceptron (000, Theorem 2)."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.config import Config
from programs.experiments.perceptron import exact_perceptron, run_perceptron


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perceptron_program_equals_exact_integer_perceptron_after_every_update(seed):
    rng = np.random.default_rng(seed)
    d, n = 12, 120
    w_true = rng.integers(-6, 7, d)
    x = rng.integers(-20, 21, (n, d))
    score = x @ w_true
    keep = score != 0
    x, y = x[keep], np.where(score[keep] > 0, 1, -1)
    run = run_perceptron(x, y, epochs=4)
    exact = np.array(exact_perceptron(x, y, epochs=4), dtype=np.int64)
    assert len(exact) > 5  # it really learned something
    assert run.trajectory.shape == exact.shape
    np.testing.assert_array_equal(run.trajectory, exact)
    np.testing.assert_array_equal(run.weights, exact[-1])
    assert run.machine.summary().totals["saturations"] == 0


def test_perceptron_saturates_when_the_lattice_is_too_small():
    """Outside the lattice (INT16 overflow) the quantized add saturates and is counted; the
    program then differs from the exact Perceptron, as Theorem 2's ball condition predicts."""
    x = np.array([[20000, 20000], [-20000, 20000]])
    y = np.array([1, 1])  # exact: w = [20000, 20000], then [0, 40000] > INT16 max
    run = run_perceptron(x, y, epochs=3)
    exact = exact_perceptron(x, y, epochs=3)
    assert run.machine.summary().totals["saturations"] > 0
    assert run.trajectory.tolist() != exact


def test_experiment_cli_writes_tables_and_reports_progress(tmp_path, capsys):
    from programs.cli import main
    from programs.experiments import run_experiment

    notes: list[tuple[str, int]] = []
    rows = run_experiment("perceptron", Config(), tmp_path / "api", quick=True,
                          note=lambda what, total: notes.append((what, total)))
    assert notes == [("seed 0", 2), ("seed 1", 2)] and len(rows) == 2
    assert all(r["equal_after_every_update"] for r in rows)
    assert main(["experiment", "perceptron", "--quick", "--out", str(tmp_path / "cli")]) == 0
    md = (tmp_path / "cli" / "perceptron.md").read_text()
    csv_lines = (tmp_path / "cli" / "perceptron.csv").read_text().splitlines()
    assert md.startswith("# perceptron") and "| seed |" in md
    assert len(csv_lines) == 3 and csv_lines[0].startswith("seed,")
    capsys.readouterr()
    assert main(["experiment", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lazy-update" in err
