"""The MeDS / SoftPatch contamination protocol for unsupervised anomaly detection.

Per class: ``round(noise_ratio * N_good)`` defective images, drawn (seeded) from the test
split, are added to the training set and flagged ``injected_noise`` while keeping their true
label (the method must not read either). By default they leave the test set, as SoftPatch
does, so no image is both trained and tested on; ``keep_injected_in_test`` reproduces the
official MeDS code, which leaves the test set unchanged: the training copy then gets the
sample id ``<id>#injected`` (same image, same features; see :func:`base_sample_id`).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylab.data.manifest import before_after
from raylab.data.schema import CORPUS_SCHEMA, validate_corpus

if TYPE_CHECKING:  # pandas loads where used: see raylab.data's docstring
    import pandas as pd

COPY_SEPARATOR = "#"


def base_sample_id(sample_id: str) -> str:
    """The id of the original image a derived row (``<id>#<tag>``) was copied from."""
    return sample_id.split(COPY_SEPARATOR, 1)[0]


@dataclass(frozen=True)
class NoiseProtocol:
    noise_ratio: float = 0.0
    seed: int = 0
    keep_injected_in_test: bool = False
    on_shortage: Literal["error", "cap"] = "error"


@dataclass(frozen=True)
class ProtocolResult:
    table: pa.Table
    manifest: pd.DataFrame


def class_seed(seed: int, class_name: str) -> np.random.Generator:
    """A generator per (seed, class), so adding a class never changes another class's draw."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode())])


def inject_noise(table: pa.Table, protocol: NoiseProtocol) -> ProtocolResult:
    """Apply the contamination protocol; every input row is accounted for in the manifest."""
    if not (
        isinstance(protocol.noise_ratio, (int, float))
        and math.isfinite(protocol.noise_ratio)
        and protocol.noise_ratio >= 0
    ):
        # Injected defects per good training image; NaN or infinity would reach int(round(...)).
        raise ValueError(f"noise_ratio must be a finite number >= 0, got {protocol.noise_ratio}")
    validate_corpus(table)
    frame = table.select(["sample_id", "class_name", "split", "label"]).to_pandas()
    chosen: list[int] = []
    for class_name, n_good, wanted, pool in _supply(frame, protocol.noise_ratio):
        if wanted > len(pool):
            if protocol.on_shortage == "error":
                raise ValueError(_shortage(class_name, protocol.noise_ratio, n_good, wanted, len(pool)))
            wanted = len(pool)
        chosen.extend(class_seed(protocol.seed, class_name).choice(pool, size=wanted, replace=False).tolist())

    injected = np.zeros(table.num_rows, dtype=bool)
    injected[chosen] = True
    mask = pa.array(injected)
    if protocol.keep_injected_in_test:
        copies = table.filter(mask)
        copies = copies.set_column(
            copies.schema.get_field_index("sample_id"),
            "sample_id",
            pc.binary_join_element_wise(copies.column("sample_id"), f"{COPY_SEPARATOR}injected", ""),
        )
        copies = _as_injected(copies)
        result = pa.concat_tables([table, copies])
    else:
        result = pa.concat_tables([table.filter(pc.invert(mask)), _as_injected(table.filter(mask))])
    validate_corpus(result)
    return ProtocolResult(result, before_after(table, result))


def _supply(frame: pd.DataFrame, noise_ratio: float):
    """Per class: (name, good training images, defective images wanted, the test pool to draw from)."""
    for class_name in sorted(frame["class_name"].unique()):
        in_class = frame["class_name"] == class_name
        n_good = int(((frame["split"] == "train") & (frame["label"] == 0) & in_class).sum())
        pool = frame.index[in_class & (frame["split"] == "test") & (frame["label"] == 1)].to_numpy()
        yield (
            class_name,
            n_good,
            int(round(noise_ratio * n_good)),
            pool[np.argsort(frame.loc[pool, "sample_id"].to_numpy())],
        )


def _shortage(class_name: str, noise_ratio: float, n_good: int, wanted: int, available: int) -> str:
    return (
        f"class {class_name!r}: noise ratio {noise_ratio} asks for {wanted} defective "
        f"images ({noise_ratio} x {n_good} good) but only {available} exist in its test split"
    )


def noise_shortages(table: pa.Table, noise_ratios) -> list[str]:
    """What :func:`inject_noise` would refuse, for every ratio at once (checked before any compute)."""
    frame = table.select(["sample_id", "class_name", "split", "label"]).to_pandas()
    return [
        _shortage(class_name, ratio, n_good, wanted, len(pool))
        for ratio in noise_ratios
        for class_name, n_good, wanted, pool in _supply(frame, ratio)
        if wanted > len(pool)
    ]


def _as_injected(rows: pa.Table) -> pa.Table:
    rows = rows.set_column(rows.schema.get_field_index("split"), "split", pa.array(["train"] * rows.num_rows))
    rows = rows.set_column(
        rows.schema.get_field_index("injected_noise"), "injected_noise", pa.array([True] * rows.num_rows)
    )
    return rows.cast(CORPUS_SCHEMA)
