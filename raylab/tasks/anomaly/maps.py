"""From patch scores to anomaly maps and image scores: the post-processing all anomaly
methods share (PatchCore, SoftPatch, TailedCore, MeDS).

Patch grids are bilinearly upsampled to the input size and smoothed with a Gaussian of
sigma 4, the smoothing every one of these papers uses. Image scores come either from the
raw patch grid's maximum (PatchCore, SoftPatch, TailedCore) or from the mean of the top 1%
of the smoothed map (MeDS, Dinomaly), which is less sensitive to one noisy patch.
"""

from __future__ import annotations

import functools
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
    """(N, h, w) patch scores -> (N, S, S) float32 maps, upsampled bilinearly and Gaussian-smoothed.

    Both steps are separable linear maps, so each axis is one (S, cells) matrix and a map is
    ``rows @ grid @ cols.T``: the same maps as upsampling to S x S and convolving with the 2-D
    kernel (reflect padding, as torchvision's ``gaussian_blur``), to float rounding, at a small
    fraction of the work (``benchmarks/anomaly_maps.py``).
    """
    grids = np.asarray(patch_scores, dtype=np.float32)
    rows = _axis_operator(grids.shape[1], image_size, float(sigma))
    cols = _axis_operator(grids.shape[2], image_size, float(sigma))
    maps = np.empty((len(grids), image_size, image_size), dtype=np.float32)
    for start in range(0, len(grids), batch_size):
        chunk = torch.from_numpy(grids[start : start + batch_size])
        maps[start : start + len(chunk)] = (rows @ chunk @ cols.T).numpy()
    return maps


@functools.lru_cache(maxsize=32)
def _axis_operator(cells: int, image_size: int, sigma: float) -> torch.Tensor:
    """One axis of upsample-then-blur as an (image_size, cells) matrix: column j is what an
    impulse at cell j becomes (linear interpolation as ``F.interpolate(align_corners=False)``,
    then the normalised Gaussian truncated at 4 sigma over reflect padding)."""
    impulses = torch.eye(cells, dtype=torch.float64)[:, None, :]
    lines = F.interpolate(impulses, size=image_size, mode="linear", align_corners=False)
    if sigma > 0:
        size = gaussian_kernel_size(sigma)
        half = size // 2
        offsets = torch.linspace(-half, half, size, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        lines = F.conv1d(F.pad(lines, (half, half), mode="reflect"), (kernel / kernel.sum()).view(1, 1, size))
    return lines[:, 0, :].T.to(torch.float32).contiguous()


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
