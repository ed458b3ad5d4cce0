"""MeDS: Memory-Distilled Selection for noise-robust anomaly detection (the three stages).

``MeDS(config).fit(train_patches, class_ids)`` runs, on a possibly contaminated training set
of one or more classes (the release trains one network on all of them):

1. bootstrapped partial memories, per class -> a memory-score map per training image (Ray tasks);
2. distillation of those maps into the reconstruction network, then
3. progressive selection (a threshold per class) + the released reconstruction training
   (global hard-mining cosine loss) from the distilled weights -- 2 and 3 in one Ray Train
   run (``training.meds_loop``), so the worker group's start-up is paid once;

and ``predict`` scores test images with the final network (blur sigma 4, top-1% mean).
``distilled`` is the stage-2 network as a detector of its own (the "stage 2 alone"
baseline, its weights carried in the run's checkpoint), ``selection_history`` the kept mask
of every stage-3 pass, and ``training_metrics`` the per-epoch reports of each stage.
``distil`` runs stages 1-2 alone; ``train_on`` runs stage 3's recipe on a given kept set
(the platform's clean-oracle ceiling).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raylab.features.patch_embed import pool_patch_grid
from raylab.methods.meds.config import MeDSConfig
from raylab.methods.meds.partial_memory import memory_score_maps
from raylab.methods.meds.training import DISTILLATION, SELECTION, build_network, meds_loop, selection_loop, token_maps
from raylab.tasks.anomaly.detectors import register_detector
from raylab.tasks.anomaly.maps import AnomalyPrediction, patch_scores_to_maps, reduce_to_image_scores
from raylab.timing import phase, record
from raylab.train import TrainSpec, fit, load_result_state
from raylab.train.harness import LOOP_SECONDS


def network_kwargs(config: MeDSConfig, in_dim: int) -> dict[str, Any]:
    """The reconstruction network's constructor arguments (JSON-plain: saved beside its weights)."""
    d = config.distillation
    return {
        "groups": [list(map(list, g)) for g in config.groups],
        "in_dim": in_dim,
        "hidden_dim": d.hidden_dim,
        "decoder_blocks": d.decoder_blocks,
        "heads": d.heads,
        "bottleneck_ratio": d.bottleneck_ratio,
        "dropout": d.dropout,
    }


# Fitted by MeDS's Ray Train stages, not from patches; MeDS.save writes this format.
@register_detector("reconstruction", fitted_from_patches=False, saved_by=("MeDS",))
class ReconstructionDetector:
    """A trained reconstruction network used as an anomaly detector (already fitted)."""

    def __init__(
        self,
        model_kwargs: dict[str, Any],
        state: dict[str, torch.Tensor],
        grid: int | None,
        image_size: int,
        sigma: float,
        top_fraction: float,
    ) -> None:
        self.model_kwargs = model_kwargs
        self.grid = grid
        self.image_size = image_size
        self.sigma = sigma
        self.top_fraction = top_fraction
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
        settings = {
            "model": self.model_kwargs,
            "grid": self.grid,
            "image_size": self.image_size,
            "sigma": self.sigma,
            "top_fraction": self.top_fraction,
        }
        (directory / "detector.json").write_text(json.dumps(settings, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ReconstructionDetector:
        directory = Path(directory)
        settings = json.loads((directory / "detector.json").read_text())
        state = torch.load(directory / "network.pt", map_location="cpu", weights_only=True)
        return cls(
            settings["model"],
            state,
            settings["grid"],
            settings["image_size"],
            settings["sigma"],
            settings["top_fraction"],
        )


@dataclass(frozen=True)
class _DistilledStage:
    """What stage 3 continues from: the class's training tokens and the stage-2 network."""

    tokens: np.ndarray
    class_ids: np.ndarray
    grid: int
    model_kwargs: dict[str, Any]
    state: dict[str, torch.Tensor]


# Column of a fused run's metrics that says which stage reported (training.DISTILLATION / SELECTION).
_STAGE_NAMES = {DISTILLATION: "distillation", SELECTION: "selection"}


class MeDS:
    def __init__(
        self,
        config: MeDSConfig,
        *,
        seed: int = 0,
        image_size: int = 224,
        run_name: str = "meds",
        storage_path: str | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        self.image_size = image_size
        self.run_name = run_name
        self.storage_path = storage_path
        self.memory_maps: np.ndarray | None = None
        self.distilled: ReconstructionDetector | None = None
        self.final: ReconstructionDetector | None = None
        self.selection_history: list[np.ndarray] = []
        self.training_metrics: dict[str, list[dict[str, float]]] = {}
        self._stage2: _DistilledStage | None = None

    def _detector(self, kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> ReconstructionDetector:
        return ReconstructionDetector(
            kwargs, state, self.config.token_grid, self.image_size, self.config.blur_sigma, self.config.top_fraction
        )

    def _train(self, suffix: str, stage: str, loop, loop_config: dict[str, Any]):
        """One Train run named ``<run_name>-<suffix>``; its per-epoch metrics land in ``training_metrics``.

        The loops keep every epoch's metrics in the checkpoint (``reports``: the run keeps only
        its newest checkpoint, and Ray Train's metrics table only the kept ones); they are split
        per stage here, and a fused run's loop time into a row per stage of ``--profile-time``.
        """
        spec = TrainSpec(
            f"{self.run_name}-{suffix}",
            num_workers=self.config.train_workers,
            cpus_per_worker=self.config.cpus_per_train_worker,
            storage_path=self.storage_path,
            max_failures=2,
            # Resuming needs only the newest; an older one is 3-4x the decoder's size (weights,
            # Adam moments, and in stage 3 the distilled weights), about 1 GB at the paper's size.
            checkpoints_to_keep=1,
            stage=stage,
        )
        result = fit(loop, loop_config, spec)
        state = load_result_state(result)
        reports = list(state.get("reports", []))
        for code, name in _STAGE_NAMES.items():
            rows = [dict(r) for r in reports if r.get("stage") == code]
            if rows:
                self.training_metrics[name if suffix.startswith("stage") else suffix] = rows
        if "distillation_seconds" in state:
            _record_stage_loops(
                float(state["distillation_seconds"]), float((result.metrics or {}).get(LOOP_SECONDS, 0.0))
            )
        return state

    def fit(self, train_patches: np.ndarray, class_ids: np.ndarray | None = None) -> MeDS:
        """All three stages on one (possibly contaminated) training set; stages 2 and 3 in one Train run."""
        stage2 = self._stage1(train_patches, class_ids)
        state = self._train("stage2-3", "MeDS stages 2+3", meds_loop, self._fused_config(stage2, self.config.selection))
        self._finish_stage2(stage2, state["distilled"])
        self.selection_history = list(state["history"])
        self.final = self._detector(stage2.model_kwargs, state["model"])
        return self

    def distil(self, train_patches: np.ndarray, class_ids: np.ndarray | None = None) -> MeDS:
        """Stages 1 and 2 only (its own Train run): ``distilled`` is then usable as a detector
        (for studies of stage 2 that need not pay for stage 3); ``final`` stays unset."""
        stage2 = self._stage1(train_patches, class_ids)
        state = self._train("stage2", "distillation", meds_loop, self._fused_config(stage2, None))
        self._finish_stage2(stage2, state["model"])
        return self

    def train_on(self, keep: np.ndarray, name: str) -> ReconstructionDetector:
        """Stage 3's training recipe from the distilled weights on a fixed kept set (no selection),
        in its own Train run ``<run_name>-<name>``.

        The platform's clean-oracle ceiling calls it with the true clean mask (a perfect
        filter); MeDS itself never does, since it never sees which samples are noise.
        """
        if self._stage2 is None:
            raise RuntimeError("MeDS.fit or MeDS.distil must run before train_on")
        stage2 = self._stage2
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(stage2.tokens),) or not keep.any():
            raise ValueError(
                f"keep must be a non-empty mask over the {len(stage2.tokens)} training images, "
                f"got shape {keep.shape} with {int(keep.sum())} kept"
            )
        loop_config = {
            **self._common(stage2.tokens, stage2.model_kwargs),
            "schedule": self.config.selection,
            "initial_state": stage2.state,
            "fixed_keep": keep,
            "top_fraction": self.config.top_fraction,
        }
        state = self._train(name, name, selection_loop, loop_config)
        return self._detector(stage2.model_kwargs, state["model"])

    def _stage1(self, train_patches: np.ndarray, class_ids: np.ndarray | None) -> _DistilledStage:
        """Stage 1's memory-score maps (``memory_maps``) and what stages 2-3 train on (no weights yet)."""
        tokens_grid = pool_patch_grid(train_patches, self.config.token_grid)
        n, h, w, d = tokens_grid.shape
        class_ids = np.zeros(n, dtype=np.int64) if class_ids is None else np.asarray(class_ids)
        stage1 = dataclasses.replace(self.config.stage1, seed=self.seed)
        with phase("MeDS stage 1: partial memories"):
            self.memory_maps = self._per_class_maps(tokens_grid, class_ids, stage1)
        return _DistilledStage(
            np.ascontiguousarray(tokens_grid.reshape(n, h * w, d)), class_ids, h, network_kwargs(self.config, d), {}
        )

    def _fused_config(self, stage2: _DistilledStage, selection) -> dict[str, Any]:
        n = len(stage2.tokens)
        return {
            **self._common(stage2.tokens, stage2.model_kwargs),
            "targets": self.memory_maps.reshape(n, -1).astype(np.float32),
            "distillation": self.config.distillation,
            "selection": selection,
            "class_ids": stage2.class_ids,
            "top_fraction": self.config.top_fraction,
        }

    def _finish_stage2(self, stage2: _DistilledStage, distilled_state: dict[str, torch.Tensor]) -> None:
        self.distilled = self._detector(stage2.model_kwargs, distilled_state)
        self._stage2 = dataclasses.replace(stage2, state=distilled_state)

    def training_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """(distilled, stage-1) token maps of the training images, each (N, h, w): how faithfully
        stage 2 reproduced what it was trained on, read without any label."""
        if self._stage2 is None or self.memory_maps is None:
            raise RuntimeError("MeDS.fit or MeDS.distil must run before training_maps")
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


def _record_stage_loops(distillation_seconds: float, loop_seconds: float) -> None:
    """Split a fused run's loop time by stage for ``--profile-time``.

    The harness records the whole loop as one phase ("Ray Train loop: MeDS stages 2+3");
    these two rows are its parts (stage 2 ended ``distillation_seconds`` into the loop).
    """
    if loop_seconds > 0:
        record("  of which stage 2: distillation", min(distillation_seconds, loop_seconds))
        record("  of which stage 3: selection", max(loop_seconds - distillation_seconds, 0.0))
