"""Content-addressed identity: one name for one result.

A sweep's default name, each trial's id and every Ray Train run name derive from a hash of
what determines the result (resolved config, dataset and its options, data root, setting,
sampled search parameters, raylab's version). Re-running with the same inputs resumes and
reuses; changing any of them gives a new name, so a finished run is never mistaken for the
answer to a different question. A name chosen by hand (``--name``) is bound to the identity
it was first used with: :func:`claim` records it beside the sweep's Tune state and refuses a
later run whose inputs differ, naming the keys that changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raylab.config import to_plain

IDENTITY_FILE = "raylab_identity.json"


def canonical(value: Any) -> Any:
    """Plain, JSON-stable data: dataclasses and tuples unfolded, floats normalised (0 == 0.0)."""
    value = to_plain(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return int(value) if value.is_integer() else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def content_hash(value: Any, length: int = 10) -> str:
    text = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept whole): the keys a conflict names."""
    value = canonical(value)
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    old, new = flatten(before), flatten(after)
    return sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))


class IdentityConflict(ValueError):
    """A sweep name already holds results of different inputs."""


def claim(directory: str | Path, identity: Mapping[str, Any], *, name: str) -> bool:
    """Bind ``directory`` (a sweep's Tune folder) to ``identity``; True if it already was.

    Raises :class:`IdentityConflict` naming the changed keys when the folder was made by a
    run with different inputs. The record is written atomically before any trial starts.
    """
    directory = Path(directory)
    record = directory / IDENTITY_FILE
    document = canonical(identity)
    if record.is_file():
        try:
            stored = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise IdentityConflict(
                f"{record}: unreadable identity record ({error}); remove {directory} to start fresh"
            ) from None
        if stored == document:
            return True
        keys = changed_keys(stored, document)
        shown = ", ".join(keys[:12]) + (f" and {len(keys) - 12} more" if len(keys) > 12 else "")
        raise IdentityConflict(
            f"sweep name {name!r} already holds results of other inputs (changed: {shown}); "
            "pass another --name, drop --name to get a name derived from the inputs, "
            f"or delete {directory} to start fresh"
        )
    if directory.is_dir() and any(directory.iterdir()):
        raise IdentityConflict(
            f"sweep name {name!r}: {directory} holds results without an identity record, so it cannot be "
            "told whether they answer this run; pass another --name or delete that folder to start fresh"
        )
    directory.mkdir(parents=True, exist_ok=True)
    staging = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(document, indent=1, sort_keys=True))
    os.replace(staging, record)
    return False
