"""What PatchCore, SoftPatch and TailedCore share: a faiss memory of training patches, test
patches scored by their distance to it, the image score and map from those patch scores.

The detectors differ in what enters the memory (a coreset, an outlier-filtered coreset, a
head coreset plus the tail's views) and in how a distance becomes a score (SoftPatch weighs it
by the neighbour's outlier score), never in the search or the reduction to image scores and
maps, so those live here once and a fourth memory-bank detector gets them by inheriting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from raylab.memory import MemoryBank
from raylab.tasks.anomaly.maps import AnomalyPrediction, max_score_prediction


class MemoryBankDetector(ABC):
    """A base for detectors whose ``config`` has ``features.image_size`` and ``blur_sigma`` and
    whose ``fit`` fills ``self.bank``; a subclass defines ``patch_scores`` with :meth:`nearest`."""

    bank: MemoryBank | None = None

    def nearest(self, patches: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The (N*h*w, k) distances and memory rows of every patch of the (N, h, w, D) grids."""
        if self.bank is None:
            raise RuntimeError(f"{type(self).__name__}.fit must run before scoring")
        return self.bank.search(np.asarray(patches, dtype=np.float32).reshape(-1, patches.shape[-1]), k=k)

    @abstractmethod
    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        """The (N, h, w) anomaly score of every patch of the (N, h, w, D) grids."""

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction:
        scores = self.patch_scores(patches)
        return max_score_prediction(scores, self.config.features.image_size, self.config.blur_sigma, with_maps)
