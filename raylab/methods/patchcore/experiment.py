"""``patchcore_eval``: PatchCore, or any registered anomaly detector, over noise ratios x seeds.

One Ray task per setting (noise ratio, seed): it applies the noise protocol to the shared
corpus, fits one memory per class and detector on the cached features, evaluates each class on
its test images and logs one nested MLflow run per detector (metrics, per-class table, ROC
curves, overlays, fitted models and the protocol's manifest). The tasks only read the shared
(object-store) corpus and features, so they spread over a cluster unchanged.

The comparison is a list of registry names (``detectors``): ``patchcore`` is fitted with the
job's own PatchCore config, every other name at its registered defaults on the same
features. A detector of the user's own joins by naming its module in ``plugins``; each trial
imports it where it runs, so a Ray worker finds what the driver found.
"""

# Heavy imports (torch models, the evaluation) are deferred into the functions that use them,
# so the job's --help and config validation answer in well under a second.
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raylab.config import require
from raylab.experiment import Experiment, Prepared, Report, Request, Row, Setting, TrialContext, TrialResult
from raylab.features import FeatureSpec
from raylab.tasks.anomaly.experiment import (
    CorpusFeatures,
    check_group_sizes,
    check_injected_in_test,
    check_noise_supply,
    keeps_injected_in_test,
    noise_axes,
    noise_ratio_option,
    prepare_corpus_features,
)
from raylab.tasks.anomaly.patchcore.config import PatchCoreConfig

NAME = "patchcore_eval"
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


@dataclass(frozen=True)
class PatchCoreEvalConfig:
    dataset_options: dict[str, Any] = field(default_factory=dict)
    noise_ratios: tuple[float, ...] = (0.0,)
    seeds: tuple[int, ...] = (0,)
    # Test protocol for the injected defects: removed, kept or both (see raylab.tasks.anomaly.experiment).
    injected_in_test: str = "removed"
    # Budget subsets: classes kept, evenly spread over the sorted names, then a stratified
    # subsample (per class, split and label); None keeps them all.
    max_classes: int | None = None
    images_per_group: int | None = None
    quick_images_per_group: int = 60
    quick_coreset_ratio: float = 0.01
    patchcore: PatchCoreConfig = field(default_factory=PatchCoreConfig)
    # Registered anomaly detectors to compare, each fitted from the same patch features.
    detectors: tuple[str, ...] = ("patchcore",)
    # Modules that register further detectors when imported (a user's plug-ins).
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(
            all(0.0 <= r < 1.0 for r in self.noise_ratios),
            "noise_ratios",
            f"must lie in [0, 1), got {self.noise_ratios}",
        )
        check_injected_in_test(self.injected_in_test)
        check_group_sizes(self.images_per_group, self.quick_images_per_group, self.max_classes)
        require(
            0.0 < self.quick_coreset_ratio <= 1.0,
            "quick_coreset_ratio",
            f"must lie in (0, 1], got {self.quick_coreset_ratio}",
        )
        require(
            len(self.detectors) > 0 and len(set(self.detectors)) == len(self.detectors),
            "detectors",
            f"must name at least one detector, each once, got {self.detectors}",
        )


def full_config() -> PatchCoreEvalConfig:
    """The paper's embedder: torchvision's ImageNet WideResNet-50-2 (timm ``wide_resnet50_2.tv_in1k``)
    layers 2 + 3, 3x3 neighbourhood, 1024 dims, 224 px (needs its weights: the hub or a local ``.pth``)."""
    from raylab.features.backbones import WIDE_RESNET50_PATCHCORE

    features = FeatureSpec(backbone=WIDE_RESNET50_PATCHCORE, image_size=224, embed_dim=1024)
    return PatchCoreEvalConfig(patchcore=PatchCoreConfig(features=features))


def quick(config: PatchCoreEvalConfig) -> PatchCoreEvalConfig:
    """A stratified subsample and a 1% coreset (the README's ``--quick``)."""
    patchcore = dataclasses.replace(config.patchcore, coreset_ratio=config.quick_coreset_ratio)
    return dataclasses.replace(config, images_per_group=config.quick_images_per_group, patchcore=patchcore)


def check(request: Request[PatchCoreEvalConfig]) -> None:
    """``check`` hook: every detector is registered (plug-ins imported) and fitted from patches,
    and the noise protocol finds its defects; all before Ray starts."""
    from raylab.tasks.anomaly.detectors import load_plugins

    registry = load_plugins(request.config.plugins)
    for name in request.config.detectors:
        if registry.get(name).build is None:  # get() names the registered detectors
            raise ValueError(f"detectors: {name!r} is not fitted from patch features (it comes out of training)")
    check_noise_supply(request)


def _builder(name: str, config: PatchCoreEvalConfig, seed: int, registry) -> Callable[[object], object]:
    """Per class split, an unfitted detector: PatchCore from the job's own config, any other
    registered name at its defaults with maps at the job's image size."""
    from raylab.tasks.anomaly.patchcore.model import PatchCore

    if name == "patchcore":
        return lambda split: PatchCore(config.patchcore, seed=seed)
    build = registry.get(name).build
    return lambda split: build(seed, config.patchcore.features.image_size)


def prepare(request: Request[PatchCoreEvalConfig]) -> Prepared:
    config = request.config
    return prepare_corpus_features(request, config.patchcore.features)


def trial(setting: Setting, inputs: CorpusFeatures, config: PatchCoreEvalConfig, context: TrialContext) -> TrialResult:
    """Apply the protocol; per detector, fit and evaluate one memory per class and log one nested run."""
    from raylab.data.protocols import NoiseProtocol, inject_noise
    from raylab.tasks.anomaly.artifacts import log_anomaly_artifacts
    from raylab.tasks.anomaly.benchmark import class_splits, evaluate_per_class, mean_over_classes
    from raylab.tasks.anomaly.detectors import load_plugins

    noise_ratio, seed = float(setting["noise_ratio"]), int(setting["seed"])
    result = inject_noise(inputs.corpus, NoiseProtocol(noise_ratio, seed, keeps_injected_in_test(setting)))
    splits = class_splits(result.table, config.patchcore.features.image_size)
    values = dict(setting.values)
    registry = load_plugins(config.plugins)  # imported here too: this may be a Ray worker
    rows = []
    for name in config.detectors:
        evaluations = evaluate_per_class(_builder(name, config, seed, registry), splits, inputs.features)
        metrics = mean_over_classes(evaluations)
        tags = {"method": name, **values, "trial": context.trial_id}
        with context.nested_run(f"{name}-{setting.tag()}-{context.trial_id}", params=config, tags=tags) as run:
            run.log_metrics(metrics)
            log_anomaly_artifacts(run, evaluations, inputs.corpus, features=config.patchcore.features)
            run.log_text(result.manifest.to_csv(index=False), "protocol_manifest.csv")
        per_class = {e.class_name: e.metrics for e in evaluations}
        rows.append(Row(name, context.dataset, values, metrics, {"per_class": per_class}))
    return TrialResult(rows)


def report(rows: Sequence[Row], request: Request[PatchCoreEvalConfig]) -> Report:
    from raylab.report.tables import aggregate, format_table

    table = aggregate([r.to_dict() for r in rows], ["method", "dataset", "noise_ratio", "injected_in_test"], METRICS)
    return Report(format_table(table, METRICS), tables={"results_table.csv": table.to_csv(index=False)}, table=table)


EXPERIMENT = Experiment(
    name=NAME,
    description="Evaluate PatchCore (greedy coreset memory of patch embeddings, 1-NN scoring), or any "
    "registered anomaly detector (--set detectors=[...], plug-ins via --set plugins=[module]), on an "
    "anomaly-detection dataset under the noise protocol, one Ray task per (noise ratio, seed), "
    "logging every setting to MLflow.",
    config_type=PatchCoreEvalConfig,
    profiles={"cpu": PatchCoreEvalConfig, "full": full_config},
    default_dataset="elpv",
    metrics_help=", ".join(METRICS) + " (pixel metrics only for datasets with masks)",
    axes=noise_axes,
    prepare=prepare,
    trial=trial,
    report=report,
    executor="tasks",
    config_folder="patchcore",
    quick=quick,
    arguments=lambda parser: noise_ratio_option(parser, "0"),
    check=check,
)
