"""Stored artefacts that check themselves when they are read back.

Caches and checkpoints outlive the process that wrote them: a killed job leaves a truncated
file, a full disk a short one, another job on shared storage a different one, a bad sector a
flipped bit. Read back blindly, each fails deep inside numpy, faiss or torch with a message
that names no file, or worse, loads and quietly changes a result. So every entry raylab
writes carries a manifest, written last (size and SHA-256 of each file, and each array's
shape and dtype), and every read checks it first. A failed check names the file and what is
wrong; the caller decides what follows: a cache discards the entry and recomputes it, a
training run falls back to the previous checkpoint or starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

from raylab.digests import file_digest

MANIFEST = "manifest.json"
# A staging folder this old belongs to a writer that died; nothing alive is still writing it.
STALE_STAGING_SECONDS = 6 * 3600


class CorruptArtefactError(ValueError):
    """A stored file that fails its check; the message names the file and what is wrong."""


def _array_header(path: Path) -> dict[str, object] | None:
    """Shape and dtype of a ``.npy`` file from its header (no data read)."""
    if path.suffix != ".npy":
        return None
    import numpy as np

    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        # The public readers (numpy has no public version-generic one); np.save writes 1.0.
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    return {"shape": list(shape), "dtype": str(dtype)}


def write_manifest(directory: Path, names: Iterable[str] | None = None) -> Path:
    """Record every file of ``directory`` (or ``names``): call it after the last file is written."""
    directory = Path(directory)
    files = (
        sorted(names)
        if names is not None
        else sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    )
    entries = {}
    for name in files:
        path = directory / name
        entries[name] = {"bytes": path.stat().st_size, "sha256": file_digest(path), **(_array_header(path) or {})}
    staging = directory / f".{MANIFEST}.tmp"
    staging.write_text(json.dumps({"files": entries}, indent=1))
    os.replace(staging, directory / MANIFEST)
    return directory / MANIFEST


def verify(directory: Path, names: Iterable[str] | None = None) -> None:
    """Check ``directory`` against its manifest (only ``names`` when given); raise naming the culprit."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except FileNotFoundError:
        raise CorruptArtefactError(f"{manifest_path}: missing (the entry was written by an interrupted job)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptArtefactError(f"{manifest_path}: unreadable manifest ({error})") from None
    for name in names if names is not None else entries:
        path, expected = directory / name, entries.get(name)
        if expected is None:
            raise CorruptArtefactError(f"{path}: not in its manifest {manifest_path}")
        if not path.is_file():
            raise CorruptArtefactError(f"{path}: missing (listed in {manifest_path})")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CorruptArtefactError(
                f"{path}: {size} bytes, the manifest says {expected['bytes']} (truncated or replaced)"
            )
        if file_digest(path) != expected["sha256"]:
            raise CorruptArtefactError(
                f"{path}: checksum differs from its manifest (the file changed after it was written)"
            )


def discard(directory: Path, error: Exception) -> None:
    """Drop a cache entry that failed its check, saying which and why (it is recomputed)."""
    warnings.warn(f"discarding the cache entry {directory}: {error}; recomputing it", RuntimeWarning, stacklevel=2)
    shutil.rmtree(directory, ignore_errors=True)


def remove_stale_staging(parent: Path, *, older_than: float = STALE_STAGING_SECONDS) -> list[Path]:
    """Remove ``.staging-*`` folders in ``parent`` left by writers that died ``older_than`` seconds ago."""
    removed = []
    if not parent.is_dir():
        return removed
    cutoff = time.time() - older_than
    for staging in parent.glob(".staging-*"):
        try:
            if staging.is_dir() and staging.stat().st_mtime < cutoff:
                shutil.rmtree(staging, ignore_errors=True)
                removed.append(staging)
        except FileNotFoundError:
            continue
    return removed
