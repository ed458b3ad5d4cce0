"""Heat-map overlays for scored images, drawn with PIL and numpy (no figure library per image).

The map is scaled by the model's decision threshold, not by each image's own range: a normal
image stays cool and a defect glows at the same colour in every image, so overlays of a
whole folder compare at a glance.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from raylab.data.images import decode_image


def heat_colours(level: np.ndarray) -> np.ndarray:
    """Blue -> cyan -> yellow -> red for levels in [0, 1]: uint8 (..., 3)."""
    level = np.clip(level, 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4 * level - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * level - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * level - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def heatmap_overlay_png(image: bytes, anomaly_map: np.ndarray, threshold: float, *, sample: str = "?") -> bytes:
    """The image in grey at the map's size, the map blended on top where it is high."""
    size = anomaly_map.shape[::-1]
    grey = np.asarray(decode_image(image, sample=sample, mode="L").resize(size, Image.BILINEAR), dtype=np.float32)
    scale = threshold if np.isfinite(threshold) and threshold > 0 else float(anomaly_map.max() or 1.0)
    level = np.asarray(anomaly_map, dtype=np.float32) / scale
    alpha = np.clip(level, 0.0, 1.0)[..., None] * 0.6
    blended = (1 - alpha) * grey[..., None] + alpha * heat_colours(level)
    buffer = io.BytesIO()
    Image.fromarray(blended.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
