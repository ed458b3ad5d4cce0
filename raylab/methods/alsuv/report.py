"""Pictures of the attack: target vs reconstruction per method, and generator samples."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from raylab.methods.alsuv.search import FaceRenderer


def _tile(canvas: np.ndarray, scale: int) -> Image.Image:
    pixels = ((np.clip(canvas, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    image = Image.fromarray(pixels)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def face_grid(targets: np.ndarray, outputs: Mapping[str, np.ndarray], path: str | Path, *, scale: int = 3, max_rows: int = 12) -> Path:
    """One row per target: the target image, then each method's reconstruction (column titles on top)."""
    columns = {"target": targets, **outputs}
    rows = min(len(targets), max_rows)
    size = targets.shape[-1] * scale
    label_height, gap = 14, 4
    width = len(columns) * (size + gap)
    sheet = Image.new("RGB", (width, label_height + rows * (size + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (name, images) in enumerate(columns.items()):
        draw.text((c * (size + gap) + 2, 1), name[: max(4, size // 6)], fill="black")
        for r in range(rows):
            sheet.paste(_tile(images[r], scale), (c * (size + gap), label_height + r * (size + gap)))
    path = Path(path)
    sheet.save(path)
    return path


def generator_samples(renderer: FaceRenderer, path: str | Path, *, count: int = 16, seed: int = 0) -> Path:
    """Random faces of the attack's generator (truncated, fixed noise, face crop) in a 4-wide grid."""
    w = renderer.initial_latents(count, seed)
    with torch.no_grad():
        images = renderer(renderer.generator.broadcast(w)).numpy()
    per_row = 4
    size = images.shape[-1] * 3
    sheet = Image.new("RGB", (per_row * size, -(-count // per_row) * size), "white")
    for i, image in enumerate(images):
        sheet.paste(_tile(image, 3), ((i % per_row) * size, (i // per_row) * size))
    path = Path(path)
    sheet.save(path)
    return path
