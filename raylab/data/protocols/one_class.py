"""The one-class protocol's split: per class, a seeded share of its images trains, the rest test.

One-class novelty detection (train on class c only, test on everything with c normal)
needs every class split on its own, so that each class has training images and the test
set keeps the dataset's class balance. The draw for class ``label`` depends only on the
class's sorted sample ids and ``(seed, label)``: the same on every machine, whatever order
the files were listed in. Every row of the input is in the output (``train`` or ``test``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def split_per_class(corpus: pa.Table, train_fraction: float = 0.5, seed: int = 0) -> pa.Table:
    """Reassign ``split``: ``floor(train_fraction * n_c)`` of class c's images train, the rest test."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    labels = np.asarray(corpus.column("label").to_numpy(zero_copy_only=False))
    ids = np.asarray(corpus.column("sample_id").to_pylist(), dtype=object)
    names = corpus.column("class_name").to_pylist()
    split = np.full(len(ids), "test", dtype=object)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[np.argsort(ids[rows], kind="stable")]
        n_train = int(np.floor(train_fraction * rows.size))
        if n_train == 0 or n_train == rows.size:
            raise ValueError(
                f"class {names[rows[0]]!r} (label {label}) has {rows.size} image(s): too few to split "
                f"{train_fraction:g} / {1 - train_fraction:g} into training and test images"
            )
        order = np.random.default_rng((seed, int(label))).permutation(rows.size)
        split[rows[order[:n_train]]] = "train"
    index = corpus.schema.get_field_index("split")
    return corpus.set_column(index, corpus.schema.field("split"), pa.array(split.tolist(), type=pa.string()))
