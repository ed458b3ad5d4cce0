"""Helpers shared by the adapters: finding files and reading them with clear errors."""

from __future__ import annotations

from pathlib import Path

from raylab.data.images import check_sample
from raylab.data.schema import CorpusRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the job looked; the message says where to put it."""


def image_files(folder: Path) -> list[Path]:
    """Image files of one folder, sorted; an empty folder is an error naming it."""
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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
