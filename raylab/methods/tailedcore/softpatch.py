"""SoftPatch (Jiang et al., NeurIPS 2022) as the TailedCore release runs it.

Memory = greedy coreset of the training patches that survive the patchwise LOF filter
(keep the 85% with the lowest LOF, see :mod:`raylab.methods.tailedcore.lof`); each memory
patch keeps its LOF value as a soft weight. A test patch scores its squared L2 distance to
the nearest memory patch times that patch's weight, so matches to somewhat outlying
memory patches (possible leftover noise, LOF > 1) count as more anomalous. Image score =
largest patch score; map = upsampled patch grid smoothed with a Gaussian (sigma 4).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from raylab.features import FeatureSpec
from raylab.memory import MemoryBank, greedy_coreset
from raylab.methods.tailedcore.config import SoftPatchConfig
from raylab.methods.tailedcore.lof import lof_keep_mask, patchwise_lof_scores
from raylab.tasks.anomaly.detectors import register_detector
from raylab.tasks.anomaly.memory_detector import MemoryBankDetector


def flat_patches(patches: np.ndarray) -> np.ndarray:
    patches = np.asarray(patches, dtype=np.float32)
    return np.ascontiguousarray(patches.reshape(-1, patches.shape[-1]))


def coreset_rows(flat: np.ndarray, config, seed: int) -> np.ndarray:
    """Row indices of the greedy coreset of ``flat`` (sorted), with the method's settings."""
    selected = greedy_coreset(
        flat,
        ratio=config.coreset_ratio,
        method=config.coreset_method,
        projection_dim=config.coreset_projection_dim,
        seed=seed,
    )
    return np.sort(selected)


@register_detector(
    "softpatch",
    build=lambda seed, image_size: SoftPatch(SoftPatchConfig(features=FeatureSpec(image_size=image_size)), seed=seed),
)
class SoftPatch(MemoryBankDetector):
    def __init__(self, config: SoftPatchConfig | None = None, seed: int = 0) -> None:
        self.config = config or SoftPatchConfig()
        self.seed = seed
        self.bank: MemoryBank | None = None
        self.weights: np.ndarray | None = None
        self.kept: np.ndarray | None = None  # (N, h, w) which training patches passed the filter

    def fit(self, train_patches: np.ndarray) -> SoftPatch:
        """``train_patches``: (N, h, w, D) patch embeddings of the (possibly noisy) training set."""
        scores = patchwise_lof_scores(train_patches, self.config.lof, seed=self.seed)
        self.kept = lof_keep_mask(scores, self.config.lof.keep_fraction)
        flat = flat_patches(train_patches)[self.kept.reshape(-1)]
        rows = coreset_rows(flat, self.config, self.seed)
        self.bank = MemoryBank(flat.shape[1], metric="l2")
        self.bank.add(flat[rows])
        self.weights = scores.reshape(-1)[self.kept.reshape(-1)][rows].astype(np.float32)
        return self

    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("SoftPatch.fit must run before scoring")
        distances, indices = self.nearest(patches)
        return (distances[:, 0] * self.weights[indices[:, 0]]).reshape(patches.shape[:3])

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.bank is None or self.weights is None:
            raise RuntimeError("fit before saving")
        self.bank.save(directory / "memory_bank")
        np.save(directory / "weights.npy", self.weights)
        (directory / "softpatch.json").write_text(
            json.dumps({"config": dataclasses.asdict(self.config), "seed": self.seed}, indent=2, default=str)
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SoftPatch:
        """Read a detector written by :meth:`save`; it scores exactly as the saved one did."""
        from raylab.config import from_mapping

        directory = Path(directory)
        saved = json.loads((directory / "softpatch.json").read_text())
        model = cls(
            from_mapping(SoftPatchConfig, saved["config"], where=str(directory / "softpatch.json")), seed=saved["seed"]
        )
        model.bank = MemoryBank.load(directory / "memory_bank")
        model.weights = np.load(directory / "weights.npy", allow_pickle=False)
        return model
