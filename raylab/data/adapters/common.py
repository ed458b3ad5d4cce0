"""Helpers shared by the adapters: finding files and reading them with clear errors."""

from __future__ import annotations

from pathlib import Path

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


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()
