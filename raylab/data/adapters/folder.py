"""MVTec-AD-style folders, the layout MVTec AD and VisA (after its split script) use.

``<root>/<class>/train/good/*``, ``<root>/<class>/test/<defect or good>/*`` and
``<root>/<class>/ground_truth/<defect>/<name>_mask.png``. Users point ``--data-root`` at the
folder that holds ``mvtec`` (or ``visa``), or set ``folder`` in the dataset options.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raylab.data.adapters.common import DatasetNotFoundError, file_record, image_files
from raylab.data.registry import DATASETS
from raylab.data.schema import CorpusRecord, records_to_table


def load_anomaly_folders(
    data_root: str | Path,
    folder: str = "mvtec",
    classes: tuple[str, ...] | None = None,
    allow_missing_masks: bool = False,
) -> pa.Table:
    """Every image of the layout; a defective test image must have its mask.

    A missing mask would otherwise load as an all-normal mask and lower every pixel metric
    without a word. ``allow_missing_masks`` accepts image-level-only defects explicitly (their
    pixel metrics then count the whole image as normal, so read only image metrics).
    """
    root = Path(data_root) / folder if (Path(data_root) / folder).is_dir() else Path(data_root)
    found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir()) if root.is_dir() else []
    if not found:
        raise DatasetNotFoundError(
            f"no MVTec-style classes under {root}: expected <class>/train/good and <class>/test/<defect>"
        )
    wanted = list(classes) if classes else found
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise DatasetNotFoundError(f"classes {missing} not found under {root}; found {found}")
    records = []
    for class_name in wanted:
        class_root = root / class_name
        for path in image_files(class_root / "train" / "good"):
            records.append(_record(root, path, class_name, "train", label=0))
        for defect_dir in sorted(p for p in (class_root / "test").iterdir() if p.is_dir()):
            for path in image_files(defect_dir):
                defect = defect_dir.name
                label = int(defect != "good")
                records.append(
                    _record(
                        root,
                        path,
                        class_name,
                        "test",
                        label=label,
                        defect=defect,
                        allow_missing_mask=allow_missing_masks,
                    )
                )
    return records_to_table(records)


def _record(
    root: Path,
    path: Path,
    class_name: str,
    split: str,
    *,
    label: int,
    defect: str | None = None,
    allow_missing_mask: bool = False,
) -> CorpusRecord:
    mask_path = None
    if label == 1:
        candidate = root / class_name / "ground_truth" / str(defect) / f"{path.stem}_mask.png"
        if candidate.exists():
            mask_path = candidate
        elif not allow_missing_mask:
            raise FileNotFoundError(
                f"{path.relative_to(root)}: defective image without its mask {candidate.relative_to(root)} "
                "(add the mask, or pass the dataset option allow_missing_masks: true for image-level-only defects)"
            )
    return file_record(
        path,
        root,
        label=label,
        class_name=class_name,
        split=split,
        mask_path=mask_path,
        defect=defect if label else None,
    )


@DATASETS.register("mvtec")
def load_mvtec(
    data_root: str | Path,
    classes: tuple[str, ...] | None = None,
    folder: str = "mvtec",
    allow_missing_masks: bool = False,
) -> pa.Table:
    return load_anomaly_folders(data_root, folder=folder, classes=classes, allow_missing_masks=allow_missing_masks)


@DATASETS.register("visa")
def load_visa(
    data_root: str | Path,
    classes: tuple[str, ...] | None = None,
    folder: str = "visa",
    allow_missing_masks: bool = False,
) -> pa.Table:
    return load_anomaly_folders(data_root, folder=folder, classes=classes, allow_missing_masks=allow_missing_masks)
