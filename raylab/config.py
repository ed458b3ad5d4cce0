"""Typed configs from YAML: dataclasses with the papers' defaults, overridable per file.

``load_config(JobConfig, "configs/meds/magnetic_tile.yaml")`` builds the dataclass tree,
converting lists to tuples where the field is a tuple and rejecting unknown keys with the
file and key named, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def from_mapping(cls: type[T], values: Mapping[str, Any], *, where: str = "config", base: T | None = None) -> T:
    """Build dataclass ``cls`` from a (nested) mapping over ``base`` (default: ``cls()``).

    Nested mappings update the *default instance* of their field, so a YAML that sets one
    key of a section keeps that section's other defaults, even where the field's default
    is a tailored instance (e.g. MeDS's CPU size) rather than the class defaults.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"{where}: expected a mapping for {cls.__name__}, got {type(values).__name__}")
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise KeyError(f"{where}: unknown keys {unknown} for {cls.__name__}; known: {sorted(names)}")
    updates = {
        name: _convert(hints[name], value, f"{where}.{name}", getattr(base, name)) for name, value in values.items()
    }
    return dataclasses.replace(base, **updates)


def _convert(hint: Any, value: Any, where: str, current: Any) -> Any:
    if isinstance(value, Mapping) and dataclasses.is_dataclass(current):
        return from_mapping(type(current), value, where=where, base=current)
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and not isinstance(value, hint):  # a scalar for a section: TypeError
        return from_mapping(hint, value, where=where)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if dataclasses.is_dataclass(option) and isinstance(value, Mapping):
                return from_mapping(option, value, where=where)
        non_none = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(non_none) == 1:
            return _convert(non_none[0], value, where, current) if value is not None else None
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Defaults <- YAML file <- overrides (nested mappings merge key by key)."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise TypeError(f"{path}: the top level must be a mapping")
        values = loaded
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
