"""Helpers shared by the adapters: finding files and reading them with clear errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from raylab.data.images import check_sample
from raylab.data.schema import CorpusRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the job looked; the message says where to put it."""


class SkippedFilesWarning(UserWarning):
    """Files in a dataset folder that were not loaded, named with the reason for each."""


def image_files(folder: Path) -> list[Path]:
    """Image files of one folder, sorted; every other file is accounted for.

    A file that is not loaded is never dropped without a word: dangling links, unreadable
    images and files of other types are named in a :class:`SkippedFilesWarning` (sub-folders
    are layout, not data). An empty folder is an error naming it.
    """
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{folder} is not a directory")
    files, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() and not path.exists():
            skipped.append(f"{path.name} (dangling link to {os.readlink(path)})")
        elif path.is_dir():
            continue
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path.name} (not an image: {path.suffix or 'no suffix'})")
        elif not os.access(path, os.R_OK):
            skipped.append(f"{path.name} (unreadable: permission denied)")
        else:
            files.append(path)
    if skipped:
        shown = "; ".join(skipped[:10]) + (f"; and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        warnings.warn(f"{folder}: {len(skipped)} file(s) not loaded: {shown}", SkippedFilesWarning, stacklevel=2)
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); remove it or add images")
    return files


def file_record(
    path: Path,
    relative_to: Path,
    *,
    label: int,
    class_name: str,
    split: str,
    mask_path: Path | None = None,
    defect: str | None = None,
) -> CorpusRecord:
    """A validated record of one image file (and its mask file), id = path without suffix."""
    relative = path.relative_to(relative_to).as_posix()
    image = path.read_bytes()
    mask = mask_path.read_bytes() if mask_path is not None else None
    check_sample(image, mask, sample=relative)
    return CorpusRecord(
        sample_id=relative.rsplit(".", 1)[0],
        image=image,
        mask=mask,
        label=label,
        class_name=class_name,
        split=split,
        source=relative,
        defect_type=defect,
    )
