"""``--set KEY=VALUE`` (programs/sweep/overrides.py) and the array-utilization counter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emulator.config import Config, config_from_dict
from emulator.counters import IDX, derived
from emulator.errors import ConfigError, UsageError
from emulator.machine import Machine
from isa import assemble
from programs.cli.main import main
from programs.compiler.spec import ModelSpec
from programs.sweep.overrides import apply, parse_set


@pytest.mark.parametrize("text, value", [
    ("hw.array.rows=32", 32), ("model.update.lr=0.01", 0.01), ("hw.dma.overlap=true", True),
    ("model.qbp.step_log2=null", None), ("model.qbp.step_log2=[-4, -3, -2]", [-4, -3, -2]),
    ("hw.array.dataflow=output_stationary", "output_stationary"),
    ("model.update.schedule={kind: step, every: 5}", {"kind": "step", "every": 5}),
])
def test_values_are_yaml(text, value):
    assert parse_set(text) == (text.split("=")[0], value)


def test_overrides_apply_and_a_later_one_wins():
    cfg, spec = apply(Config(), ModelSpec(), [parse_set("hw.array.rows=32"),
                                              parse_set("model.update.lr=0.01"),
                                              parse_set("hw.array.rows=8"),
                                              parse_set("model.update.schedule.kind=step")])
    assert cfg.array.rows == 8 and cfg.array.cols == 16
    assert spec.update.lr == 0.01 and spec.update.schedule.kind == "step"
    assert spec.update.mode == "lazy"  # untouched keys keep the file's values


@pytest.mark.parametrize("text, key, fragment", [
    ("hw.array.rowz=1", "hw.array.rowz", "unknown key 'rowz'; did you mean 'rows'?"),
    ("hw.arrayy.rows=1", "hw.arrayy", "unknown key 'arrayy'; did you mean 'array'?"),
    ("hw.array.rows=abc", "hw.array.rows", "must be an integer, got str 'abc'"),
    ("hw.array.rows=0", "hw.array.rows", "must be >= 1"),
    ("hw.array.rows.x=1", "hw.array.rows.x", "is a value, not a section"),
    ("model.update.lrr=1", "model.update.lrr", "unknown key 'lrr'; did you mean 'lr'?"),
    ("model.qbp.step_log2=[1, 2]", "model.qbp.step_log2", "needs one step per weight layer"),
    ("model.layers=[64, 10", "model.layers", "invalid YAML value"),
    ("foo.bar=1", "foo.bar", "starts with 'hw.'"),
])
def test_errors_name_the_key_path_like_a_file(text, key, fragment):
    with pytest.raises(ConfigError) as info:
        apply(Config(), ModelSpec(), [parse_set(text)])
    assert info.value.key == key and fragment in info.value.message, str(info.value)
    assert str(info.value).startswith(f"--set:{key}: config error: ")


def test_same_message_as_a_config_file(tmp_path):
    f = tmp_path / "hw.yaml"
    f.write_text("array:\n  rowz: 1\n")
    with pytest.raises(ConfigError) as from_file:
        from emulator.config import load_config

        load_config(f)
    with pytest.raises(ConfigError) as from_set:
        apply(Config(), None, [parse_set("hw.array.rowz=1")])
    assert from_file.value.message == from_set.value.message


def test_cli_set_on_run_profile_train_and_experiment(tmp_path, capsys):
    ex = "programs/examples/"
    loads = ["--load", ex + "gemm_a.npy@0", "--load", ex + "gemm_b.npy@0x10000"]
    out = tmp_path / "r.json"
    assert main(["run", ex + "gemm_dither.s", *loads, "-q", "--json", str(out),
                 "--set", "hw.array.rows=32", "--set", "hw.array.dataflow=output_stationary"]) == 0
    d = json.loads(out.read_text())
    assert d["config"]["array"]["rows"] == 32
    assert d["config"]["array"]["dataflow"] == "output_stationary"
    assert main(["profile", ex + "gemm_dither.s", *loads, "-q", "--json", str(out),
                 "--set", "hw.alu.lanes=4"]) == 0
    assert json.loads(out.read_text())["config"]["alu"]["lanes"] == 4
    assert main(["run", ex + "gemm_dither.s", "--set", "model.update.lr=1"]) == 5
    assert "--set:model.update.lr: config error: this command runs a program" in \
        capsys.readouterr().err
    assert main(["run", ex + "gemm_dither.s", "--set", "novalue"]) == UsageError.exit_code
    assert main(["train", "-q", "--no-float", "--json", str(out), "--set", "model.epochs=1",
                 "--set", "model.layers=[64, 20, 10]", "--set", "hw.array.rows=8"]) == 0
    d = json.loads(out.read_text())
    assert d["model"]["layers"] == [64, 20, 10] and d["model"]["epochs"] == 1
    assert main(["experiment", "perceptron", "--set", "model.epochs=1", "--out",
                 str(tmp_path)]) == UsageError.exit_code


# ------------------------------------------------------------------------- utilization
GEMM = """
    li r1, 0
    li r2, 0x100
    li r3, 3
    li r4, 5
    li r5, 2
    li r6, 0
    gemm r6, r1, r2, r3, r4, r5, sb=1
    halt
"""


@pytest.mark.parametrize("skip", ["none", "element"])
def test_array_utilization_is_useful_mac_cycles_over_array_cycles(skip):
    """WS 4x4, M=3 K=5 N=2: 2 folds of (F + S) = (2*4 + 4 - 2) + 3 = 13 cycles: 26 array
    cycles, 16 PEs; 30 MACs minus those whose B element is zero."""
    cfg = config_from_dict({"array": {"rows": 4, "cols": 4, "skip": skip},
                            "dma": {"overlap": True}})
    m = Machine(cfg, assemble(GEMM, "g.s"))
    m.spad[:15] = np.arange(1, 16, dtype=np.int8).view(np.uint8)  # A: no zeros
    b = np.array([[1, 0], [0, 0], [2, 3], [0, 0], [4, 5]], dtype=np.int8)
    m.spad[0x100:0x10A] = b.view(np.uint8).ravel()
    m.run()
    row = m.counts[6]
    macs = 3 * int(np.count_nonzero(b))
    assert row[IDX["macs"]] == macs == 15
    saved = row[IDX["skip_cycles_saved"]]
    assert row[IDX["array_cycles"]] == 26 - saved == row[IDX["cycles"]]
    if skip == "element":
        assert saved == 0  # every fold holds a non-zero stationary element (WS)
    d = derived(m.counts, cfg)
    assert d["array_utilization"] == macs / (16 * (26 - saved))
    assert d["array_utilization_run"] == macs / (16 * m.cycles)
    assert 0 < d["array_utilization_run"] < d["array_utilization"] <= 1
    assert m.summary().to_dict()["array_utilization"] == d["array_utilization"]
