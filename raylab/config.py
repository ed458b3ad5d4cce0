"""Typed configs from YAML: dataclasses with the papers' defaults, overridable per file.

``load_config(JobConfig, "meds/magnetic_tile.yaml")`` builds the dataclass tree from a
YAML file, and every value is checked against its field's type on the way in: a typo in a
key, a string where a number belongs (``lr: "fast"``), a scalar where a list belongs
(``noise_ratios: '0.2'``, which a loose loader would turn into ``['0', '.', '2']``), a bool
where an int belongs, or a NaN, all fail with a :class:`ConfigError` that names the file,
the key path, the expected type and the value, before anything starts. Range checks live in
each config's ``__post_init__`` (via :func:`require`) and are reported under the same path.

Floats follow YAML 1.2 (``2e-3`` is a float, not the string PyYAML's 1.1 rules make of it).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot be used; the message names where it came from."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownKeyError(ConfigError, KeyError):
    """A key the config type does not have (a typo, or a key of another section)."""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type for its field."""


def require(condition: bool, key: str, message: str) -> None:
    """Range check for a config's ``__post_init__``: fails naming the key (the loader adds the path)."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` and ``2E5`` as floats, as YAML 1.2 does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$|^[-+]?\.[0-9_]+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    loaded = parse_yaml(text, str(path)) or {}
    if not isinstance(loaded, dict):
        raise ConfigTypeError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def from_mapping(cls: type[T], values: Mapping[str, Any], *, where: str = "config", base: T | None = None) -> T:
    """Build dataclass ``cls`` from a (nested) mapping over ``base`` (default: ``cls()``).

    Nested mappings update the *default instance* of their field, so a YAML that sets one
    key of a section keeps that section's other defaults, even where the field's default
    is a tailored instance (e.g. MeDS's CPU size) rather than the class defaults.
    """
    if not isinstance(values, Mapping):
        raise ConfigTypeError(f"{where}: expected a mapping for {cls.__name__}, got {type(values).__name__} {values!r}")
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise UnknownKeyError(f"{where}: unknown keys {unknown} for {cls.__name__}; known: {sorted(names)}")
    updates = {
        name: _convert(hints[name], value, join_key(where, name), getattr(base, name)) for name, value in values.items()
    }
    try:
        return dataclasses.replace(base, **updates)
    except ConfigError as error:  # a range check of cls.__post_init__: "key: message"
        raise type(error)(join_key(where, str(error))) from None


def join_key(where: str, key: str) -> str:
    """``file.yaml`` + ``lr`` -> ``file.yaml.lr``; a layer label ending in ``:`` reads ``--set: lr``."""
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin in (dict, Mapping) or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _wrong(hint: Any, value: Any, where: str) -> ConfigTypeError:
    return ConfigTypeError(f"{where}: expected {_describe(hint)}, got {type(value).__name__} {value!r}")


def _convert(hint: Any, value: Any, where: str, current: Any = None) -> Any:
    if hint is Any:
        return value
    if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
        return from_mapping(type(current), value, where=where, base=current)
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return from_mapping(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise _wrong(hint, value, where)
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, where, current if dataclasses.is_dataclass(current) else None)
            except ConfigTypeError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise _wrong(hint, value, where)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise _wrong(hint, value, where)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong(hint, value, where)
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise _wrong(hint, value, where)
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _wrong(hint, value, where)
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _wrong(hint, value, where)
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise _wrong(hint, value, where)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(hint, value, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong(hint, value, where)
        if math.isnan(value):
            raise ConfigTypeError(f"{where}: expected a number, got NaN")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _wrong(hint, value, where)
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise _wrong(hint, value, where)
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Defaults <- YAML file <- overrides (nested mappings merge key by key)."""
    values: dict[str, Any] = read_yaml_mapping(path) if path is not None else {}
    if overrides:
        values = deep_merge(values, overrides)
    return from_mapping(cls, values, where=str(path or "config"))


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_assignment(text: str) -> dict[str, Any]:
    """``"meds.stage1.rho=0.2"`` -> ``{"meds": {"stage1": {"rho": 0.2}}}`` (the value read as YAML)."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected key.path=value, e.g. meds.stage1.rho=0.2")
    value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
    for part in reversed(path):
        value = {part: value}
    return value


def to_plain(config: Any) -> Any:
    """A config as plain YAML-able data (tuples as lists), for ``--print-config`` and identities."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {str(k): to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    return config
