"""``--set KEY=VALUE`` overrides of the hardware config (``hw.``) and the model spec (``model.``).

A value is parsed with ``yaml.safe_load`` (``32``, ``0.01``, ``null``, ``weight_stationary``,
``[-4, -3, -2]``, ``{kind: step}``). Overrides are applied to the nested dict of an already
valid config / spec and the result is validated by the same loaders as a file, so a bad key or
value raises the same :class:`ConfigError` message, located at the full key path
(``--set:hw.array.rowz: config error: unknown key 'rowz'; did you mean 'rows'?``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from emulator.config import Config, config_from_dict
from emulator.errors import ConfigError, UsageError
from programs.compiler.spec import ModelSpec, spec_from_dict

PREFIXES = ("hw", "model")
Override = tuple[str, Any]


def parse_value(text: str, key: str, source: str = "--set") -> Any:
    """A YAML scalar or flow collection (``yaml.safe_load``); invalid YAML is a ConfigError."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML value {text!r}: {problem}", key, source) from None
    except (ValueError, KeyError, IndexError, AttributeError, RecursionError) as err:
        raise ConfigError(f"invalid YAML value {text!r}: {type(err).__name__}", key,
                          source) from None


def parse_set(text: str) -> Override:
    """``"hw.array.rows=32"`` -> ``("hw.array.rows", 32)``."""
    arg = f"--set {text}"
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise UsageError("expected KEY=VALUE, e.g. hw.array.rows=32 or model.update.lr=0.01",
                         arg)
    check_key_syntax(key, "--set", arg)
    return key, parse_value(value, key)


def check_key_syntax(key: object, source: str, where: str | None = None) -> None:
    """A key is ``hw.<section>.<name>`` or ``model.<path>``: raise ConfigError otherwise."""
    if not isinstance(key, str):
        raise ConfigError(f"a key must be a string, got {type(key).__name__} {key!r}",
                          str(key), source)
    head, _, rest = key.partition(".")
    if head not in PREFIXES or not rest or any(not p for p in rest.split(".")):
        raise ConfigError("a key starts with 'hw.' (hardware config) or 'model.' (model spec) "
                          "and names a dotted path, e.g. hw.array.rows or model.update.lr",
                          key, source)


def _set_path(d: dict, path: list[str], value: Any, full: str, source: str) -> None:
    node = d
    for i, p in enumerate(path[:-1]):
        nxt = node.get(p)
        if p in node and not isinstance(nxt, dict):
            where = ".".join(path[: i + 1])
            raise ConfigError(f"{where!r} is a value, not a section: cannot set {path[-1]!r} "
                              "inside it", full, source)
        if nxt is None:  # unknown section: the loader names it with its suggestion
            nxt = node[p] = {}
        node = nxt
    node[path[-1]] = copy.deepcopy(value)


def _rekey(err: ConfigError, prefix: str, source: str) -> ConfigError:
    key = f"{prefix}.{err.key}" if err.key else prefix
    return ConfigError(err.message, key, source)


def _apply_prefix(obj: Any, prefix: str, overrides: Iterable[Override], source: str,
                  build: Callable[[dict, str], Any]) -> Any:
    """``obj`` (a Config or ModelSpec) with the ``<prefix>.`` overrides applied and
    re-validated by ``build`` (its loader); errors keyed by the full override path."""
    items = [(k, v) for k, v in overrides if k.startswith(prefix + ".")]
    if not items:
        return obj
    d = obj.to_dict()
    for key, value in items:
        _set_path(d, key.split(".")[1:], value, key, source)
    try:
        return build(d, source)
    except ConfigError as err:
        raise _rekey(err, prefix, source) from None


def apply_hw(cfg: Config, overrides: Iterable[Override], source: str = "--set") -> Config:
    """``cfg`` with the ``hw.`` overrides applied (other keys skipped)."""
    return _apply_prefix(cfg, "hw", overrides, source, config_from_dict)


def apply_model(spec: ModelSpec, overrides: Iterable[Override],
                source: str = "--set") -> ModelSpec:
    """``spec`` with the ``model.`` overrides applied (other keys skipped)."""
    return _apply_prefix(spec, "model", overrides, source, spec_from_dict)


def apply(cfg: Config, spec: ModelSpec | None, overrides: Iterable[Override] | Mapping,
          source: str = "--set") -> tuple[Config, ModelSpec | None]:
    """Apply ``hw.`` keys to ``cfg`` and ``model.`` keys to ``spec``. With ``spec`` None a
    ``model.`` key is a ConfigError (the command has no model)."""
    items = list(overrides.items()) if isinstance(overrides, Mapping) else list(overrides)
    for key, _ in items:
        check_key_syntax(key, source)
        if spec is None and key.startswith("model."):
            raise ConfigError("this command runs a program, not a model: only hw. keys apply",
                              key, source)
    cfg = apply_hw(cfg, items, source)
    if spec is not None:
        spec = apply_model(spec, items, source)
    return cfg, spec


def parse_sets(texts: Iterable[str] | None) -> list[Override]:
    """Every ``--set`` argument of a command, in order (a later one wins)."""
    return [parse_set(t) for t in texts or []]
