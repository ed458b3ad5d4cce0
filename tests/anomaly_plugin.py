"""A detector from outside raylab, as a user's plug-in module: importing it registers it.

The smallest honest detector: a test patch's score is its distance to the nearest training
patch (PatchCore without a coreset), searched exactly with faiss and saved as one ``.npy``
file. Jobs find it through ``--set plugins=[tests.anomaly_plugin]``; the module path is
relative to the repository root, which Ray puts on every worker's path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raylab.tasks.anomaly.detectors import register_detector
from raylab.tasks.anomaly.maps import AnomalyPrediction, max_score_prediction

NAME = "nearest_training_patch"


@register_detector(NAME)
class NearestTrainingPatch:
    def __init__(self, seed: int = 0, image_size: int = 224) -> None:
        self.seed = seed  # exact search: nothing to seed
        self.image_size = image_size
        self.memory: np.ndarray | None = None

    def fit(self, train_patches: np.ndarray) -> NearestTrainingPatch:
        self.memory = np.ascontiguousarray(train_patches, np.float32).reshape(-1, train_patches.shape[-1])
        return self

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction:
        import faiss

        if self.memory is None:
            raise RuntimeError("fit first")
        m, h, w, d = patches.shape
        index = faiss.IndexFlatL2(d)
        index.add(self.memory)
        squared, _ = index.search(np.ascontiguousarray(patches, np.float32).reshape(-1, d), 1)
        scores = np.sqrt(np.maximum(squared[:, 0], 0.0)).reshape(m, h, w)
        return max_score_prediction(scores, self.image_size, 4.0, with_maps)

    def save(self, directory: str | Path) -> Path:
        Path(directory).mkdir(parents=True, exist_ok=True)
        np.save(Path(directory) / "memory.npy", self.memory)
        (Path(directory) / "image_size.txt").write_text(str(self.image_size))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> NearestTrainingPatch:
        detector = cls(image_size=int((Path(directory) / "image_size.txt").read_text()))
        detector.memory = np.load(Path(directory) / "memory.npy", allow_pickle=False)
        return detector
