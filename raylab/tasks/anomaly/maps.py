"""From patch scores to anomaly maps and image scores: the post-processing all anomaly
methods share (PatchCore, SoftPatch, TailedCore, MeDS).

Patch grids are bilinearly upsampled to the input size and smoothed with a Gaussian of
sigma 4, the smoothing every one of these papers uses. Image scores come either from the
raw patch grid's maximum (PatchCore, SoftPatch, TailedCore) or from the mean of the top 1%
of the smoothed map (MeDS, Dinomaly), which is less sensitive to one noisy patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

ImageReduction = Literal["max", "top_fraction_mean"]


def gaussian_kernel_size(sigma: float) -> int:
    """Truncate at 4 sigma, as scipy.ndimage.gaussian_filter does."""
    return 2 * int(4 * sigma + 0.5) + 1


def patch_scores_to_maps(
    patch_scores: np.ndarray, image_size: int, sigma: float = 4.0, batch_size: int = 64
) -> np.ndarray:
    """(N, h, w) patch scores -> (N, S, S) float32 maps, upsampled and Gaussian-smoothed."""
    from torchvision.transforms.functional import gaussian_blur

    maps = np.empty((len(patch_scores), image_size, image_size), dtype=np.float32)
    for start in range(0, len(patch_scores), batch_size):
        chunk = torch.from_numpy(np.asarray(patch_scores[start : start + batch_size], dtype=np.float32))
        chunk = F.interpolate(chunk[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
        if sigma > 0:
            chunk = gaussian_blur(chunk, kernel_size=gaussian_kernel_size(sigma), sigma=sigma)
        maps[start : start + len(chunk)] = chunk[:, 0].numpy()
    return maps


def reduce_to_image_scores(
    maps: np.ndarray, reduction: ImageReduction = "max", top_fraction: float = 0.01
) -> np.ndarray:
    """Image score per map: its maximum, or the mean of its top ``top_fraction`` values."""
    flat = np.asarray(maps, dtype=np.float32).reshape(len(maps), -1)
    if reduction == "max":
        return flat.max(axis=1)
    if reduction == "top_fraction_mean":
        count = max(1, int(round(top_fraction * flat.shape[1])))
        return np.partition(flat, flat.shape[1] - count, axis=1)[:, -count:].mean(axis=1)
    raise ValueError(f"unknown image score reduction {reduction!r}")


@dataclass
class AnomalyPrediction:
    """What every anomaly detector returns for a batch of test images."""

    image_scores: np.ndarray
    patch_scores: np.ndarray
    maps: np.ndarray | None = None


def max_score_prediction(
    patch_scores: np.ndarray, image_size: int, blur_sigma: float, with_maps: bool = True
) -> AnomalyPrediction:
    """The memory-bank detectors' output (PatchCore, SoftPatch, TailedCore): image score =
    the largest patch score, map = the upsampled, blurred patch grid."""
    maps = patch_scores_to_maps(patch_scores, image_size, blur_sigma) if with_maps else None
    return AnomalyPrediction(
        image_scores=reduce_to_image_scores(patch_scores, "max"), patch_scores=patch_scores, maps=maps
    )
