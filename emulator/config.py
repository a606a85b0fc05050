"""Hardware configuration: typed, frozen, validated; loaded from YAML with ``yaml.safe_load``.

Every section is a frozen dataclass whose defaults are the built-in configuration (mirrored
key for key by ``configs/default.yaml``). Each field carries its constraint (type, range or
allowed strings) as metadata and is checked in ``__post_init__``, so a ``Config`` that exists
is valid however it was made. Values the hardware derives from the configuration (accumulator
range, bytes per entry, ...) are properties of :class:`Config` and are computed nowhere else.

Every problem raises :class:`~emulator.errors.ConfigError` carrying the dotted key path
(``"accumulator.bits"``) and the file it came from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from emulator import limits as lim
from emulator.errors import ConfigError
from emulator.files import TooLarge, read_bounded
from emulator.limits import short_repr

if TYPE_CHECKING:  # imported where used: `lpemu run` without --config never needs yaml
    import yaml

__all__ = [
    "AccumulatorConfig",
    "AluConfig",
    "ArrayConfig",
    "BudgetConfig",
    "Config",
    "DmaConfig",
    "EnergyConfig",
    "HostConfig",
    "MemoryConfig",
    "config_from_dict",
    "load_config",
]


# --- field constructors: the constraint of each field lives next to its default ----------


def _int(default: int, lo: int, hi: int) -> Any:
    """An int field (bool rejected) constrained to ``lo <= v <= hi`` (every integer field has
    an upper bound, so no count derived from it can wrap; see emulator/limits.py)."""
    return field(default=default, metadata={"kind": int, "lo": lo, "hi": hi})


def _float(default: float, lo: float, hi: float) -> Any:
    """A finite float field (int accepted and converted, bool rejected), ``lo <= v <= hi``."""
    return field(default=default, metadata={"kind": float, "lo": lo, "hi": hi})


def _opt_float(lo: float, hi: float) -> Any:
    """An optional finite float field: ``None`` (YAML ``null``, the default) or
    ``lo <= v <= hi``."""
    return field(default=None, metadata={"kind": float, "lo": lo, "hi": hi, "optional": True})


def _bool(default: bool) -> Any:
    """A boolean field (YAML true/false; integers rejected)."""
    return field(default=default, metadata={"kind": bool})


def _choice(default: str, *choices: str) -> Any:
    """A str field restricted to ``choices``."""
    return field(default=default, metadata={"kind": str, "choices": choices})


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _check_value(key: str, value: object, meta: dict[str, Any]) -> object:
    """Check one value against its field metadata; return it normalised (int -> float)."""
    kind = meta["kind"]
    if value is None and meta.get("optional"):
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {_type_name(value)} "
                              f"{short_repr(value)}", key)
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"must be an integer, got {_type_name(value)} "
                              f"{short_repr(value)}", key)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"must be a number, got {_type_name(value)} "
                              f"{short_repr(value)}", key)
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"must be finite, got {short_repr(value)}", key) from None
        if not math.isfinite(value):
            raise ConfigError(f"must be finite, got {value!r}", key)
    else:
        choices = meta["choices"]
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {_type_name(value)} "
                              f"{short_repr(value)}", key)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"must be one of {allowed}, got {short_repr(value)}", key)
        return value
    lo, hi = meta["lo"], meta["hi"]
    if value < lo:
        raise ConfigError(f"must be >= {_num(lo)}, got {short_repr(value)}", key)
    if value > hi:
        raise ConfigError(f"must be <= {_num(hi)}, got {short_repr(value)}", key)
    return value


def _num(v: float) -> str:
    """A bound for a message: powers of two as ``2^k``, other numbers as they are."""
    if isinstance(v, int) and v >= 1 << 16 and v & (v - 1) == 0:
        return f"2^{v.bit_length() - 1} = {v}"
    return f"{v:g}" if isinstance(v, float) else f"{v}"


class _Section:
    """Mixin: validate (and normalise) every field of a section dataclass on construction."""

    __slots__ = ()
    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _check_value(f"{self.SECTION}.{f.name}", getattr(self, f.name), f.metadata)
            object.__setattr__(self, f.name, value)


@dataclass(frozen=True, slots=True)
class ArrayConfig(_Section):
    """The systolic MAC array: ``rows x cols`` 8-bit multipliers and its dataflow."""

    SECTION: ClassVar[str] = "array"
    rows: int = _int(16, 1, lim.MAX_ARRAY_DIM)
    cols: int = _int(16, 1, lim.MAX_ARRAY_DIM)
    dataflow: str = _choice(
        "weight_stationary", "weight_stationary", "output_stationary", "input_stationary"
    )
    skip: str = _choice("none", "none", "element", "row")


@dataclass(frozen=True, slots=True)
class AccumulatorConfig(_Section):
    """Accumulator memory: word width in bits, overflow behaviour and number of entries."""

    SECTION: ClassVar[str] = "accumulator"
    bits: int = _int(32, 8, 32)
    overflow: str = _choice("saturate", "saturate", "wrap")
    entries: int = _int(262144, 1, lim.MAX_ACC_ENTRIES)


@dataclass(frozen=True, slots=True)
class MemoryConfig(_Section):
    """Capacities of off-chip DRAM and the on-chip scratchpad, in bytes."""

    SECTION: ClassVar[str] = "memory"
    dram_bytes: int = _int(268435456, 1, lim.MAX_MEMORY_BYTES)
    scratchpad_bytes: int = _int(1048576, 1, lim.MAX_MEMORY_BYTES)


@dataclass(frozen=True, slots=True)
class DmaConfig(_Section):
    """DMA engine: sustained bandwidth, fixed start-up latency per transfer, and whether
    transfers overlap with compute (double buffering)."""

    SECTION: ClassVar[str] = "dma"
    bytes_per_cycle: int = _int(16, 1, lim.MAX_BYTES_PER_CYCLE)
    latency_cycles: int = _int(64, 0, lim.MAX_LATENCY_CYCLES)
    overlap: bool = _bool(False)


@dataclass(frozen=True, slots=True)
class AluConfig(_Section):
    """Vector ALU: element lanes per cycle and pipeline latency."""

    SECTION: ClassVar[str] = "alu"
    lanes: int = _int(16, 1, lim.MAX_LANES)
    latency_cycles: int = _int(1, 0, lim.MAX_LATENCY_CYCLES)


@dataclass(frozen=True, slots=True)
class BudgetConfig(_Section):
    """Run limits, the step, cycle and wall-time ones each counted from the start of one
    ``Machine.run`` call: the emulator stops with BudgetExceeded past any of them
    (``max_seconds`` is wall-clock time; 0: no limit); ``max_memory_bytes`` bounds the host
    memory a machine may take (its memories, program and the working memory of its largest
    instruction; 0: a safe fraction of the memory available when the machine is built,
    emulator/limits.py)."""

    SECTION: ClassVar[str] = "budget"
    max_steps: int = _int(100_000_000, 1, lim.MAX_STEPS)
    max_cycles: int = _int(10**15, 1, lim.MAX_CYCLES)
    max_memory_bytes: int = _int(0, 0, lim.MAX_MEMORY_BUDGET)
    max_seconds: float = _float(60.0, 0.0, lim.MAX_SECONDS)


@dataclass(frozen=True, slots=True)
class HostConfig(_Section):
    """How the emulator uses the host machine (never changes a value or counter).

    ``threads``: the most BLAS/numba threads one operation may use; 0 chooses automatically
    (the CPUs this process may run on). The environment variable ``LPEMU_THREADS`` overrides
    it (sweep workers set it to 1)."""

    SECTION: ClassVar[str] = "host"
    threads: int = _int(0, 0, lim.MAX_THREADS)


@dataclass(frozen=True, slots=True)
class EnergyConfig(_Section):
    """Energy per event in picojoules (sources in configs/default.yaml). Each in [0, 1e9], so
    energy = events x entry stays finite.

    On-chip SRAM (scratchpad, accumulator memory) is priced per 64-bit access at its capacity,
    interpolated between the three ``sram_*_per_64b`` points (emulator/energy.py);
    ``sram_per_64b`` / ``acc_per_64b``, when set, fix the price of the scratchpad /
    accumulator memory instead (the meaning those keys had before capacities were modelled).
    The accumulate add is priced at ``accumulator.bits`` between ``add_int8`` and ``add_int32``.
    """

    SECTION: ClassVar[str] = "energy"
    mult_int8: float = _float(0.2, 0.0, lim.MAX_ENERGY_PJ)
    add_int8: float = _float(0.03, 0.0, lim.MAX_ENERGY_PJ)
    add_int32: float = _float(0.1, 0.0, lim.MAX_ENERGY_PJ)
    sram_8kb_per_64b: float = _float(10.0, 0.0, lim.MAX_ENERGY_PJ)
    sram_32kb_per_64b: float = _float(20.0, 0.0, lim.MAX_ENERGY_PJ)
    sram_1mb_per_64b: float = _float(100.0, 0.0, lim.MAX_ENERGY_PJ)
    sram_per_64b: float | None = _opt_float(0.0, lim.MAX_ENERGY_PJ)
    acc_per_64b: float | None = _opt_float(0.0, lim.MAX_ENERGY_PJ)
    dram_per_64b: float = _float(1950.0, 0.0, lim.MAX_ENERGY_PJ)
    rng_draw: float = _float(1.0, 0.0, lim.MAX_ENERGY_PJ)
    requant_element: float = _float(0.1, 0.0, lim.MAX_ENERGY_PJ)
    instruction: float = _float(0.5, 0.0, lim.MAX_ENERGY_PJ)


_SECTIONS: dict[str, type[_Section]] = {
    "array": ArrayConfig,
    "accumulator": AccumulatorConfig,
    "memory": MemoryConfig,
    "dma": DmaConfig,
    "alu": AluConfig,
    "budget": BudgetConfig,
    "energy": EnergyConfig,
    "host": HostConfig,
}


@dataclass(frozen=True, slots=True)
class Config:
    """The whole hardware configuration. ``Config()`` is the built-in default."""

    array: ArrayConfig = field(default_factory=ArrayConfig)
    accumulator: AccumulatorConfig = field(default_factory=AccumulatorConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    dma: DmaConfig = field(default_factory=DmaConfig)
    alu: AluConfig = field(default_factory=AluConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    host: HostConfig = field(default_factory=HostConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if type(value) is not cls:
                raise ConfigError(f"must be a {cls.__name__}, got {_type_name(value)}", name)

    # --- derived values: the only place they are computed ---------------------------------

    @property
    def acc_min(self) -> int:
        """Smallest accumulator value (two's complement, ``accumulator.bits`` wide)."""
        return -(1 << (self.accumulator.bits - 1))

    @property
    def acc_max(self) -> int:
        """Largest accumulator value (two's complement, ``accumulator.bits`` wide)."""
        return (1 << (self.accumulator.bits - 1)) - 1

    @property
    def acc_bytes_per_entry(self) -> int:
        """Bytes one accumulator entry occupies: ``ceil(bits / 8)``."""
        return (self.accumulator.bits + 7) // 8

    @property
    def acc_bytes(self) -> int:
        """Total accumulator-memory capacity in bytes."""
        return self.accumulator.entries * self.acc_bytes_per_entry

    @property
    def macs_per_cycle(self) -> int:
        """Peak 8-bit multiply-accumulates per cycle of the array (``rows * cols``)."""
        return self.array.rows * self.array.cols

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dicts (JSON/YAML-ready); ``config_from_dict(c.to_dict()) == c``."""
        return {
            name: {f.name: getattr(getattr(self, name), f.name) for f in dataclasses.fields(cls)}
            for name, cls in _SECTIONS.items()
        }


def _unknown_key(key: object, valid: list[str], prefix: str, file: str) -> ConfigError:
    """Error for an unknown key, suggesting the closest valid one if any is close."""
    import difflib  # only on this error path (start-up time)

    path = f"{prefix}{key}"
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(valid)
    return ConfigError(f"unknown key {str(key)!r}; {hint}", path, file)


def config_from_dict(d: dict, file: str = "") -> Config:
    """Build a validated :class:`Config` from nested dicts; missing keys take defaults."""
    if not isinstance(d, dict):
        raise ConfigError(f"top level must be a mapping, got {_type_name(d)}", "", file)
    sections: dict[str, _Section] = {}
    for name, section in d.items():
        if name not in _SECTIONS:  # also rejects non-str keys (str keys only in _SECTIONS)
            raise _unknown_key(name, list(_SECTIONS), "", file)
        if section is None:  # an empty section (all keys commented out): defaults
            section = {}
        if not isinstance(section, dict):
            msg = f"section must be a mapping, got {_type_name(section)}"
            raise ConfigError(msg, name, file)
        cls = _SECTIONS[name]
        valid = [f.name for f in dataclasses.fields(cls)]
        for key in section:
            if key not in valid:
                raise _unknown_key(key, valid, f"{name}.", file)
        try:
            sections[name] = cls(**section)
        except ConfigError as err:
            raise ConfigError(err.message, err.key, file) from None
    return Config(**sections)  # type: ignore[arg-type]


def read_yaml(path: str | Path, what: str) -> Any:
    """Read a YAML file with PyYAML's safe loader; raise ConfigError naming the file (and the
    line and column) for an unreadable file, one over the size limit, text that is not UTF-8,
    invalid YAML, a duplicate key, or aliases that expand past the node limit
    (emulator/limits.py)."""
    import yaml  # here, not at import: `lpemu run` without --config never needs it

    file = str(path)
    try:
        raw = read_bounded(file, lim.MAX_YAML_FILE_BYTES)
    except TooLarge as err:
        raise ConfigError(f"{what} {err.describe()}", "", file) from None
    except OSError as err:
        raise ConfigError(f"cannot read {what}: {err.strerror or err}", "", file) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} is not UTF-8 text (byte {err.start})", "", file) from None
    try:
        return _safe_load(text, file)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        where = _position(mark) if mark is not None else ""
        raise ConfigError(f"invalid YAML: {where}{problem}", "", file) from None
    except RecursionError:  # PyYAML parses nested collections recursively
        raise ConfigError("invalid YAML: collections nested too deeply", "", file) from None
    except (ValueError, KeyError, IndexError, AttributeError) as err:
        # a scalar resolved to a type whose constructor then rejects it (0b_, 2001-02-30,
        # !!bool maybe, ...): PyYAML raises these bare, without a position
        raise ConfigError(f"invalid YAML: {_unconstructible(text)}({type(err).__name__}: "
                          f"{err})", "", file) from None


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _safe_load(text: str, file: str) -> Any:
    """``yaml.safe_load(text)`` (the same SafeLoader and constructors), with two checks on the
    composed node graph before anything is constructed: the document with every alias expanded
    has at most ``MAX_YAML_NODES`` nodes (so a "billion laughs" document is refused in time
    linear in its size), and no mapping repeats a key."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, loader, file)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [x for kv in node.value for x in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_nodes(root: yaml.Node, loader: yaml.SafeLoader, file: str) -> None:
    import yaml

    limit = lim.MAX_YAML_NODES
    size: dict[int, int] = {}  # expanded size of each distinct node
    on_path: set[int] = set()  # a recursive alias (a list holding itself) adds nothing
    stack: list[tuple[yaml.Node, bool, str]] = [(root, False, "")]
    while stack:
        node, done, path = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            total = 1 + sum(size.get(id(c), 0) for c in _children(node))
            if total > limit:
                raise ConfigError(f"the YAML document expands to more than {limit:,} nodes "
                                  f"(aliases expanded at {_position(node.start_mark)}"
                                  "a 'billion laughs' document?)", path, file)
            size[nid] = total
            continue
        if nid in size or nid in on_path:
            continue
        on_path.add(nid)
        stack.append((node, True, path))
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, loader, path, file)
            for k, v in reversed(node.value):
                key = k.value if isinstance(k, yaml.ScalarNode) else "?"
                sub = f"{path}.{key}" if path else str(key)
                stack.append((v, False, sub))
                stack.append((k, False, path))
        else:
            stack.extend((c, False, path) for c in reversed(_children(node)))


def _check_keys(node: yaml.MappingNode, loader: yaml.SafeLoader, path: str,
                file: str) -> None:
    """A mapping's scalar keys are distinct (as constructed: ``1`` and ``0x1`` are the same
    key); keys brought in by a ``<<`` merge may be overridden, as YAML allows."""
    import yaml

    seen: dict[object, yaml.Node] = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == _MERGE_TAG:
            continue
        key = loader.construct_object(k)
        try:
            first = seen.setdefault(key, k)
        except TypeError:  # unhashable: PyYAML reports it when constructing
            continue
        if first is not k:
            sub = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"invalid YAML: {_position(k.start_mark)}duplicate key "
                              f"{short_repr(key)} (first at line {first.start_mark.line + 1})",
                              sub, file)


def _position(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: "


def _unconstructible(text: str) -> str:
    """``"line L, column C: cannot construct 'value' "`` for the first scalar ``yaml.safe_load``
    cannot construct (composing the node tree constructs nothing)."""
    import yaml

    what = "cannot construct a value "
    try:
        stack = [yaml.compose(text, Loader=yaml.SafeLoader)]
    except (yaml.YAMLError, RecursionError):
        return what
    constructor = yaml.constructor.SafeConstructor()
    seen: set[int] = set()  # anchors and aliases can make the node graph cyclic
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                constructor.construct_object(node, deep=True)
            except Exception:  # noqa: BLE001 - the failure being located
                return f"{_position(node.start_mark)}cannot construct {node.value!r} "
        elif isinstance(node, yaml.MappingNode):
            stack.extend(x for kv in reversed(node.value) for x in reversed(kv))
        else:
            stack.extend(reversed(node.value))
    return what


def load_config(path: str | Path | None = None) -> Config:
    """Load a YAML config file (``None``: the built-in defaults; an empty file: defaults)."""
    if path is None:
        return Config()
    data = read_yaml(path, "config file")
    if data is None:
        return Config()
    return config_from_dict(data, str(path))
