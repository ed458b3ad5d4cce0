"""The one Arrow schema every raylab image corpus is stored in.

Every dataset adapter emits rows of this schema, every protocol (noise injection, long-tail,
one-class, ID/OOD splits) maps a table of it to another table of it, and every job reads it
back with ``ray.data.read_parquet``. Keeping images *encoded* (PNG/JPEG bytes) keeps shards
small and lets decoding and resizing run in parallel inside ``map_batches``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

# Splits a row can be in. "excluded" rows are kept in the corpus (so counts in = counts out)
# but used by no split: e.g. ELPV cells whose defect probability is ambiguous.
SPLITS = ("train", "val", "test", "excluded")

CORPUS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("mask", pa.binary(), nullable=True),
        pa.field("label", pa.int64(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("defect_type", pa.string(), nullable=True),
        pa.field("injected_noise", pa.bool_(), nullable=False),
        pa.field("attributes", pa.string(), nullable=True),
    ],
    metadata={b"raylab.schema": b"corpus/1"},
)

# Columns a method may read. Provenance flags (``injected_noise``) are for the platform's
# bookkeeping and evaluation only: methods never see them.
METHOD_VISIBLE_COLUMNS = ("sample_id", "image", "mask", "label", "class_name", "split")


@dataclass(frozen=True)
class CorpusRecord:
    """One image of a corpus, as an adapter produces it.

    ``label`` is 0 normal / 1 anomalous for anomaly corpora and the class id for
    classification corpora. ``source`` says where the image came from (a path relative to the
    dataset root, or a package resource) so every error can name the file.
    """

    sample_id: str
    image: bytes
    label: int
    class_name: str
    split: str
    source: str
    mask: bytes | None = None
    defect_type: str | None = None
    injected_noise: bool = False
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "image": self.image,
            "mask": self.mask,
            "label": int(self.label),
            "class_name": self.class_name,
            "split": self.split,
            "source": self.source,
            "defect_type": self.defect_type,
            "injected_noise": bool(self.injected_noise),
            "attributes": json.dumps(dict(self.attributes), sort_keys=True) if self.attributes else None,
        }


def records_to_table(records: Iterable[CorpusRecord]) -> pa.Table:
    """Build a validated corpus table from adapter records."""
    rows = [record.as_row() for record in records]
    table = pa.Table.from_pylist(rows, schema=CORPUS_SCHEMA)
    validate_corpus(table)
    return table


def validate_corpus(table: pa.Table) -> None:
    """Check the invariants every consumer relies on; raise ValueError naming the culprit."""
    missing = [name for name in CORPUS_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"corpus table lacks columns {missing}; expected the raylab corpus schema")
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise ValueError(f"sample_id {duplicate!r} occurs more than once; sample ids must be unique")
    bad_split = set(table.column("split").to_pylist()) - set(SPLITS)
    if bad_split:
        raise ValueError(f"unknown split values {sorted(bad_split)}; allowed: {SPLITS}")


def row_attributes(row: Mapping[str, Any]) -> dict[str, Any]:
    """Decode the JSON ``attributes`` column of one row."""
    raw = row.get("attributes")
    return json.loads(raw) if raw else {}
