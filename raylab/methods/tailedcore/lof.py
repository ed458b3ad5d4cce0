"""Patchwise local outlier factor: the noise filter of SoftPatch and of TailedCore's head memory.

SoftPatch (Jiang et al., NeurIPS 2022) removes contaminated patches before building the
memory: for every patch position ``(y, x)`` it fits a LOF (Breunig et al. 2000, ``k = 6``)
on the N training images' features at that position, after a random projection to 128
dimensions; patches whose LOF is at or above the 85% quantile of *all* LOF values are
dropped (``keep lof < quantile``, as in the TailedCore release's ``LOFSampler``). A
defect is rare at its position, so its patch has a low local density compared with its
neighbours there. SoftPatch also keeps the LOF values of the kept patches as soft weights.

The release projects with an untrained ``nn.Linear`` (uniform init); raylab uses the same
seeded Gaussian projection as its coreset (:func:`raylab.memory.random_projection`), a
Johnson-Lindenstrauss map of the same role. Positions are independent, so they are fitted
as Ray tasks over chunks of positions when Ray is running (``tasks``), with results
identical to the local loop. ``k`` is clipped to ``N - 1`` as scikit-learn does; fewer
than two images have no neighbours to compare with and are an error.
"""

from __future__ import annotations

import numpy as np
import torch

from raylab.memory import random_projection
from raylab.methods.tailedcore.config import PatchLOFConfig  # defined there: typed configs import it without torch

_DEFAULT_CONFIG = PatchLOFConfig()  # patchwise_lof_scores' default (frozen, so one shared instance is safe)


def project_patches(patches: np.ndarray, projection_dim: int | None, seed: int) -> np.ndarray:
    """(N, h, w, D) -> (N, h, w, d) with the seeded Gaussian projection (d = projection_dim)."""
    n, h, w, d = patches.shape
    flat = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32).reshape(-1, d))
    projected = random_projection(flat, projection_dim, np.random.default_rng(seed))
    return projected.numpy().reshape(n, h, w, -1)


def _lof_positions(projected: np.ndarray, positions: np.ndarray, n_neighbors: int) -> np.ndarray:
    """LOF of every image at each of ``positions`` (flat indices into the h*w grid): (N, P)."""
    from sklearn.neighbors import LocalOutlierFactor

    n = projected.shape[0]
    grid = projected.reshape(n, -1, projected.shape[-1])
    scores = np.empty((n, len(positions)), dtype=np.float32)
    for column, position in enumerate(positions):
        model = LocalOutlierFactor(n_neighbors=min(n_neighbors, n - 1), metric="l2")
        model.fit(grid[:, position, :])
        scores[:, column] = -model.negative_outlier_factor_
    return scores


def patchwise_lof_scores(patches: np.ndarray, config: PatchLOFConfig = _DEFAULT_CONFIG, seed: int = 0) -> np.ndarray:
    """LOF of every training patch against the same position of the other images: (N, h, w)."""
    patches = np.asarray(patches)
    if patches.ndim != 4:
        raise ValueError(f"patchwise LOF needs (N, h, w, D) patch grids, got shape {patches.shape}")
    n, h, w, _ = patches.shape
    if n < 2:
        raise ValueError(f"patchwise LOF needs at least 2 training images to compare, got {n}")
    projected = project_patches(patches, config.projection_dim, seed)
    positions = np.arange(h * w)
    chunks = _chunks(positions, config.tasks)
    if len(chunks) == 1:
        scores = _lof_positions(projected, positions, config.n_neighbors)
    else:
        import ray

        task = ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")(_lof_positions)
        shared = ray.put(projected)
        scores = np.concatenate(ray.get([task.remote(shared, chunk, config.n_neighbors) for chunk in chunks]), axis=1)
    return scores.reshape(n, h, w)


def _chunks(positions: np.ndarray, tasks: int | None) -> list[np.ndarray]:
    if tasks is None:
        from raylab.resources import current

        tasks = current().parallel_tasks()
    tasks = max(1, min(int(tasks), len(positions)))
    return [chunk for chunk in np.array_split(positions, tasks) if len(chunk)]


def lof_keep_mask(scores: np.ndarray, keep_fraction: float) -> np.ndarray:
    """Patches to keep: LOF strictly below the ``keep_fraction`` quantile of all LOF values."""
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if keep_fraction == 1:
        return np.ones(scores.shape, dtype=bool)
    keep = scores < np.quantile(scores, keep_fraction)
    if not keep.any():  # every LOF equal (identical images): nothing is an outlier
        keep = np.ones(scores.shape, dtype=bool)
    return keep
