"""MeDS: Memory-Distilled Selection for noise-robust anomaly detection (the three stages).

``MeDS(config).fit(train_patches)`` runs, on one class's possibly contaminated training set:

1. bootstrapped partial memories -> a memory-score map per training image (Ray tasks);
2. distillation of those maps into the reconstruction network (Ray Train);
3. progressive selection + fine-tuning with the global hard-mining cosine loss (Ray Train);

and ``predict`` scores test images with the final network (blur sigma 4, top-1% mean).
``fit`` is ``distil`` (stages 1-2) followed by ``select`` (stage 3).
``distilled`` is the stage-2 network as a detector of its own (the "stage 2 alone"
baseline), and ``selection_history`` the kept mask of every stage-3 epoch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylab.features.patch_embed import pool_patch_grid
from raylab.methods.anomaly_maps import AnomalyPrediction, patch_scores_to_maps, reduce_to_image_scores
from raylab.methods.meds.config import MeDSConfig
from raylab.methods.meds.partial_memory import memory_score_maps
from raylab.methods.meds.training import build_network, distillation_loop, image_scores_from_tokens, selection_loop, token_maps
from raylab.timing import phase
from raylab.train import TrainSpec, fit, load_result_state


class ReconstructionDetector:
    """A trained reconstruction network used as an anomaly detector (already fitted)."""

    def __init__(self, model_kwargs: dict[str, Any], state: dict[str, torch.Tensor], grid: int | None, image_size: int, sigma: float, top_fraction: float) -> None:
        self.model_kwargs, self.grid, self.image_size = model_kwargs, grid, image_size
        self.sigma, self.top_fraction = sigma, top_fraction
        self.network = build_network(model_kwargs)
        self.network.load_state_dict(state)
        self.network.eval()

    def fit(self, train_patches: np.ndarray) -> ReconstructionDetector:
        return self

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction:
        tokens = pool_patch_grid(patches, self.grid)
        n, h, w, d = tokens.shape
        token_map = token_maps(self.network, tokens.reshape(n, h * w, d)).reshape(n, h, w)
        maps = patch_scores_to_maps(token_map, self.image_size, self.sigma)
        return AnomalyPrediction(
            image_scores=reduce_to_image_scores(maps, "top_fraction_mean", self.top_fraction),
            patch_scores=token_map,
            maps=maps if with_maps else None,
        )

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.network.state_dict(), directory / "network.pt")
        settings = {"model": self.model_kwargs, "grid": self.grid, "image_size": self.image_size, "sigma": self.sigma, "top_fraction": self.top_fraction}
        (directory / "detector.json").write_text(json.dumps(settings, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ReconstructionDetector:
        directory = Path(directory)
        settings = json.loads((directory / "detector.json").read_text())
        state = torch.load(directory / "network.pt", map_location="cpu", weights_only=True)
        return cls(settings["model"], state, settings["grid"], settings["image_size"], settings["sigma"], settings["top_fraction"])


@dataclass(frozen=True)
class _DistilledStage:
    """What stage 3 continues from: the class's training tokens and the stage-2 network."""

    tokens: np.ndarray
    class_ids: np.ndarray
    grid: int
    model_kwargs: dict[str, Any]
    state: dict[str, torch.Tensor]


class MeDS:
    def __init__(self, config: MeDSConfig, *, seed: int = 0, image_size: int = 224, run_name: str = "meds", storage_path: str | None = None) -> None:
        self.config, self.seed, self.image_size = config, seed, image_size
        self.run_name, self.storage_path = run_name, storage_path
        self.memory_maps: np.ndarray | None = None
        self.distilled: ReconstructionDetector | None = None
        self.final: ReconstructionDetector | None = None
        self.selection_history: list[np.ndarray] = []
        self.training_metrics: dict[str, list[dict[str, float]]] = {}
        self._stage2: _DistilledStage | None = None

    def _model_kwargs(self, in_dim: int) -> dict[str, Any]:
        d = self.config.distillation
        return {
            "groups": [list(map(list, g)) for g in self.config.groups],
            "in_dim": in_dim,
            "hidden_dim": d.hidden_dim,
            "decoder_blocks": d.decoder_blocks,
            "heads": d.heads,
            "bottleneck_ratio": d.bottleneck_ratio,
            "dropout": d.dropout,
        }

    def _detector(self, kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> ReconstructionDetector:
        return ReconstructionDetector(kwargs, state, self.config.token_grid, self.image_size, self.config.blur_sigma, self.config.top_fraction)

    def _train(self, stage: str, loop, loop_config: dict[str, Any]):
        spec = TrainSpec(
            f"{self.run_name}-{stage}",
            num_workers=self.config.train_workers,
            cpus_per_worker=self.config.cpus_per_train_worker,
            storage_path=self.storage_path,
            max_failures=2,
            # Resuming needs only the newest; an older one is 3x the decoder's size (weights and
            # Adam moments), about 0.8 GB per run at the paper's size.
            checkpoints_to_keep=1,
            stage=stage,
        )
        result = fit(loop, loop_config, spec)
        history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
        self.training_metrics[stage] = history
        return load_result_state(result)

    def fit(self, train_patches: np.ndarray, class_ids: np.ndarray | None = None) -> MeDS:
        """All three stages on one (possibly contaminated) training set."""
        return self.distil(train_patches, class_ids).select()

    def distil(self, train_patches: np.ndarray, class_ids: np.ndarray | None = None) -> MeDS:
        """Stages 1 and 2: partial-memory maps, then the network trained to reproduce them.

        Afterwards ``distilled`` is usable as a detector on its own; :meth:`select` continues
        from it (split so that stage 2 can be studied without paying for stage 3).
        """
        tokens_grid = pool_patch_grid(train_patches, self.config.token_grid)
        n, h, w, d = tokens_grid.shape
        tokens = np.ascontiguousarray(tokens_grid.reshape(n, h * w, d))
        class_ids = np.zeros(n, dtype=np.int64) if class_ids is None else np.asarray(class_ids)
        stage1 = dataclasses.replace(self.config.stage1, seed=self.seed)
        with phase("MeDS stage 1: partial memories"):
            self.memory_maps = self._per_class_maps(tokens_grid, class_ids, stage1)
        kwargs = self._model_kwargs(d)
        schedule = self.config.distillation
        targets = self.memory_maps.reshape(n, h * w).astype(np.float32)
        state = self._train("distillation", distillation_loop, {**self._common(tokens, kwargs), "targets": targets, "schedule": schedule})
        self.distilled = self._detector(kwargs, state["model"])
        self._stage2 = _DistilledStage(tokens, class_ids, h, kwargs, state["model"])
        return self

    def select(self) -> MeDS:
        """Stage 3: progressive selection and fine-tuning, starting from the distilled network."""
        if self._stage2 is None:
            raise RuntimeError("MeDS.distil must run before select")
        stage2 = self._stage2
        distilled_scores = image_scores_from_tokens(
            token_maps(self.distilled.network, stage2.tokens), stage2.grid, self.image_size,
            self.config.blur_sigma, self.config.top_fraction,
        )
        state = self._train(
            "selection",
            selection_loop,
            {
                **self._common(stage2.tokens, stage2.model_kwargs),
                "schedule": self.config.selection,
                "class_ids": stage2.class_ids,
                "distilled_scores": distilled_scores,
                "initial_state": stage2.state,
                "grid": stage2.grid,
                "image_size": self.image_size,
                "blur_sigma": self.config.blur_sigma,
                "top_fraction": self.config.top_fraction,
            },
        )
        self.selection_history = list(state["history"])
        self.final = self._detector(stage2.model_kwargs, state["model"])
        return self

    def training_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(distilled, stage-1) token maps of the training images, each (N, h, w): how faithfully
        stage 2 reproduced what it was trained on, read without any label."""
        if self._stage2 is None or self.memory_maps is None:
            raise RuntimeError("MeDS.distil must run before training_maps")
        distilled = token_maps(self.distilled.network, self._stage2.tokens)
        return distilled.reshape(self.memory_maps.shape), self.memory_maps

    def _common(self, tokens: np.ndarray, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"tokens": tokens, "model": model_kwargs, "seed": self.seed}

    @staticmethod
    def _per_class_maps(tokens_grid: np.ndarray, class_ids: np.ndarray, stage1) -> np.ndarray:
        maps = np.empty(tokens_grid.shape[:3], dtype=np.float64)
        for c in np.unique(class_ids):
            maps[class_ids == c] = memory_score_maps(tokens_grid[class_ids == c], stage1)
        return maps

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction:
        if self.final is None:
            raise RuntimeError("MeDS.fit must run before predict")
        return self.final.predict(patches, with_maps)

    def save(self, directory: str | Path) -> Path:
        if self.final is None:
            raise RuntimeError("MeDS.fit must run before save")
        return self.final.save(directory)
