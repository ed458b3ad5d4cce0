"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Memory = a greedy k-center coreset of all training patch embeddings; a test patch's score
is its (squared L2, as faiss reports it) distance to the nearest memory patch; the image
score is the largest patch score; the map is the upsampled, smoothed patch grid.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from raylab.features.backbones import BackboneSpec, FeatureSpec
from raylab.memory import MemoryBank, greedy_coreset
from raylab.tasks.anomaly.detectors import register_detector
from raylab.tasks.anomaly.memory_detector import MemoryBankDetector
from raylab.tasks.anomaly.patchcore.config import PatchCoreConfig


@register_detector(
    "patchcore",
    build=lambda seed, image_size: PatchCore(PatchCoreConfig(features=FeatureSpec(image_size=image_size)), seed=seed),
)
class PatchCore(MemoryBankDetector):
    def __init__(self, config: PatchCoreConfig | None = None, seed: int = 0) -> None:
        self.config = config or PatchCoreConfig()
        self.seed = seed
        self.bank: MemoryBank | None = None

    def fit(self, train_patches: np.ndarray) -> PatchCore:
        """``train_patches``: (N, h, w, D) patch embeddings of the (possibly noisy) train set."""
        flat = np.ascontiguousarray(np.asarray(train_patches, dtype=np.float32).reshape(-1, train_patches.shape[-1]))
        selected = greedy_coreset(
            flat,
            ratio=self.config.coreset_ratio,
            method=self.config.coreset_method,
            projection_dim=self.config.coreset_projection_dim,
            seed=self.seed,
        )
        self.bank = MemoryBank(flat.shape[1], metric="l2")
        self.bank.add(flat[np.sort(selected)])
        return self

    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        distances, _ = self.nearest(patches, k=self.config.num_neighbors)
        return distances.mean(axis=1).reshape(patches.shape[:3])

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        assert self.bank is not None, "fit before saving"
        self.bank.save(directory / "memory_bank")
        (directory / "patchcore.json").write_text(
            json.dumps({"config": dataclasses.asdict(self.config), "seed": self.seed}, indent=2)
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PatchCore:
        directory = Path(directory)
        saved = json.loads((directory / "patchcore.json").read_text())
        config = saved["config"]
        features = config.pop("features")
        backbone = BackboneSpec(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in features.pop("backbone").items()}
        )
        model = cls(PatchCoreConfig(features=FeatureSpec(backbone=backbone, **features), **config), seed=saved["seed"])
        model.bank = MemoryBank.load(directory / "memory_bank")
        return model
