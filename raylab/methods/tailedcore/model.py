"""TailedCore (Jung et al., "TailedCore: Few-Shot Sampling for Unsupervised Long-Tail Noisy
Anomaly Detection", CVPR 2025).

One memory for all classes, built from an unlabelled, long-tailed and noisy training set:

* **tail memory**: TailSampler predicts which images belong to rare classes (from global
  embeddings, :mod:`raylab.methods.tailedcore.tail_sampler`); all patches of those images
  plus the patches of their augmented views (rotations every 15 degrees x horizontal flip,
  :mod:`raylab.methods.tailedcore.views`) -> greedy coreset (10%). Rare classes are thus
  kept whole instead of being filtered out as outliers, and their few images are made to
  cover the orientations a test image may have.
* **head memory**: patchwise LOF over *all* training images (k = 6, keep the 85% lowest,
  the SoftPatch filter that removes injected defects) -> greedy coreset (10%).
* memory = the union; a test patch scores its squared L2 distance to the nearest memory
  patch (faiss flat), image score = largest patch score, map = upsampled patch grid +
  Gaussian blur (sigma 4). No soft weights (those are SoftPatch's).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raylab.memory import MemoryBank
from raylab.methods.anomaly_maps import AnomalyPrediction, max_score_prediction
from raylab.methods.tailedcore.config import TailedCoreConfig
from raylab.methods.tailedcore.lof import lof_keep_mask, patchwise_lof_scores
from raylab.methods.tailedcore.softpatch import coreset_rows, flat_patches
from raylab.methods.tailedcore.tail_sampler import TailPrediction, TailSampler

# Given training-image indices, the patch grids of their augmented views: (V, h, w, D).
ViewSource = Callable[[np.ndarray], np.ndarray]


class TailedCore:
    def __init__(self, config: TailedCoreConfig | None = None, seed: int = 0) -> None:
        self.config = config or TailedCoreConfig()
        self.seed = seed
        self.bank: MemoryBank | None = None
        self.tail: TailPrediction | None = None
        self.head_kept: np.ndarray | None = None  # (N, h, w) patches that passed the LOF filter
        self.memory_sizes: dict[str, int] = {}

    def fit(
        self, train_patches: np.ndarray, embeddings: np.ndarray, views: ViewSource | None = None, known_tail: np.ndarray | None = None
    ) -> TailedCore:
        """Build the pooled memory.

        Args:
            train_patches: (N, h, w, D) patch embeddings of all training images, all classes.
            embeddings: (N, E) global embeddings of the same images (TailSampler's input).
            views: augmented-view patches of given images; ``None`` disables augmentation.
            known_tail: (N,) bool, the true tail images, bypassing TailSampler: an ablation
                that measures what TailSampler's errors cost, never part of the method.
        """
        train_patches = np.asarray(train_patches)
        if len(train_patches) != len(embeddings):
            raise ValueError(f"{len(train_patches)} patch grids but {len(embeddings)} global embeddings")
        self.tail = TailSampler(self.config.tail_sampler).predict(embeddings)
        if known_tail is not None:
            self.tail.is_tail = np.asarray(known_tail, dtype=bool).copy()
        tail_indices = self.tail.tail_indices

        scores = patchwise_lof_scores(train_patches, self.config.lof, seed=self.seed)
        self.head_kept = lof_keep_mask(scores, self.config.lof.keep_fraction)
        head = flat_patches(train_patches)[self.head_kept.reshape(-1)]
        head_memory = head[coreset_rows(head, self.config, self.seed)]

        parts = [head_memory]
        self.memory_sizes = {"head_candidates": len(head), "head": len(head_memory), "tail_images": len(tail_indices)}
        if len(tail_indices):
            tail = [flat_patches(train_patches[tail_indices])]
            if views is not None:
                tail.append(flat_patches(views(tail_indices)))
            tail_flat = np.concatenate(tail)
            tail_memory = tail_flat[coreset_rows(tail_flat, self.config, self.seed)]
            parts.insert(0, tail_memory)
            self.memory_sizes.update({"tail_candidates": len(tail_flat), "tail": len(tail_memory)})
        memory = np.concatenate(parts)
        self.bank = MemoryBank(memory.shape[1], metric="l2")
        self.bank.add(memory)
        return self

    def patch_scores(self, patches: np.ndarray) -> np.ndarray:
        if self.bank is None:
            raise RuntimeError("TailedCore.fit must run before scoring")
        n, h, w, d = patches.shape
        distances, _ = self.bank.search(np.asarray(patches, dtype=np.float32).reshape(-1, d), k=1)
        return distances[:, 0].reshape(n, h, w)

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction:
        scores = self.patch_scores(patches)
        return max_score_prediction(scores, self.config.features.image_size, self.config.blur_sigma, with_maps)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.bank is None or self.tail is None:
            raise RuntimeError("fit before saving")
        self.bank.save(directory / "memory_bank")
        np.save(directory / "tail_mask.npy", self.tail.is_tail)
        np.save(directory / "predicted_class_sizes.npy", self.tail.class_sizes)
        summary = {
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "memory_sizes": self.memory_sizes,
            "tail_max_k": self.tail.max_k,
            "class_partition": self.tail.class_partition.tolist(),
        }
        (directory / "tailedcore.json").write_text(json.dumps(summary, indent=2, default=str))
        return directory
