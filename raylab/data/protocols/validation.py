"""A validation split for anomaly detection that never touches the test split.

Choosing a detector's size (a decoder's width, depth, iterations) on the test images reports
the choice as the result. The field's way out, when a class has no labelled validation
defects, is DRAEM's synthetic defect: hold out a share of each class's *training* images,
keep them as the validation normals, and give a copy of each a synthetic defect
(:mod:`raylab.data.synthetic_defects`: a Perlin-shaped blend of foreign texture or of the
image's own displaced structure) as the validation anomalies, with its pixel mask.

:func:`synthetic_validation` returns a corpus table of the usual schema in which each
class's ``train`` rows are the images left to fit on and its ``test`` rows are that
validation set; the class's real test rows are dropped. So every evaluation function of
the anomaly protocol scores a size choice on it unchanged, and no real defect image, hence
no test label, is read. Build it from a clean training set (noise ratio 0): a held-out
image that is itself a defect would count as a validation normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylab.data.images import decode_image, encode_png
from raylab.data.protocols.noise import class_seed
from raylab.data.schema import CORPUS_SCHEMA, validate_corpus
from raylab.data.splits import validation_rows
from raylab.data.synthetic_defects import SyntheticDefectConfig, skimage_anomaly_sources, synthesize_defect


@dataclass(frozen=True)
class SyntheticValidation:
    """``fraction`` of each class's training images held out (seeded per class); their defect
    copies are named ``<id>+<name>``, so validation sets of other defect settings over the same
    held-out images can share one feature table.

    Which images are held out depends on ``fraction`` and ``seed`` only, never on
    ``defects``. A copy's id must not be ``<id>#<tag>``: such ids share their base image's
    features (``base_sample_id``), and a defect is an image of its own.
    """

    fraction: float = 0.2
    seed: int = 0
    defects: SyntheticDefectConfig = field(default_factory=SyntheticDefectConfig)
    name: str = "synthetic_defect"

    @property
    def suffix(self) -> str:
        return f"+{self.name}"


def synthetic_validation(table: pa.Table, protocol: SyntheticValidation) -> pa.Table:
    """Per class: the remaining training images as ``train``, the held-out ones and a
    synthetic-defect copy of each (``<id>+<name>``, label 1, with its mask) as ``test``."""
    sources = skimage_anomaly_sources()
    kept, defects = [], []
    for class_name in sorted(set(table.column("class_name").to_pylist())):
        rows = table.filter(pc.equal(table["class_name"], class_name))
        train = rows.filter(pc.equal(rows["split"], "train"))
        rng = class_seed(protocol.seed, class_name)  # draws the held-out rows, then their defects
        try:
            fit_rows, held_rows = validation_rows(train.num_rows, protocol.fraction, rng)
        except ValueError as error:
            raise ValueError(f"class {class_name!r}: {error}") from None
        normals = train.take(held_rows)
        kept.append(train.take(fit_rows))
        split_column = normals.schema.get_field_index("split")
        test = pa.array(["test"] * normals.num_rows)
        kept.append(normals.set_column(split_column, normals.schema.field(split_column), test))
        defects.extend(_defect_copy(row, rng, sources, protocol) for row in normals.to_pylist())
    out = pa.concat_tables([*kept, pa.Table.from_pylist(defects, schema=CORPUS_SCHEMA)])
    validate_corpus(out)
    return out


def _defect_copy(row: dict, rng: np.random.Generator, sources, protocol: SyntheticValidation) -> dict:
    image = np.asarray(decode_image(row["image"], sample=row["source"]))
    defect = synthesize_defect(image, rng, sources, protocol.defects, sample=row["source"])
    return {
        **row,
        "sample_id": row["sample_id"] + protocol.suffix,
        "image": encode_png(defect.image),
        "mask": encode_png(defect.mask * 255),
        "label": 1,
        "split": "test",
        "source": f"{row['source']} + synthetic defect",
        "defect_type": f"synthetic_{defect.source}",
    }
