"""Smaller corpora for ``--quick`` runs and smoke budgets: fewer images, or fewer classes.

:func:`subsample_corpus` keeps at most ``per_group`` rows of every (class, split, label)
group (seeded), so a quick run still has normal and anomalous test images of every class.
:func:`spread_classes` keeps a few whole classes chosen evenly across the sorted names, so a
pooled multi-source corpus (``longtail_mix``) keeps classes from its different sources.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

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


def spread_classes(table: pa.Table, count: int) -> pa.Table:
    """Keep ``count`` classes at evenly spaced positions of the sorted class names (first and last included).

    Deterministic and seed-free: the same corpus and count always give the same classes,
    which is what a budget key needs to keep one identity per result.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of classes to keep must be an integer >= 1, got {count!r}")
    names = sorted(set(table.column("class_name").to_pylist()))
    if count >= len(names):
        return table
    step = (len(names) - 1) / max(1, count - 1)
    kept = [names[round(i * step)] for i in range(count)]
    return table.filter(pc.is_in(table["class_name"], pa.array(kept)))
