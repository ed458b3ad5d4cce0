"""Corpus tables <-> Parquet shards <-> Ray Datasets.

Shards are written once per corpus content (the directory name is the corpus fingerprint),
into a temporary directory that is renamed into place, so a crash never leaves a
half-written corpus that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from raylab.artefacts import CorruptArtefactError, discard, remove_stale_staging, verify, write_manifest
from raylab.data.schema import CORPUS_SCHEMA, validate_corpus

DEFAULT_ROWS_PER_SHARD = 256
T = TypeVar("T")


def cache_root() -> Path:
    """Where raylab writes shards, feature caches and Tune/Train state: ``$RAYLAB_CACHE_DIR``,
    else ``./.raylab`` on a laptop, ``$RAYLAB_HOME/cache`` or, under ``ray job submit``,
    ``~/.raylab/cache`` (never Ray's session folder; see :mod:`raylab.storage`).

    Never beside the data: shared data folders are read-only in CI and on clusters.
    """
    explicit = os.environ.get("RAYLAB_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser().resolve()
    from raylab.storage import default_root

    return default_root().cache_dir


def corpus_fingerprint(table: pa.Table) -> str:
    """A content hash of the whole corpus: ids, bytes, labels, splits and flags."""
    return columns_fingerprint(table, CORPUS_SCHEMA.names)


def columns_fingerprint(table: pa.Table, columns: Sequence[str]) -> str:
    """A content hash of ``columns`` of ``table`` (a cache keyed by the images alone hashes
    ``sample_id`` and ``image``: a new split of the same images finds the same entry)."""
    digest = hashlib.sha256()
    for column in columns:
        for chunk in table.column(column).chunks:
            # A slice shares its parent's whole buffers: compact it so only its own values count.
            digest.update(len(chunk).to_bytes(8, "little"))
            for buffer in pa.concat_arrays([chunk]).buffers():
                if buffer is not None:
                    digest.update(buffer)
        digest.update(column.encode())
    return digest.hexdigest()[:20]


def write_shards(
    table: pa.Table, directory: str | Path | None = None, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
) -> Path:
    """Write ``table`` as Parquet shards and return the directory.

    With no ``directory``, shards go to ``<cache_root>/corpora/<fingerprint>`` and an
    existing directory of the same fingerprint is reused as it is.
    """
    validate_corpus(table)
    table = table.cast(CORPUS_SCHEMA)
    target = Path(directory) if directory else cache_root() / "corpora" / corpus_fingerprint(table)
    if target.exists() and any(target.glob("*.parquet")):
        if directory is not None:
            raise FileExistsError(f"{target} already holds shards; choose an empty directory")
        try:
            verify(target)
            return target
        except CorruptArtefactError as error:
            discard(target, error)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        for shard, start in enumerate(range(0, max(table.num_rows, 1), rows_per_shard)):
            pq.write_table(table.slice(start, rows_per_shard), staging / f"part-{shard:05d}.parquet")
        write_manifest(staging)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if directory is None and isinstance(error, OSError) and any(target.glob("*.parquet")):
            return target  # a concurrent writer put the same content in place first
        raise
    return target


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Write a cache entry in a staging folder beside ``target``, then rename it into place.

    Readers never see a half-written entry; when a concurrent writer of the same content
    published first, its entry is kept and this one is dropped. The entry's manifest is
    written last (:mod:`raylab.artefacts`), so a reader can check it; staging folders that
    writers killed long ago left behind are removed here.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        yield staging
        write_manifest(staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cached_entry(
    directory: Path, read: Callable[[Path], T], compute: Callable[[], T], write: Callable[[T, Path], None]
) -> T:
    """The content-addressed cache entry ``directory``: read when it passes its manifest check;
    otherwise (absent, or damaged: named in a warning and discarded) computed, written through a
    staging folder (:func:`staged_directory`) and returned. Every array cache of raylab (patch
    features, classifier outputs) is this one mechanism under its own key."""
    if directory.exists():
        try:
            verify(directory)
            return read(directory)
        except (CorruptArtefactError, ValueError, OSError) as error:
            discard(directory, error)
    value = compute()
    with staged_directory(directory) as staging:
        write(value, staging)
    return value


def read_table(directory: str | Path) -> pa.Table:
    """Read shards back into one in-memory table (protocols are table -> table functions)."""
    files = sorted(Path(directory).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet shards in {directory}")
    return pa.concat_tables([pq.read_table(f, schema=CORPUS_SCHEMA) for f in files])


def read_dataset(directory: str | Path, columns: list[str] | None = None):
    """Read shards as a Ray Dataset (one read task per shard, spread over the cluster)."""
    import ray.data

    return ray.data.read_parquet(str(directory), columns=columns, schema=CORPUS_SCHEMA)
