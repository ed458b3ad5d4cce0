"""Typed configuration of the NNGuide job: classifier, training, selection sweep and the job.

The detectors' and the benchmark's configs are the OOD family's
(:mod:`raylab.tasks.ood.config`, official defaults there); this module adds what the
``nnguide_eval`` job needs around them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from raylab.config import require
from raylab.tasks.ood.config import (
    DETECTOR_KINDS,
    REACT_PERCENTILE,
    BaseScore,
    BenchmarkConfig,
    ClassifierConfig,
    DetectorConfig,
    detector_config,
)


def default_detectors() -> dict[str, dict[str, Any]]:
    """Every detector of the benchmark, as ``name -> {kind, fields}`` (the YAML form).

    Names carry the settings that differ from the kind's defaults' meaning, so a summary
    row says what it measured: ``nnguide_k10_bank0.01`` is the official NNGuide, the
    ``bank1.0`` and ``k100_bank0.1`` variants are the settings OOD papers also report.
    """
    react = {"react_percentile": REACT_PERCENTILE}
    return {
        "msp": {"kind": "msp"},
        "maxlogit": {"kind": "maxlogit"},
        "energy": {"kind": "energy"},
        "knn_k50": {"kind": "knn"},
        "nnguide_k10_bank0.01": {"kind": "nnguide"},
        "nnguide_k10_bank1.0": {"kind": "nnguide", "bank_ratio": 1.0},
        "nnguide_k100_bank0.1": {"kind": "nnguide", "k": 100, "bank_ratio": 0.1},
        "nnguide_msp_k10_bank0.01": {"kind": "nnguide", "base_score": "msp"},
        "nnguide_maxlogit_k10_bank0.01": {"kind": "nnguide", "base_score": "maxlogit"},
        "energy_react95": {"kind": "energy", **react},
        "knn_k50_react95": {"kind": "knn", **react},
        "nnguide_k10_bank0.01_react95": {"kind": "nnguide", **react},
    }


@dataclass
class TrainConfig:
    """SGD with Nesterov momentum and a cosine schedule, random translation by ``pad`` pixels."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pad: int = 2
    num_workers: int = 2
    checkpoints_to_keep: int = 2

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "num_workers", "checkpoints_to_keep"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass
class SweepConfig:
    """Ray Tune + Optuna (TPE) over NNGuide's ``k``, bank ratio and ReAct percentile.

    Selection uses only the ID validation split and the validation-OOD set (see
    :class:`BenchmarkConfig`); ``k`` is drawn from ``[1, min(k_max, bank size)]`` after the
    bank ratio, so every trial is a valid detector. The first trial is the official default.
    """

    enabled: bool = True
    num_samples: int = 40
    max_concurrent: int = 2
    k_max: int = 200
    bank_ratio_range: tuple[float, float] = (0.01, 1.0)
    react_percentile_range: tuple[float, float] = (80.0, 99.5)
    metric: Literal["auroc", "fpr95"] = "auroc"
    base_score: BaseScore = "energy"
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_samples", "max_concurrent", "k_max"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        low, high = self.bank_ratio_range
        require(
            0.0 < low <= high <= 1.0,
            "bank_ratio_range",
            f"must satisfy 0 < low <= high <= 1, got {self.bank_ratio_range}",
        )
        low, high = self.react_percentile_range
        require(
            0.0 < low <= high <= 100.0,
            "react_percentile_range",
            f"must satisfy 0 < low <= high <= 100, got {self.react_percentile_range}",
        )


@dataclass
class QuickConfig:
    """What ``--quick`` shrinks: epochs, sweep trials, and the test roles (seeded subsets).

    The training roles stay whole: NNGuide's default bank (1% of them) must hold k = 10.
    """

    epochs: int = 3
    sweep_samples: int = 4
    max_test_images_per_role: int = 300

    def __post_init__(self) -> None:
        for key in ("epochs", "sweep_samples", "max_test_images_per_role"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class NNGuideEvalConfig:
    """The ``nnguide_eval`` job."""

    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    detectors: dict[str, dict[str, Any]] = field(default_factory=default_detectors)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    quick: QuickConfig = field(default_factory=QuickConfig)
    seeds: tuple[int, ...] = (0,)
    extraction_batch_size: int = 128
    # A seeded subset of each test role (``id_test``, ``ood/*``) of at most this many images;
    # None uses every image (the protocol). ``--quick`` sets it from ``quick``.
    max_test_images_per_role: int | None = None

    def __post_init__(self) -> None:
        require(
            self.extraction_batch_size >= 1, "extraction_batch_size", f"must be >= 1, got {self.extraction_batch_size}"
        )
        require(
            self.max_test_images_per_role is None or self.max_test_images_per_role >= 1,
            "max_test_images_per_role",
            f"must be >= 1 or null, got {self.max_test_images_per_role}",
        )

    def detector_configs(self) -> dict[str, DetectorConfig]:
        """The typed config of every detector, validated (``kind`` plus that kind's fields)."""
        typed = {}
        for name, values in self.detectors.items():
            values = dict(values)
            kind = values.pop("kind", None)
            if kind is None:
                raise KeyError(f"detectors.{name}: missing 'kind' (one of {sorted(DETECTOR_KINDS)})")
            typed[name] = detector_config(kind, values, where=f"detectors.{name}")
        return typed
