"""ELPV electroluminescence solar cells (Deitsch et al.), installed from PyPI: the embedded default.

2,624 grey 300x300 cells of two module types (``mono``, ``poly``, raylab's two classes),
each annotated with a defect probability in {0, 1/3, 2/3, 1}. No masks, so only image
metrics are defined.

Labels: probability 0 -> normal (0); >= 2/3 -> anomalous (1); 1/3 -> split ``excluded``.
The 1/3 cells are the annotators' "possibly defective" grade: calling them normal would
contaminate the clean training set with likely defects, calling them anomalous would test
on cells experts did not agree are defective. They stay in the corpus (so every sample is
accounted for) but in no split. Split (deterministic by ``split_seed``): ``train_fraction``
(70%) of each class's normal cells train; the rest of the normal cells and all anomalous
cells test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from raylab.data.adapters.common import DatasetNotFoundError
from raylab.data.images import check_sample
from raylab.data.registry import DATASETS
from raylab.data.schema import CorpusRecord, records_to_table
from raylab.data.splits import seeded_partition


def elpv_package_root() -> Path:
    try:
        import elpv_dataset
    except ImportError as error:
        raise DatasetNotFoundError(
            "ELPV is not installed: pip install 'raylab[data]' (or pip install elpv-dataset)"
        ) from error
    return Path(elpv_dataset.__file__).parent / "data"


MODULE_TYPES = ("mono", "poly")


@DATASETS.register("elpv")
def load_elpv(
    data_root: str | Path | None = None,
    train_fraction: float = 0.7,
    split_seed: int = 0,
    classes: tuple[str, ...] = ("mono", "poly"),
    anomalous_from: float = 2 / 3,
) -> pa.Table:
    """``data_root`` may hold an ``elpv`` folder (``labels.csv`` + ``images/``); else the package's copy."""
    root = (
        Path(data_root) / "elpv"
        if data_root and (Path(data_root) / "elpv" / "labels.csv").exists()
        else elpv_package_root()
    )
    labels = np.genfromtxt(root / "labels.csv", dtype=["U32", "f8", "U8"], names=["path", "probability", "type"])
    rows = [
        (str(p), float(q), str(t))
        for p, q, t in zip(labels["path"], labels["probability"], labels["type"], strict=True)
    ]
    unknown = sorted({t for _, _, t in rows} - set(MODULE_TYPES))
    if unknown:
        raise ValueError(f"{root / 'labels.csv'}: unknown module types {unknown}")
    asked = sorted(set(classes) - set(MODULE_TYPES))
    if asked or not classes:
        raise ValueError(
            f"elpv classes {list(classes)}: {asked or 'none given'} not known; the classes are {list(MODULE_TYPES)}"
        )
    records = []
    for module_type in classes:
        cells = [(p, q) for p, q, t in rows if t == module_type]
        normal_ids = [p for p, q in cells if q == 0.0]
        train_ids, _ = seeded_partition(normal_ids, train_fraction, split_seed)
        for path, probability in cells:
            if probability == 0.0:
                label, split = 0, "train" if path in train_ids else "test"
            elif probability >= anomalous_from - 1e-6:
                label, split = 1, "test"
            else:
                label, split = 1, "excluded"
            image = (root / path).read_bytes()
            source = f"elpv/{path}"
            check_sample(image, None, sample=source)
            records.append(
                CorpusRecord(
                    sample_id=f"elpv/{module_type}/{Path(path).stem}",
                    image=image,
                    label=label,
                    class_name=module_type,
                    split=split,
                    source=source,
                    defect_type="defective" if label else None,
                    attributes={"defect_probability": round(probability, 4)},
                )
            )
    return records_to_table(records)
