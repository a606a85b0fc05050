"""The sweep file (``lpemu sweep SWEEP.yaml``): schema, loading and expansion into points.

Loaded with ``yaml.safe_load``; unknown keys and bad values raise :class:`ConfigError` naming
the key path (``sweep.yaml:axes[1].zip.hw.array.cols``). ``docs/sweep.md`` documents every
key. Expansion is deterministic: the points are the cartesian product of the axes (each a
grid, a zip of equal-length lists, or seeded random samples) times the seeds, in file order.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emulator.config import Config, read_yaml
from emulator.errors import ConfigError
from programs.compiler.spec import ModelSpec
from programs.sweep.metrics import check_metrics
from programs.sweep.overrides import check_key_syntax

KINDS = ("train", "program")
TOP_KEYS = ("name", "train", "program", "config", "set", "axes", "seeds", "metrics")
TRAIN_KEYS = ("model", "float_reference")
PROGRAM_KEYS = ("file", "load", "count_only", "max_steps", "max_cycles")
AXIS_KINDS = ("grid", "zip", "random")
RANDOM_KEYS = ("samples", "seed", "keys")
DISTRIBUTIONS = ("uniform", "log_uniform", "int", "choice")
MAX_POINTS = 1_000_000


@dataclass(frozen=True)
class Axis:
    """One axis block: the keys it sets and the value tuples it walks (one per position)."""

    kind: str
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    where: str  # key path in the sweep file, for messages


@dataclass(frozen=True)
class SweepSpec:
    """A loaded sweep file. Paths in it are relative to ``base_dir`` (the file's folder)."""

    name: str
    kind: str  # "train" | "program"
    file: str
    base_dir: Path
    config: str | dict | None = None
    model: str | dict | None = None
    float_reference: bool = False
    program: str | None = None
    load: tuple[str, ...] = ()
    count_only: bool = False
    max_steps: int | None = None
    max_cycles: int | None = None
    set: tuple[tuple[str, Any], ...] = ()
    axes: tuple[Axis, ...] = ()
    seeds: tuple[int, ...] | None = None
    metrics: tuple[str, ...] | None = None  # None: the default set of the kind

    @property
    def axis_keys(self) -> list[str]:
        """Every key the axes vary, in file order (``model.seed`` last when seeds are given)."""
        keys = [k for a in self.axes for k in a.keys]
        if self.seeds is not None:
            keys.append("model.seed")
        return keys

    def points(self) -> list[dict[str, Any]]:
        """Each point's assignment ``{key: value}`` (axes, then the seed), in order."""
        blocks: list[list[dict[str, Any]]] = [
            [dict(zip(a.keys, vals, strict=True)) for vals in a.values] for a in self.axes]
        if self.seeds is not None:
            blocks.append([{"model.seed": s} for s in self.seeds])
        out = []
        for combo in itertools.product(*blocks):
            d: dict[str, Any] = {}
            for part in combo:
                d.update(part)
            out.append(d)
        return out


# ------------------------------------------------------------------------------ key checks
def _tree(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)


_HW_TREE = Config().to_dict()
_MODEL_TREE = ModelSpec().to_dict()


def check_key(key: str, kind: str, file: str, where: str) -> None:
    """``key`` names a real hw./model. value (not a section), and fits the point kind."""
    check_key_syntax(key, file)
    head, _, rest = key.partition(".")
    if head == "model" and kind == "program":
        raise ConfigError("a program point has no model: only hw. keys apply", where, file)
    node: Any = _HW_TREE if head == "hw" else _MODEL_TREE
    parts = rest.split(".")
    for i, p in enumerate(parts):
        if not isinstance(node, dict):
            raise ConfigError(f"{key!r}: {'.'.join(parts[:i])!r} is a value, not a section",
                              where, file)
        if p not in node:
            close = difflib.get_close_matches(p, list(node), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(node)
            raise ConfigError(f"unknown key {key!r} ({p!r}); {hint}", where, file)
        node = node[p]
    if isinstance(node, dict):
        raise ConfigError(f"{key!r} is a section; name one of its keys: {', '.join(node)}",
                          where, file)


# ------------------------------------------------------------------------------ loading
def _mapping(v: Any, where: str, file: str, keys: tuple[str, ...] | None = None) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"must be a mapping, got {type(v).__name__ if v is not None else 'null'}",
                          where, file)
    if keys is not None:
        for k in v:
            if k not in keys:
                close = difflib.get_close_matches(str(k), list(keys), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(keys)
                raise ConfigError(f"unknown key {str(k)!r}; {hint}",
                                  f"{where}.{k}" if where else str(k), file)
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _values_list(v: Any, where: str, file: str) -> list[Any]:
    if not isinstance(v, list) or not v:
        raise ConfigError("must be a non-empty list of values", where, file)
    return v


def _random_axis(d: Any, where: str, file: str, kind: str) -> Axis:
    d = _mapping(d, where, file, RANDOM_KEYS)
    for req in ("samples", "keys"):
        if req not in d:
            raise ConfigError(f"missing key {req!r}", f"{where}.{req}", file)
    n, seed = d["samples"], d.get("seed", 0)
    if not _is_int(n) or not 1 <= n <= MAX_POINTS:
        raise ConfigError(f"must be an integer in [1, {MAX_POINTS}]", f"{where}.samples", file)
    if not _is_int(seed) or seed < 0:
        raise ConfigError("must be an integer >= 0", f"{where}.seed", file)
    dists = _mapping(d["keys"], f"{where}.keys", file)
    if not dists:
        raise ConfigError("needs at least one key", f"{where}.keys", file)
    keys = tuple(dists)
    for key in keys:
        check_key(key, kind, file, f"{where}.keys.{key}")
    rng = np.random.default_rng(seed)
    cols = []
    for key in keys:
        w = f"{where}.keys.{key}"
        dist = _mapping(dists[key], w, file, DISTRIBUTIONS)
        if len(dist) != 1:
            raise ConfigError(f"give exactly one of {', '.join(DISTRIBUTIONS)}", w, file)
        (name, arg), = dist.items()
        w = f"{w}.{name}"
        if name == "choice":
            cols.append([_values_list(arg, w, file)[i] for i in rng.integers(0, len(arg), n)])
            continue
        if not (isinstance(arg, list) and len(arg) == 2 and all(_is_num(x) for x in arg)
                and arg[0] <= arg[1]):
            raise ConfigError("must be [low, high] with low <= high", w, file)
        lo, hi = arg
        if name == "int":
            if not all(_is_int(x) for x in arg):
                raise ConfigError("int bounds must be integers", w, file)
            cols.append([int(x) for x in rng.integers(lo, hi + 1, n)])
        elif name == "uniform":
            cols.append([float(x) for x in rng.uniform(lo, hi, n)])
        else:
            if lo <= 0:
                raise ConfigError("log_uniform bounds must be > 0", w, file)
            cols.append([float(x) for x in np.exp(rng.uniform(math.log(lo), math.log(hi), n))])
    return Axis("random", keys, tuple(zip(*cols, strict=True)), where)


def _axis(item: Any, i: int, file: str, kind: str) -> Axis:
    where = f"axes[{i}]"
    item = _mapping(item, where, file, AXIS_KINDS)
    if len(item) != 1:
        raise ConfigError(f"each axis is one of {', '.join(AXIS_KINDS)}", where, file)
    (ak, body), = item.items()
    where = f"{where}.{ak}"
    if ak == "random":
        return _random_axis(body, where, file, kind)
    body = _mapping(body, where, file)
    if not body:
        raise ConfigError("needs at least one key", where, file)
    keys = tuple(body)
    lists = []
    for key in keys:
        check_key(key, kind, file, f"{where}.{key}")
        lists.append(_values_list(body[key], f"{where}.{key}", file))
    if ak == "grid":
        values = tuple(itertools.product(*lists))
    else:
        n = len(lists[0])
        for key, vals in zip(keys, lists, strict=True):
            if len(vals) != n:
                raise ConfigError(f"has {len(vals)} values; {keys[0]} has {n} (zip walks the "
                                  "lists in lockstep)", f"{where}.{key}", file)
        values = tuple(zip(*lists, strict=True))
    return Axis(ak, keys, values, where)


def _opt_path_or_mapping(v: Any, where: str, file: str) -> str | dict | None:
    if v is None or isinstance(v, (str, dict)):
        return v
    raise ConfigError("must be a file path or an inline mapping", where, file)


def sweep_from_dict(d: Any, file: str = "<sweep>", base_dir: Path | None = None) -> SweepSpec:
    """Validate a sweep document (a dict from ``yaml.safe_load``)."""
    d = _mapping(d, "", file, TOP_KEYS)
    base = base_dir if base_dir is not None else Path(file).resolve().parent
    kinds = [k for k in KINDS if k in d]
    if len(kinds) != 1:
        raise ConfigError("give exactly one of 'train' (a model training per point) or "
                          "'program' (an assembly program per point)", "", file)
    kind = kinds[0]
    name = d.get("name", Path(file).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError("must be a non-empty string", "name", file)
    kw: dict[str, Any] = {"config": _opt_path_or_mapping(d.get("config"), "config", file)}
    if kind == "train":
        t = _mapping(d["train"] if d["train"] is not None else {}, "train", file, TRAIN_KEYS)
        kw["model"] = _opt_path_or_mapping(t.get("model"), "train.model", file)
        fr = t.get("float_reference", False)
        if not isinstance(fr, bool):
            raise ConfigError("must be true or false", "train.float_reference", file)
        kw["float_reference"] = fr
    else:
        p = _mapping(d["program"], "program", file, PROGRAM_KEYS)
        if not isinstance(p.get("file"), str):
            raise ConfigError("must name the program file (.s or binary)", "program.file", file)
        kw["program"] = p["file"]
        load = p.get("load", [])
        if not isinstance(load, list) or not all(isinstance(x, str) and "@" in x for x in load):
            raise ConfigError("must be a list of FILE.npy@ADDR strings", "program.load", file)
        kw["load"] = tuple(load)
        co = p.get("count_only", False)
        if not isinstance(co, bool):
            raise ConfigError("must be true or false", "program.count_only", file)
        kw["count_only"] = co
        for key in ("max_steps", "max_cycles"):
            v = p.get(key)
            if v is not None and (not _is_int(v) or v < 1):
                raise ConfigError("must be an integer >= 1 (or null: the config's budget)",
                                  f"program.{key}", file)
            kw[key] = v
    sets = _mapping(d.get("set") or {}, "set", file)
    for key in sets:
        check_key(key, kind, file, f"set.{key}")
    axes_raw = d.get("axes") or []
    if not isinstance(axes_raw, list):
        raise ConfigError("must be a list of axes (grid, zip or random)", "axes", file)
    axes = tuple(_axis(a, i, file, kind) for i, a in enumerate(axes_raw))
    seeds = d.get("seeds")
    if seeds is not None:
        if kind != "train":
            raise ConfigError("seeds apply to train points (model.seed); a program sets its "
                              "own RNG seed", "seeds", file)
        if (not isinstance(seeds, list) or not seeds
                or not all(_is_int(s) and 0 <= s < 2**31 for s in seeds)):
            raise ConfigError("must be a non-empty list of integers in [0, 2**31)", "seeds", file)
        seeds = tuple(seeds)
    seen: dict[str, str] = {}
    for a in axes:
        for k in a.keys:
            if k in seen:
                raise ConfigError(f"{k} is already varied by {seen[k]}", f"{a.where}.{k}", file)
            seen[k] = a.where
    if seeds is not None and "model.seed" in seen:
        raise ConfigError("model.seed is varied by 'seeds'", f"{seen['model.seed']}", file)
    metrics = d.get("metrics")
    if metrics is not None:
        metrics = tuple(check_metrics(metrics, kind, file, kw.get("float_reference", False)))
    spec = SweepSpec(name=name, kind=kind, file=file, base_dir=base, set=tuple(sets.items()),
                     axes=axes, seeds=seeds, metrics=metrics, **kw)
    n = math.prod(len(a.values) for a in axes) * (len(seeds) if seeds else 1)
    if n > MAX_POINTS:
        raise ConfigError(f"{n:,} points; at most {MAX_POINTS:,} per sweep", "axes", file)
    return spec


def load_sweep(path: str | Path) -> SweepSpec:
    """Load and validate a sweep file."""
    data = read_yaml(path, "sweep file")
    return sweep_from_dict(data, str(path), Path(path).resolve().parent)
