"""A seeded, stratified subsample of a corpus, for ``--quick`` runs and smoke tests.

Keeps at most ``per_group`` rows of every (class, split, label) group, so a quick run still
has normal and anomalous test images of every class, and says so in its manifest.
"""

from __future__ import annotations

import pyarrow as pa

from raylab.data.protocols.noise import class_seed


def subsample_corpus(table: pa.Table, per_group: int, seed: int = 0) -> pa.Table:
    if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1:
        raise ValueError(f"images per (class, split, label) group must be an integer >= 1, got {per_group!r}")
    frame = table.select(["sample_id", "class_name", "split", "label"]).to_pandas()
    keep: list[int] = []
    for (class_name, split, label), group in frame.groupby(["class_name", "split", "label"], sort=True):
        ordered = group.sort_values("sample_id").index.to_numpy()
        rng = class_seed(seed, f"{class_name}/{split}/{label}")
        keep.extend(rng.permutation(ordered)[:per_group].tolist())
    return table.take(sorted(keep))
