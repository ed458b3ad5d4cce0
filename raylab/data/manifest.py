"""Counts of a corpus by split, class, label and provenance: the accounting of every protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # pandas loads where used: see raylab.data's docstring
    import pandas as pd

MANIFEST_KEYS = ["split", "class_name", "label", "injected_noise"]


def corpus_counts(table: pa.Table) -> pd.DataFrame:
    """One row per (split, class, label, injected_noise) with its number of samples."""
    frame = table.select(MANIFEST_KEYS).to_pandas()
    return frame.groupby(MANIFEST_KEYS, dropna=False).size().rename("count").reset_index()


def before_after(before: pa.Table, after: pa.Table) -> pd.DataFrame:
    """Side-by-side counts of a protocol's input and output (missing groups count 0)."""
    merged = corpus_counts(before).merge(
        corpus_counts(after), on=MANIFEST_KEYS, how="outer", suffixes=("_before", "_after")
    )
    merged[["count_before", "count_after"]] = merged[["count_before", "count_after"]].fillna(0).astype(int)
    return merged.sort_values(MANIFEST_KEYS).reset_index(drop=True)
