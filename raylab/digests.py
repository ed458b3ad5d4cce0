"""Content digests: one way to name a result by what it is made of.

Feature caches, Ray Train run names, selection keys and stored artefacts are all keyed by the
content that determines them (arrays, settings, files), so that one name means one result
(:mod:`raylab.experiment.identity` builds the experiment-level names on the same idea). Every
digest is SHA-256 in hex, cut to the length its caller chose; the byte layouts below are the
ones raylab has always used, so existing caches and runs keep their names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np


def content_digest(*arrays: np.ndarray, settings: Any = None, length: int = 16) -> str:
    """Digest of each array's bytes (C order, in the order given), then ``settings`` as sorted
    JSON (values JSON cannot hold, such as paths, by their ``str``)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    if settings is not None:
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:length]


def file_digest(path: str | Path, length: int | None = None) -> str:
    """Digest of a file's bytes, read in blocks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
