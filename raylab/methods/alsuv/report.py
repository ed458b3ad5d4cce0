"""Pictures of the attack: target vs reconstruction per method, and generator samples.

Every cell of a figure has one side, :func:`cell_side` of the config's face size
(:attr:`~raylab.methods.alsuv.config.AlsuvConfig.face_size`), whatever the generator's own
resolution: the figure is laid out from that one number, and a face of any other size is
refused rather than pasted over its neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from raylab.methods.alsuv.search import FaceRenderer

# Pixels between cells, and the strip of column titles above a grid.
GAP = 4
LABEL_HEIGHT = 14
# Small canvases (32 px) are shown enlarged by a whole factor to at least this side.
MIN_CELL = 96


def cell_side(size: int) -> int:
    """The side of a figure cell for faces of ``size`` px: a whole multiple, at least :data:`MIN_CELL`."""
    return size * max(1, -(-MIN_CELL // size))


def _tile(canvas: np.ndarray, cell: int) -> Image.Image:
    pixels = ((np.clip(canvas, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)


def _check_size(name: str, images: np.ndarray, size: int) -> None:
    if images.ndim != 4 or images.shape[1:] != (3, size, size):
        raise ValueError(
            f"{name}: faces of shape {images.shape[1:]} in a figure of {size} px faces (3, {size}, {size})"
        )


def grid_size(columns: int, rows: int, size: int) -> tuple[int, int]:
    """``(width, height)`` of a :func:`face_grid` of ``columns`` x ``rows`` faces of ``size`` px."""
    cell = cell_side(size)
    return columns * (cell + GAP), LABEL_HEIGHT + rows * (cell + GAP)


def face_grid(
    targets: np.ndarray, outputs: Mapping[str, np.ndarray], path: str | Path, *, size: int, max_rows: int = 12
) -> Path:
    """One row per target: the target image, then each method's reconstruction (column titles on top).

    ``size``: the face size every image must have (targets and reconstructions alike).
    """
    columns = {"target": targets, **outputs}
    for name, images in columns.items():
        _check_size(name, images, size)
    rows = min(len(targets), max_rows)
    cell = cell_side(size)
    sheet = Image.new("RGB", grid_size(len(columns), rows, size), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (name, images) in enumerate(columns.items()):
        draw.text((c * (cell + GAP) + 2, 1), name[: max(4, cell // 6)], fill="black")
        for r in range(rows):
            sheet.paste(_tile(images[r], cell), (c * (cell + GAP), LABEL_HEIGHT + r * (cell + GAP)))
    path = Path(path)
    sheet.save(path)
    return path


def generator_samples(renderer: FaceRenderer, path: str | Path, *, count: int = 8, seed: int = 0) -> Path:
    """Random faces of the attack's generator (truncated, fixed noise, face crop, canvas size), four a row.

    Eight by default: enough to see what the generator makes, and each one is a full
    synthesis pass, seconds apiece for a 256 px generator on a CPU.
    """
    w = renderer.initial_latents(count, seed)
    with torch.no_grad():
        images = renderer(renderer.generator.broadcast(w)).numpy()
    _check_size("generator samples", images, renderer.size)
    per_row, cell = 4, cell_side(renderer.size)
    sheet = Image.new("RGB", (per_row * cell, -(-count // per_row) * cell), "white")
    for i, image in enumerate(images):
        sheet.paste(_tile(image, cell), ((i % per_row) * cell, (i // per_row) * cell))
    path = Path(path)
    sheet.save(path)
    return path
