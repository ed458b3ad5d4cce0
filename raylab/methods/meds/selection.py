"""MeDS stage 3's progressive selection rule (pure functions, no training state)."""

from __future__ import annotations

import numpy as np


def blend_weight(iteration: int, total_iterations: int) -> float:
    """``w = max(1 - it / (0.5 T), 0)``: trust the distilled scores first, the current model later."""
    return max(1.0 - iteration / (0.5 * total_iterations), 0.0)


def median_absolute_deviation(values: np.ndarray) -> float:
    return float(np.median(np.abs(values - np.median(values))))


def selection_threshold(scores: np.ndarray, iteration: int, total_iterations: int, k: float = 3.0) -> float:
    """``median(s) + (it / T) k MAD(s)``: at it = 0 the median, so half of each class is kept."""
    return float(np.median(scores) + (iteration / total_iterations) * k * median_absolute_deviation(scores))


def select_samples(
    distilled_scores: np.ndarray,
    current_scores: np.ndarray,
    class_ids: np.ndarray,
    iteration: int,
    total_iterations: int,
    k: float = 3.0,
) -> np.ndarray:
    """Boolean mask of the training samples kept for the next epoch, thresholded per class."""
    weight = blend_weight(iteration, total_iterations)
    blended = weight * distilled_scores + (1 - weight) * current_scores
    keep = np.zeros(len(blended), dtype=bool)
    for class_id in np.unique(class_ids):
        members = class_ids == class_id
        threshold = selection_threshold(blended[members], iteration, total_iterations, k)
        keep[members] = blended[members] < threshold
    return keep
