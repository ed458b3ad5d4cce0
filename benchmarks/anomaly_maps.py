"""Anomaly maps: the 2-D convolution against the separable linear operators, side by side.

Every anomaly detector in raylab turns a patch-score grid into a map the size of the image
(bilinear upsampling, then a Gaussian of sigma 4) before it takes an image score or a pixel
metric. The straightforward way upsamples to S x S and convolves with the 2-D kernel
(torchvision's ``gaussian_blur``: 33 x 33 taps at sigma 4). ``patch_scores_to_maps`` uses
that both steps are separable and linear, so each axis is one (S, cells) matrix and a map is
``rows @ grid @ cols.T``. This script times both on the same grids, in one process and one
thread (as a trial's driver scores its test images), at the sizes raylab's configs score,
and prints the ratio and the largest difference between their maps and image scores.

Run::

    python benchmarks/anomaly_maps.py

Measured on 2 cores with nothing else running (one torch thread, 160 grids per size;
1-minute load 1.4 at the start, decaying from an earlier job):

    scores                               2-D conv ms/image  separable ms/image  ratio  max |map diff|  max |score diff|
    MeDS, CPU size: 14x14 -> 224                     34.93               0.154    227         2.7e-06           4.2e-07
    PatchCore, CPU size: 28x28 -> 224                18.76               0.183    102         2.3e-06           4.2e-07
    MeDS, full size: 28x28 -> 392                    54.19               0.680     80         2.6e-06           3.6e-07

A run a minute earlier (load 3.2, decaying) gave ratios 176, 118 and 108. In the README's
main job, scoring the test images (20 detector-class pairs, four of the five detectors
smoothing maps) fell from 76 s to 26-30 s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from raylab.tasks.anomaly.maps import gaussian_kernel_size, patch_scores_to_maps, reduce_to_image_scores

# (grid cells per side, image size, what scores it)
SIZES = (
    (14, 224, "MeDS, CPU size"),
    (28, 224, "PatchCore, CPU size"),
    (28, 392, "MeDS, full size"),
)


def convolved_maps(grids: np.ndarray, image_size: int, sigma: float, batch_size: int = 64) -> np.ndarray:
    """The reference: upsample each grid to S x S, then the 2-D Gaussian convolution."""
    from torchvision.transforms.functional import gaussian_blur

    maps = np.empty((len(grids), image_size, image_size), dtype=np.float32)
    for start in range(0, len(grids), batch_size):
        chunk = torch.from_numpy(grids[start : start + batch_size])[:, None]
        chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear", align_corners=False)
        chunk = gaussian_blur(chunk, kernel_size=gaussian_kernel_size(sigma), sigma=sigma)
        maps[start : start + len(chunk)] = chunk[:, 0].numpy()
    return maps


def timed(function, *args) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    out = function(*args)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160, help="grids scored per size (a class's test images)")
    parser.add_argument("--sigma", type=float, default=4.0, help="Gaussian sigma in pixels (every paper's 4)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(
        f"{'scores':<36}{'2-D conv ms/image':>19}{'separable ms/image':>20}{'ratio':>8}{'max |map diff|':>16}"
        f"{'max |score diff|':>18}"
    )
    for cells, image_size, what in SIZES:
        grids = rng.random((args.images, cells, cells), dtype=np.float32)
        patch_scores_to_maps(grids[:1], image_size, args.sigma)  # build the cached operators outside the timing
        reference, slow = timed(convolved_maps, grids, image_size, args.sigma)
        maps, fast = timed(patch_scores_to_maps, grids, image_size, args.sigma)
        scores = [reduce_to_image_scores(m, "top_fraction_mean", 0.01) for m in (reference, maps)]
        label = f"{what}: {cells}x{cells} -> {image_size}"
        print(
            f"{label:<36}{1e3 * slow / args.images:>19.2f}{1e3 * fast / args.images:>20.3f}{slow / fast:>8.0f}"
            f"{np.abs(reference - maps).max():>16.1e}{np.abs(scores[0] - scores[1]).max():>18.1e}"
        )


if __name__ == "__main__":
    main()
