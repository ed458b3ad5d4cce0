"""Typed configuration of the NNGuide benchmark: detectors, classifier, protocol, sweep, job.

Defaults are the official ones (roomo7time/nnguide; Sun et al. 2022 for KNN; Liu et al.
2020 for energy; Sun et al. 2021 for ReAct) and every one is a config field:

* NNGuide: k = 10 nearest bank entries, bank = a random 1% of the ID training set, energy
  base score (the only one in the official code; MSP and max-logit are offered too).
* KNN: k = 50, the whole training set as the bank (Sun et al.'s CIFAR-10 setting).
* Energy: temperature 1.
* ReAct: off by default; when on, clip at the 95th percentile of the fit set's activations
  (NNGuide's ResNet-50 setting).

Detector configs are frozen: a fitted detector carries the exact config it was fitted with,
and changing a hyperparameter means building a new config and fitting again (no detector is
ever looked up by name in a cache, the official code's stale-detector pitfall).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from raylab.config import from_mapping, require

BaseScore = Literal["energy", "msp", "maxlogit"]
SignGuard = Literal["monotone", "error", "off"]

MNIST_MEAN = (0.1307, 0.1307, 0.1307)
MNIST_STD = (0.3081, 0.3081, 0.3081)


@dataclass(frozen=True)
class MSPConfig:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""

    react_percentile: float | None = None


@dataclass(frozen=True)
class MaxLogitConfig:
    """The largest logit (Hendrycks et al., 2022)."""

    react_percentile: float | None = None


@dataclass(frozen=True)
class EnergyConfig:
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al., 2020)."""

    temperature: float = 1.0
    react_percentile: float | None = None


@dataclass(frozen=True)
class KNNConfig:
    """Distance to the k-th nearest normalised training feature (Sun et al., 2022)."""

    k: int = 50
    bank_ratio: float = 1.0
    bank_seed: int = 0
    react_percentile: float | None = None


@dataclass(frozen=True)
class NNGuideConfig:
    """Nearest-neighbour guidance (Park et al., ICCV 2023); see ``detectors.NNGuide``."""

    k: int = 10
    bank_ratio: float = 0.01
    base_score: BaseScore = "energy"
    sign_guard: SignGuard = "monotone"
    bank_seed: int = 0
    react_percentile: float | None = None


DetectorConfig = MSPConfig | MaxLogitConfig | EnergyConfig | KNNConfig | NNGuideConfig

DETECTOR_KINDS: dict[str, type] = {
    "msp": MSPConfig,
    "maxlogit": MaxLogitConfig,
    "energy": EnergyConfig,
    "knn": KNNConfig,
    "nnguide": NNGuideConfig,
}

REACT_PERCENTILE = 95.0


def detector_config(kind: str, values: Mapping[str, Any] | None = None, *, where: str = "detector") -> DetectorConfig:
    """A typed detector config from its kind and field values (unknown fields are errors)."""
    if kind not in DETECTOR_KINDS:
        raise KeyError(f"{where}: unknown detector kind {kind!r}; known: {sorted(DETECTOR_KINDS)}")
    return from_mapping(DETECTOR_KINDS[kind], dict(values or {}), where=where)


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
class ClassifierConfig:
    """Which classifier produces the features and logits, and its input preprocessing.

    ``weights``: a checkpoint file (``strict`` load). ``None`` means there is no pretrained
    classifier for the dataset, so the job trains one with Ray Train (``TrainConfig``).
    Relative paths are resolved against the working directory (the repository root).
    """

    kind: Literal["cifar_resnet", "small_cnn", "timm"] = "small_cnn"
    arch: str = "small_cnn"
    num_classes: int = 6
    weights: str | None = None
    width: int = 32
    image_size: int = 32
    mean: tuple[float, float, float] = MNIST_MEAN
    std: tuple[float, float, float] = MNIST_STD


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
class OODSetConfig:
    """One OOD test set: a registered dataset, its options, and optionally a class filter."""

    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None


def ood_set(spec: OODSetConfig | Mapping[str, Any], where: str) -> OODSetConfig:
    """An :class:`OODSetConfig` from its YAML mapping (``dataset`` required, unknown keys rejected)."""
    if isinstance(spec, OODSetConfig):
        return spec
    if not isinstance(spec, Mapping) or "dataset" not in spec:
        raise KeyError(f"{where}: expected a mapping with a 'dataset' key, got {spec!r}")
    known = {f.name for f in dataclasses.fields(OODSetConfig)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise KeyError(f"{where}: unknown keys {unknown} for OODSetConfig; known: {sorted(known)}")
    classes = spec.get("classes")
    return OODSetConfig(
        dataset=str(spec["dataset"]),
        options=dict(spec.get("options") or {}),
        classes=tuple(str(c) for c in classes) if classes is not None else None,
    )


@dataclass
class BenchmarkConfig:
    """ID data (its ``train`` split is the bank/statistics source, ``test`` the ID test set) and OOD sets.

    ``validation_fraction`` of each ID class's train split is held out as ID validation for
    hyperparameter selection, and ``validation_ood`` names the OOD set used for selection
    only: the tuned detector is reported on the *other* OOD sets. The protocol seed is
    passed to the ID dataset as its ``split_seed`` option.
    """

    id_dataset: str = "mnist_open_set"
    id_options: dict[str, Any] = field(default_factory=dict)
    id_classes: tuple[str, ...] | None = ("0", "1", "2", "3", "4", "5")
    ood_sets: dict[str, OODSetConfig] = field(
        default_factory=lambda: {
            "digits_6_9": OODSetConfig("mnist_open_set", classes=("6", "7", "8", "9")),
            "textures": OODSetConfig("skimage_textures"),
        }
    )
    validation_ood: str | None = "textures"
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        self.ood_sets = {name: ood_set(spec, f"ood_sets.{name}") for name, spec in self.ood_sets.items()}
        if self.validation_ood is not None and self.validation_ood not in self.ood_sets:
            raise KeyError(f"validation_ood {self.validation_ood!r} is not one of the OOD sets {sorted(self.ood_sets)}")
        require(
            0.0 < self.validation_fraction < 1.0,
            "validation_fraction",
            f"must be in (0, 1), got {self.validation_fraction}",
        )


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


def with_seed(config: DetectorConfig, seed: int) -> DetectorConfig:
    """``config`` with its bank-sampling seed set (detectors without a bank are unchanged)."""
    if hasattr(config, "bank_seed"):
        return dataclasses.replace(config, bank_seed=seed)
    return config
