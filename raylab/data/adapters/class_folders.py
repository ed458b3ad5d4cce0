"""Users' own labelled images: one folder per class, ``<root>/<class>/<image>``.

Classes are the sub-folders in sorted order (label = position); every image is a ``test``
row until a protocol (e.g. the one-class split) assigns splits. An empty class folder is an
error naming it, so a typo in a folder layout never silently drops a class.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from raylab.data.adapters.common import DatasetNotFoundError, file_record, image_files
from raylab.data.registry import DATASETS
from raylab.data.schema import records_to_table


@DATASETS.register("class_folders")
def load_class_folders(data_root: str | Path | None, folder: str | None = None) -> pa.Table:
    """``<data_root>/<folder>/<class>/*`` (or ``<data_root>/<class>/*`` without ``folder``)."""
    if data_root is None:
        raise DatasetNotFoundError("class_folders needs --data-root: the folder that holds one sub-folder per class")
    root = Path(data_root) / folder if folder else Path(data_root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetNotFoundError(
            f"{root} holds {len(classes)} class folder(s) {classes}; expected one per class, at least two"
        )
    records = []
    for label, class_name in enumerate(classes):
        for path in image_files(root / class_name):
            records.append(file_record(path, root.parent, label=label, class_name=class_name, split="test"))
    return records_to_table(records)
