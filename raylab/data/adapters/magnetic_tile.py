"""Magnetic-tile surface defects (Huang et al., The Visual Computer 2020).

Layout: ``MT_<Type>/Imgs/<name>.jpg`` with the pixel mask ``<name>.png`` beside it; ``MT_Free``
holds the 952 defect-free tiles, five folders hold 392 defective ones.

The dataset has no train/test split. raylab's split (deterministic by ``split_seed``):
``train_fraction`` (70%) of ``MT_Free`` for training, the other 30% plus every defective
image for testing. Masks of defect-free tiles are empty and are not stored.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raylab.data.adapters.common import DatasetNotFoundError, file_record, image_files
from raylab.data.registry import DATASETS
from raylab.data.schema import CorpusRecord, records_to_table
from raylab.data.splits import seeded_partition

FOLDER = "magnetic_tile"
DEFECT_TYPES = ("Blowhole", "Break", "Crack", "Fray", "Uneven")


@DATASETS.register("magnetic_tile")
def load_magnetic_tile(data_root: str | Path, train_fraction: float = 0.7, split_seed: int = 0) -> pa.Table:
    root = Path(data_root) / FOLDER
    if not (root / "MT_Free" / "Imgs").is_dir():
        raise DatasetNotFoundError(
            f"magnetic tile not found at {root}: expected {root}/MT_Free/Imgs/*.jpg and "
            f"MT_<Defect>/Imgs; download it from github.com/abin24/Magnetic-tile-defect-datasets. "
            f"and pass the folder that contains '{FOLDER}' as --data-root"
        )
    free = [p for p in image_files(root / "MT_Free" / "Imgs") if p.suffix == ".jpg"]
    train_ids, _ = seeded_partition([p.stem for p in free], train_fraction, split_seed)
    records = []
    for path in free:
        records.append(_record(root, path, label=0, split="train" if path.stem in train_ids else "test"))
    for defect in DEFECT_TYPES:
        for path in (p for p in image_files(root / f"MT_{defect}" / "Imgs") if p.suffix == ".jpg"):
            records.append(_record(root, path, label=1, split="test", defect=defect))
    return records_to_table(records)


def _record(root: Path, path: Path, *, label: int, split: str, defect: str | None = None) -> CorpusRecord:
    mask_path = None
    if label == 1:
        mask_path = path.with_suffix(".png")
        if not mask_path.exists():
            raise FileNotFoundError(
                f"{path.relative_to(root.parent)}: defective image without its mask {mask_path.name}"
            )
    return file_record(
        path, root.parent, label=label, class_name="magnetic_tile", split=split, mask_path=mask_path, defect=defect
    )
