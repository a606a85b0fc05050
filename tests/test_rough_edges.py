"""The rough edges a new user hit (issue 17), one test each: --version and usage-error
prefixes, --plot without matplotlib, budget arguments, the accumulator's real need, experiment
tables, progress and --quick, the plots, and --emit-asm's DRAM image."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from emulator.config import config_from_dict
from emulator.errors import ConfigError, UsageError
from programs.cli import main
from programs.compiler.firmware import plan
from programs.compiler.spec import ModelSpec
from programs.experiments import paper

ROOT = Path(__file__).resolve().parents[1]
HALT = "li r1, 1\nhalt\n"


def _prog(tmp_path: Path, src: str = HALT, name: str = "p.s") -> Path:
    p = tmp_path / name
    p.write_text(src)
    return p


# ------------------------------------------------------------------------------ --version
def test_version_and_one_prefix_on_usage_errors(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lpemu {version('lpemu')}\n"
    assert main([]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("lpemu: usage error: ") and "lpemu: lpemu" not in err
    assert main(["run"]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err == "lpemu: run: usage error: the following arguments are required: program\n"


# ------------------------------------------------------------------------------ --plot
def test_plot_without_matplotlib_fails_with_the_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    prog = _prog(tmp_path)
    rc = main(["profile", str(prog), "--plot", str(tmp_path / "p.png"), "-q"])
    err = capsys.readouterr().err
    assert rc == UsageError.exit_code and err.count("\n") == 1
    assert "pip install 'lpemu[plot]'" in err and err.startswith("lpemu: --plot: ")
    # train checks before it trains, also with -q
    rc = main(["train", "--plot", str(tmp_path / "t.png"), "-q", "--no-float"])
    err = capsys.readouterr().err
    assert rc == UsageError.exit_code and "pip install 'lpemu[plot]'" in err
    assert not (tmp_path / "t.png").exists()


def test_plot_that_cannot_be_written_fails(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    prog = _prog(tmp_path)
    rc = main(["profile", str(prog), "-q", "--plot", str(tmp_path / "no" / "dir" / "p.png")])
    # checked before the run (issue 18): a usage error naming --plot and the path
    err = capsys.readouterr().err
    assert rc == 2 and "--plot" in err and "p.png" in err


# ------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize("argv", [
    ["run", "{p}", "--max-steps", "-5"], ["run", "{p}", "--max-steps", "0"],
    ["run", "{p}", "--max-cycles", "-1"], ["profile", "{p}", "--max-cycles", "0"],
    ["profile", "{p}", "--trace-limit", "0"], ["run", "{p}", "--trace-steps", "-2"],
    ["train", "--epochs", "-3"],
])
def test_negative_or_zero_budgets_are_usage_errors(tmp_path, capsys, argv):
    p = _prog(tmp_path)
    args = [a.format(p=p) for a in argv]
    assert main(args) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"argument {args[-2]}: must be an integer >= " in err


# ------------------------------------------------------------------------------ accumulator
def _need(cfg_dict: dict, unit: str) -> int:
    with pytest.raises(ConfigError) as info:
        plan(ModelSpec(), config_from_dict(cfg_dict))
    m = re.search(r"needs ([\d,]+) " + unit + r", ([\d,]+) available", info.value.message)
    assert m, info.value.message
    return int(m.group(1).replace(",", ""))


def test_a_model_too_large_reports_what_it_needs():
    """The reported need is exact: that many entries (bytes) work, one fewer does not."""
    need = _need({"accumulator": {"entries": 1000}}, "entries")
    assert need > 1001
    assert _need({"accumulator": {"entries": need - 1}}, "entries") == need
    plan(ModelSpec(), config_from_dict({"accumulator": {"entries": need}}))
    # the scratchpad when even one row of streamed weight tiles does not fit
    need = _need({"memory": {"scratchpad_bytes": 6000}}, "bytes")
    assert _need({"memory": {"scratchpad_bytes": need - 1}}, "bytes") == need
    plan(ModelSpec(), config_from_dict({"memory": {"scratchpad_bytes": need}}))


# ------------------------------------------------------------------------------ experiments
def test_experiment_table_is_whole_and_progress_has_a_total_and_eta(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["experiment", "perceptron", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"perceptron .* 2/2 parts, elapsed \d+:\d\d:\d\d ETA", out), out
    header = next(ln for ln in out.splitlines() if "seed" in ln and "features" in ln)
    assert "equal_after_every_update" in header and "train_accuracy" in header
    assert len(header) > 80 and "…" not in out
    rows = [ln for ln in out.splitlines() if re.match(r"│\s+[01] │", ln)]
    assert len(rows) == 2 and all("True" in r and r.rstrip().endswith("│") for r in rows)
    assert "(no plot: pip install 'lpemu[plot]')" in out


def test_update_modes_quick_is_smaller(monkeypatch):
    runs: list[ModelSpec] = []

    def fake_chip(spec, cfg, data):
        runs.append(spec)
        return {"test_accuracy": 0.5, "final_loss": 1.0, "trainer": None}

    monkeypatch.setattr(paper, "chip_run", fake_chip)
    monkeypatch.setattr(paper, "float_run", lambda spec, data, tr, qbp=False: 0.9)
    monkeypatch.setattr(paper, "digits", lambda seed: type("D", (), {"x_train": range(100)}))
    notes: list[tuple] = []
    full = paper.update_modes(config_from_dict({}), False, lambda *a: notes.append(a))
    n_full, epochs_full = len(runs), {s.epochs for s in runs}
    runs.clear()
    quick = paper.update_modes(config_from_dict({}), True, lambda *a: None)
    assert {r["mode"] for r in quick} == {r["mode"] for r in full}
    assert max(s.epochs for s in runs) < min(epochs_full) and len(runs) <= n_full
    assert notes[0] == ("lazy update (nearest read-out), constant lr", 10) and len(notes) == 10
    # a constant and a decaying (inverse) learning rate; t0 = one epoch of steps
    assert {s.update.schedule.kind for s in runs} == {"constant", "inverse"}
    assert {s.update.schedule.t0 for s in runs} == {10.0}
    assert {(s.update.schedule.kind, s.update.lr) for s in runs} == {("constant", 0.01),
                                                                      ("inverse", 0.1)}
    assert {(r["mode"], r["readout"]) for r in quick} >= {("shadow", "uniform"),
                                                          ("shadow", "nearest")}


# ------------------------------------------------------------------------------ plots
@pytest.fixture
def figures(monkeypatch):
    """Figures saved while the test runs (saving is skipped)."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: saved.append(self))
    return saved


def test_update_modes_plot_has_accuracy_and_loss_on_separate_labelled_axes(tmp_path, figures):
    rows = [{"mode": m, "readout": ro, "schedule": s, "epochs": 20, "test_accuracy": a,
             "float32": 0.96, "final_loss": loss}
            for s in ("constant", "inverse")
            for m, ro, a, loss in [("lazy", "-", .95, .2), ("shadow", "uniform", .94, .25),
                                   ("stochastic", "-", .9, .4), ("plain", "-", .5, 1.5)]]
    paper.plot("update-modes", rows, tmp_path / "u.png")
    axes = figures[0].axes
    labels = {ax.get_ylabel(): ax for ax in axes}
    assert set(labels) == {"test accuracy (%)", "final training loss (cross-entropy)"}
    acc = [p.get_height() for p in labels["test accuracy (%)"].patches]
    loss = [p.get_height() for p in labels["final training loss (cross-entropy)"].patches]
    assert acc == pytest.approx([95, 94, 90, 50] * 2)
    assert loss == pytest.approx([.2, .25, .4, 1.5] * 2)


def test_qbp_sweep_plot_never_joins_dither_modes(tmp_path, figures):
    # the shape of a real --quick run: without dither the large step collapses (sparsity falls)
    rows = [{"step_log2": "none (dynamic)", "dither": "-", "test_accuracy": 0.98,
             "mean_sparsity": 0.743, "final_loss": 0.01}]
    for step, dither, acc, sp in [(-3, "uniform", .98, .943), (-3, "none", .976, .956),
                                  (-1, "uniform", .973, .973), (-1, "none", .10, .591)]:
        rows.append({"step_log2": step, "dither": dither, "test_accuracy": acc,
                     "mean_sparsity": sp, "final_loss": 0.1})
    paper.plot("qbp-sweep", rows, tmp_path / "q.png")
    point_of = {(round(100 * r["mean_sparsity"], 6), round(100 * r["test_accuracy"], 6)):
                r["dither"] for r in rows}
    by_step = {(r["step_log2"], round(100 * r["test_accuracy"], 6)): r["dither"]
               for r in rows if r["dither"] != "-"}
    joined = 0
    for ax in figures[0].axes:
        for line in ax.get_lines():
            xs, ys = (np.asarray(v, dtype=float) for v in line.get_data())
            if len(xs) < 2 or line.get_linestyle() in ("None", "none", ""):
                continue
            if np.allclose(ys, ys[0]) and not np.allclose(xs, xs[0]):
                continue  # a horizontal reference line
            keys = [(round(x, 6), round(y, 6)) for x, y in zip(xs, ys, strict=True)]
            modes = {point_of.get(k, by_step.get((int(round(k[0])), k[1]))) for k in keys}
            assert len(modes) == 1 and None not in modes, (ax.get_xlabel(), keys)
            assert np.all(np.diff(xs) > 0), "a line must not run back over other points"
            joined += 1
    assert joined == 2  # one line per dither mode, through its steps


def test_profile_plot_title_is_the_program_name_and_fits(tmp_path, figures):
    long_dir = tmp_path / ("a_rather_long_directory_name_" * 4)
    long_dir.mkdir()
    prog = _prog(long_dir, "start:\n li r1, 1\nwork:\n li r2, 2\n halt\n",
                 "a_program_with_a_long_descriptive_file_name_for_profiling.s")
    assert main(["profile", str(prog), "-q", "--plot", str(tmp_path / "p.png")]) == 0
    fig = figures[0]
    title = fig.axes[0].get_title()
    assert str(long_dir) not in title and title.replace("\n", " ").startswith(
        "a_program_with_a_long_descriptive_file_name_for_profiling.s: cycles and energy")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the saved figure was closed: draw it again
    canvas.draw()
    box = fig.axes[0].title.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_perceptron_plot_shows_the_trajectories_are_equal(tmp_path, figures):
    from emulator.config import Config

    rows = paper.perceptron(Config(), quick=True)
    paper.plot("perceptron", rows, tmp_path / "p.png")
    axes = figures[0].axes
    diff_ax = next(ax for ax in axes if "w_chip - w_exact" in ax.get_ylabel())
    lines = diff_ax.get_lines()
    assert len(lines) == len(rows) == 2
    for line, r in zip(lines, rows, strict=True):
        assert len(line.get_ydata()) == r["updates"] and not np.any(line.get_ydata())
    traj_ax = next(ax for ax in axes if ax.get_ylabel() == "weight value")
    chip = [ln for ln in traj_ax.get_lines() if "chip" in ln.get_label()]
    exact = [ln for ln in traj_ax.get_lines() if "exact" in ln.get_label()]
    assert chip and len(chip) == len(exact)
    for c, e in zip(chip, exact, strict=True):
        assert np.array_equal(c.get_ydata(), e.get_ydata())


# ------------------------------------------------------------------------------ --emit-asm
def test_emit_asm_dram_image_reproduces_training_bit_for_bit(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ndataset: synthetic\nlayers: [64, 16, 10]\nepochs: 1\n"
                    "update: {lr: 0.05}\n")
    fw, out = tmp_path / "fw.s", tmp_path / "train.json"
    assert main(["train", str(spec), "--emit-asm", str(fw), "--json", str(out), "--no-float",
                 "-q"]) == 0
    assert (tmp_path / "fw.dram.npy").exists()
    cmd = next(ln for ln in fw.read_text().splitlines() if ln.startswith("#   lpemu run "))
    argv = shlex.split(cmd.removeprefix("#   lpemu "))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(argv + ["-q"]) == 0
    names = [a.rsplit(":", 1)[1] for a in argv if a.endswith(".npy") and ":" in a]
    assert names == ["W1.npy", "LZ1.npy", "W2.npy", "LZ2.npy"]
    # lpemu train's weights_sha256: every W (INT8), then every LZ (INT16 little-endian)
    h = hashlib.sha256()
    for n in ("W1", "W2", "LZ1", "LZ2"):
        a = np.load(tmp_path / f"{n}.npy")
        h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())
    assert h.hexdigest() == json.loads(out.read_text())["weights_sha256"]
