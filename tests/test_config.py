"""Tests of the hardware configuration loader (emulator/config.py, configs/default.yaml)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator import config as config_module
from emulator.config import (
    AccumulatorConfig,
    ArrayConfig,
    Config,
    EnergyConfig,
    config_from_dict,
    load_config,
)
from emulator.errors import ConfigError

REPO = Path(__file__).parents[1]
DEFAULT_YAML = REPO / "configs" / "default.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def raises_at(d: object, key: str) -> ConfigError:
    """config_from_dict(d) must raise ConfigError at exactly ``key``; return the error."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, file="x.yaml")  # type: ignore[arg-type]
    assert info.value.key == key, str(info.value)
    assert info.value.file == "x.yaml"
    return info.value


# --- defaults --------------------------------------------------------------------------


def test_default_yaml_equals_code_defaults() -> None:
    assert load_config(DEFAULT_YAML) == Config()


def test_default_yaml_lists_every_key() -> None:
    import yaml

    data = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    assert data == Config().to_dict()


def test_default_yaml_marks_assumptions_and_cites_source() -> None:
    from emulator.energy import SOURCES

    text = DEFAULT_YAML.read_text(encoding="utf-8")
    assert "Horowitz" in text and "ISSCC 2014" in text
    for point in ("8 KB 10 pJ", "32 KB 20 pJ", "1 MB 100 pJ"):
        assert point in text, point
    # every energy key cites the paper or is marked an assumption, as the reports say
    assert set(SOURCES) | {"sram_per_64b", "acc_per_64b"} == set(Config().to_dict()["energy"])
    for key, (_, assumed) in SOURCES.items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:"))
        assert ("ASSUMPTION" in line) == assumed and ("Horowitz 2014" in line) != assumed, key


def test_none_and_empty_file_give_defaults(tmp_path: Path) -> None:
    assert load_config(None) == Config()
    assert load_config() == Config()
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "# only a comment\n")) == Config()


def test_default_values() -> None:
    c = Config()
    assert (c.array.rows, c.array.cols, c.array.dataflow) == (16, 16, "weight_stationary")
    assert (c.accumulator.bits, c.accumulator.overflow, c.accumulator.entries) == (
        32,
        "saturate",
        262144,
    )
    assert (c.memory.dram_bytes, c.memory.scratchpad_bytes) == (268435456, 1048576)
    assert (c.dma.bytes_per_cycle, c.dma.latency_cycles) == (16, 64)
    assert (c.alu.lanes, c.alu.latency_cycles) == (16, 1)
    assert (c.budget.max_steps, c.budget.max_cycles) == (100_000_000, 10**15)
    assert c.energy.dram_per_64b == 1950.0
    assert c.energy.mult_int8 == 0.2 and c.energy.add_int8 == 0.03


# --- partial configs, round trip, derived values -------------------------------------------


def test_partial_config_fills_defaults(tmp_path: Path) -> None:
    p = write(tmp_path, "array:\n  rows: 8\nenergy:\n  rng_draw: 2\n")
    c = load_config(p)
    assert c.array == ArrayConfig(rows=8)
    assert c.array.cols == 16
    assert c.energy.rng_draw == 2.0 and isinstance(c.energy.rng_draw, float)
    assert dataclasses.replace(c, array=ArrayConfig(), energy=EnergyConfig()) == Config()


def test_path_may_be_str(tmp_path: Path) -> None:
    p = write(tmp_path, "alu: {lanes: 4}\n")
    assert load_config(str(p)).alu.lanes == 4


def test_to_dict_round_trip() -> None:
    c = config_from_dict(
        {
            "array": {"rows": 3, "cols": 5, "dataflow": "output_stationary"},
            "accumulator": {"bits": 20, "overflow": "wrap", "entries": 7},
            "energy": {"instruction": 0.0, "dram_per_64b": 1300},
        }
    )
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain, JSON-ready
    assert all(type(v) is dict for v in d.values())
    assert config_from_dict(d) == c
    assert config_from_dict(Config().to_dict()) == Config()
    d["array"]["rows"] = 99  # a copy: mutating it does not touch the frozen config
    assert c.array.rows == 3


def test_config_is_frozen() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.array.rows = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.array = ArrayConfig()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("bits", "lo", "hi", "nbytes"),
    [
        (8, -128, 127, 1),
        (12, -2048, 2047, 2),
        (16, -32768, 32767, 2),
        (17, -65536, 65535, 3),
        (32, -2147483648, 2147483647, 4),
    ],
)
def test_derived_accumulator_values(bits: int, lo: int, hi: int, nbytes: int) -> None:
    c = config_from_dict({"accumulator": {"bits": bits, "entries": 10}})
    assert (c.acc_min, c.acc_max, c.acc_bytes_per_entry) == (lo, hi, nbytes)
    assert c.acc_bytes == 10 * nbytes


def test_macs_per_cycle() -> None:
    assert config_from_dict({"array": {"rows": 4, "cols": 8}}).macs_per_cycle == 32


# --- unknown keys ------------------------------------------------------------------------


def test_unknown_top_level_key_with_suggestion() -> None:
    err = raises_at({"acumulator": {"bits": 16}}, "acumulator")
    assert "did you mean 'accumulator'" in err.message


def test_unknown_nested_key_with_suggestion() -> None:
    err = raises_at({"accumulator": {"bitz": 16}}, "accumulator.bitz")
    assert "did you mean 'bits'" in err.message
    assert "x.yaml:accumulator.bitz" in str(err)


def test_unknown_key_without_near_miss_lists_valid_keys() -> None:
    err = raises_at({"dma": {"zzzzzzzz": 1}}, "dma.zzzzzzzz")
    assert "did you mean" not in err.message
    assert "bytes_per_cycle" in err.message and "latency_cycles" in err.message


def test_non_string_key_rejected() -> None:
    raises_at({1: {}}, "1")
    raises_at({"array": {None: 1}}, "array.None")


def test_unknown_key_from_file_carries_file_name(tmp_path: Path) -> None:
    p = write(tmp_path, "energy:\n  dram_per_64bit: 1.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.key == "energy.dram_per_64bit"
    assert info.value.file == str(p)
    assert "did you mean 'dram_per_64b'" in info.value.message


# --- structure and types -------------------------------------------------------------------


@pytest.mark.parametrize("top", [[1, 2], "array", 5, True])
def test_top_level_must_be_mapping(top: object) -> None:
    raises_at(top, "")


def test_top_level_list_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "- 1\n- 2\n"))
    assert info.value.key == "" and "mapping" in info.value.message


@pytest.mark.parametrize("section", [3, [1], "rows: 4"])
def test_section_must_be_mapping(section: object) -> None:
    err = raises_at({"array": section}, "array")
    assert "mapping" in err.message


def test_empty_section_gives_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "array:\n  # rows: 32\naccumulator:\n  bits: 16\n"))
    assert cfg.array == Config().array and cfg.accumulator.bits == 16


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"array": {"rows": "16"}}, "array.rows"),
        ({"array": {"rows": True}}, "array.rows"),
        ({"array": {"cols": 16.0}}, "array.cols"),
        ({"array": {"cols": None}}, "array.cols"),
        ({"array": {"dataflow": 1}}, "array.dataflow"),
        ({"accumulator": {"overflow": False}}, "accumulator.overflow"),
        ({"budget": {"max_cycles": 1e15}}, "budget.max_cycles"),
        ({"budget": {"max_steps": float("inf")}}, "budget.max_steps"),
        ({"energy": {"mult_int8": "0.2"}}, "energy.mult_int8"),
        ({"energy": {"add_int8": True}}, "energy.add_int8"),
        ({"energy": {"instruction": [0.5]}}, "energy.instruction"),
    ],
)
def test_wrong_type(d: dict, key: str) -> None:
    raises_at(d, key)


def test_wrong_type_from_yaml(tmp_path: Path) -> None:
    # YAML "yes"/"true" is a bool, "'16'" a string: both rejected for an int field.
    for text in ("array:\n  rows: true\n", "array:\n  rows: '16'\n"):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert info.value.key == "array.rows"
        assert "integer" in info.value.message


# --- ranges and enums ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "key", "fragment"),
    [
        ({"array": {"rows": 0}}, "array.rows", "must be >= 1, got 0"),
        ({"array": {"cols": 4097}}, "array.cols", "must be <= 4096, got 4097"),
        ({"accumulator": {"bits": 7}}, "accumulator.bits", ">= 8"),
        ({"accumulator": {"bits": 33}}, "accumulator.bits", "<= 32"),
        ({"accumulator": {"entries": 0}}, "accumulator.entries", ">= 1"),
        ({"memory": {"dram_bytes": 0}}, "memory.dram_bytes", ">= 1"),
        ({"memory": {"scratchpad_bytes": -5}}, "memory.scratchpad_bytes", ">= 1"),
        ({"dma": {"bytes_per_cycle": 0}}, "dma.bytes_per_cycle", ">= 1"),
        ({"dma": {"latency_cycles": -1}}, "dma.latency_cycles", ">= 0"),
        ({"alu": {"lanes": 0}}, "alu.lanes", ">= 1"),
        ({"alu": {"latency_cycles": -1}}, "alu.latency_cycles", ">= 0"),
        ({"budget": {"max_steps": 0}}, "budget.max_steps", ">= 1"),
        ({"budget": {"max_cycles": -1}}, "budget.max_cycles", ">= 1"),
        ({"energy": {"dram_per_64b": -0.5}}, "energy.dram_per_64b", ">= 0"),
        ({"energy": {"rng_draw": float("nan")}}, "energy.rng_draw", "finite"),
        ({"energy": {"rng_draw": float("inf")}}, "energy.rng_draw", "finite"),
        ({"energy": {"rng_draw": 10**400}}, "energy.rng_draw", "finite"),
        ({"array": {"dataflow": "row_stationary"}}, "array.dataflow", "weight_stationary"),
        ({"array": {"dataflow": "Weight_Stationary"}}, "array.dataflow", "must be one of"),
        ({"accumulator": {"overflow": "clamp"}}, "accumulator.overflow", "'saturate', 'wrap'"),
    ],
)
def test_out_of_range_and_enum(d: dict, key: str, fragment: str) -> None:
    err = raises_at(d, key)
    assert fragment in err.message, err.message


def test_range_error_str_names_key_path() -> None:
    err = raises_at({"array": {"rows": 0}}, "array.rows")
    assert "array.rows: config error: must be >= 1, got 0" in str(err)


def test_boundaries_accepted() -> None:
    c = config_from_dict(
        {
            "array": {"rows": 1, "cols": 4096},
            "accumulator": {"bits": 8},
            "dma": {"latency_cycles": 0},
            "alu": {"latency_cycles": 0},
            "budget": {"max_steps": 1, "max_cycles": 1},
            "energy": {"instruction": 0},
        }
    )
    assert c.array.cols == 4096 and c.energy.instruction == 0.0


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        AccumulatorConfig(bits=64)
    assert info.value.key == "accumulator.bits"
    with pytest.raises(ConfigError) as info:
        Config(array=AccumulatorConfig())  # type: ignore[arg-type]
    assert info.value.key == "array"


# --- files and YAML errors -------------------------------------------------------------------


def test_yaml_syntax_error_mentions_line(tmp_path: Path) -> None:
    p = write(tmp_path, "array:\n  rows: 16\n  cols: [1, 2\nalu:\n  lanes: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    err = info.value
    assert err.key == "" and err.file == str(p)
    assert re.search(r"line \d+, column \d+", err.message), err.message


def test_yaml_syntax_error_line_is_right(tmp_path: Path) -> None:
    p = write(tmp_path, "array:\n  rows: 16\n   cols: 4\n")  # bad indent on line 3
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "line 3" in info.value.message, info.value.message


def test_yaml_unsafe_tag_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, "array: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.key == ""


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.file == str(p)


@pytest.mark.parametrize("loader", ["config", "model"])
def test_deeply_nested_yaml_is_a_config_error(tmp_path: Path, loader: str) -> None:
    from programs.compiler.spec import load_model

    p = write(tmp_path, "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        (load_config if loader == "config" else load_model)(p)
    assert info.value.file == str(p) and "nested too deeply" in info.value.message


# scalars YAML resolves to int/float/bool/timestamp whose constructors then fail; PyYAML raises
# these as bare ValueError/KeyError/IndexError/AttributeError (found by the hypothesis fuzz)
UNCONSTRUCTIBLE = [
    ("0b_\n", 1, 1, "'0b_'"),
    ("array:\n  rows: 0x_\n", 2, 9, "'0x_'"),
    ("seed: 2001-02-30\n", 1, 7, "'2001-02-30'"),
    ("a: !!timestamp 2001-1-1T99:00:00\n", 1, 4, "'2001-1-1T99:00:00'"),
    ("- 1\n- !!bool maybe\n", 2, 3, "'maybe'"),
    ("x: [1, !!int '-']\n", 1, 8, "'-'"),
    ("&a [*a, !!timestamp x]\n", 1, 9, "'x'"),
]


@pytest.mark.parametrize("loader", ["config", "model"])
@pytest.mark.parametrize(("text", "line", "col", "value"), UNCONSTRUCTIBLE)
def test_unconstructible_scalar_is_a_config_error_with_its_position(
        tmp_path: Path, loader: str, text: str, line: int, col: int, value: str) -> None:
    from programs.compiler.spec import load_model

    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        (load_config if loader == "config" else load_model)(p)
    err = info.value
    assert err.file == str(p) and err.key == ""
    assert f"line {line}, column {col}: cannot construct {value}" in err.message, err.message


@pytest.mark.parametrize("loader", ["config", "model"])
def test_non_utf8_file_names_file_and_byte(tmp_path: Path, loader: str) -> None:
    from programs.compiler.spec import load_model

    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"# caf\xe9\narray: {}\n")
    with pytest.raises(ConfigError) as info:
        (load_config if loader == "config" else load_model)(p)
    err = info.value
    assert err.file == str(p) and err.key == "" and "byte 5" in err.message
    assert str(err).startswith(f"{p}: config error: ")  # no empty key after the file


def test_only_safe_load_used() -> None:
    """No unsafe YAML loading anywhere in the package; all YAML goes through one reader."""
    root = Path(config_module.__file__).resolve().parents[1]
    sources = [p for pkg in ("isa", "emulator", "programs", "lpemu", "benchmarks")
               for p in (root / pkg).rglob("*.py")]
    assert len(sources) > 20
    for p in sources:
        src = p.read_text(encoding="utf-8")
        assert not re.search(r"yaml\.(load|unsafe_load|full_load|load_all)\(", src), p
    assert "yaml.safe_load(" in Path(config_module.__file__).read_text(encoding="utf-8")


# --- property test ---------------------------------------------------------------------------

_KEY_NAMES = list(Config().to_dict()) + [k for s in Config().to_dict().values() for k in s]

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-3, max_value=5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["weight_stationary", "output_stationary", "saturate", "wrap"]),
)
_keys = st.one_of(st.text(max_size=15), st.sampled_from(_KEY_NAMES))
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.dictionaries(_keys, children, max_size=6),
        st.lists(children, max_size=3),
    ),
    max_leaves=25,
)
# Structurally plausible configs: real section and key names with arbitrary values, so the
# property also exercises the per-field type and range checks, not just the key check.
_sections = st.fixed_dictionaries(
    {},
    optional={
        name: st.dictionaries(st.sampled_from(list(keys)), _values, max_size=len(keys))
        for name, keys in Config().to_dict().items()
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_values, st.dictionaries(_keys, _values, max_size=6), _sections))
def test_config_from_dict_only_raises_config_error(d: object) -> None:
    try:
        c = config_from_dict(d)  # type: ignore[arg-type]
    except ConfigError as err:
        assert isinstance(err.key, str) and isinstance(err.message, str)
        str(err)  # formatting the error never fails either
        return
    assert isinstance(c, Config)
    assert config_from_dict(c.to_dict()) == c
