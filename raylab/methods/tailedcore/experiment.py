"""``tailedcore_sweep``: TailedCore, SoftPatch and PatchCore over long-tail protocols on Ray Tune.

One Tune trial = one setting (protocol, noise ratio, seed). It applies the long-tail
protocol (:mod:`raylab.data.protocols.longtail`) to the shared corpus, pools the training
images of *all* classes (the long-tail setting has no class labels at training time), and
fits each method once on identical cached features:

* ``tailedcore``: TailSampler tail memory (+ rotation/flip views) U LOF-filtered head memory;
* ``softpatch``: LOF-filtered memory with LOF-weighted scores;
* ``patchcore``: greedy coreset of everything (the foundation's PatchCore, pooled);
* ``tailedcore_true_tail`` (in the default list): TailedCore with the protocol's true tail
  images instead of TailSampler's, the ceiling TailSampler's errors are measured against;
* optionally ``class_patchcore``: PatchCore with one memory per class (a class-aware
  reference that shows what each class's few images allow without pooling), and the
  TailedCore ablation ``tailedcore_no_views`` (no rotation/flip views).

Every trial also emits a ``tailsampler`` row (no detector, no AUROC): TailSampler's
prediction, on the embedding TailedCore's config names, against the protocol's truth
(``tail_precision``, ``tail_recall``, ``injected_called_tail``: the share of the injected
defect images called tail, which enter TailedCore's memory past its LOF filter).

Each fitted memory is then evaluated per class on that class's test images (image and
pixel AUROC, AP, AUPRO), averaged over classes, over the protocol's tail classes
(``tail_image_auroc``) and over its head classes (``head_image_auroc``). MLflow gets a
parent run per sweep and a nested run per (method, setting) with the protocol's class
manifest, per-class metrics, ROC curves, overlays, the fitted memory and the diagnostics
only the platform can compute (:mod:`raylab.methods.tailedcore.diagnostics`).

Features are extracted once per corpus (patch grids for the memories, last-stage pooled
embeddings for TailSampler) and cached. The tail images' augmented views depend on the
trial's tail, so a trial asks the same feature pipeline for them when it fits TailedCore:
one Ray Data pass over its uncached tail images, batched on the extractors' device, each
image's views cached by content for every other trial (:mod:`raylab.methods.tailedcore.views`).
"""

# Heavy imports (numpy, pyarrow, the data protocols, torch models) are deferred into the
# functions that use them, so the job's --help and config validation answer in well under a second.
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raylab.config import require
from raylab.experiment import Experiment, Prepared, Report, Request, Row, Setting, TrialContext, TrialResult
from raylab.experiment.arguments import parse_list
from raylab.experiment.cost import CostModel
from raylab.experiment.runner import require_registered_dataset
from raylab.features import FeatureSpec
from raylab.methods.tailedcore.config import SoftPatchConfig, TailedCoreConfig
from raylab.tasks.anomaly.experiment import (
    budget_subsets,
    check_injected_in_test,
    keeps_injected_in_test,
    noise_axes,
    noise_ratio_option,
)
from raylab.tasks.anomaly.patchcore import PatchCoreConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from raylab.features.extract import FeatureSet

NAME = "tailedcore_sweep"
METHODS = ("tailedcore", "softpatch", "patchcore")
# A class-aware reference, not a competitor: PatchCore with one memory per class, fitted on
# that class's own training images (it reads the class labels the other methods never get).
# Ablations of TailedCore: without its tail views, and with the true tail images in place of
# TailSampler's prediction (the protocol's truth, which only the platform reads).
REFERENCE_METHODS = ("class_patchcore", "tailedcore_no_views", "tailedcore_true_tail")
KNOWN_METHODS = METHODS + REFERENCE_METHODS
# The default list: the three methods plus TailedCore's ceiling (the true tail), so every
# table shows what TailSampler's errors cost beside TailedCore itself.
DEFAULT_METHODS = METHODS + ("tailedcore_true_tail",)
# Not a method: one row per trial with TailSampler's prediction against the protocol's truth.
TAILSAMPLER_ROW = "tailsampler"
TAILSAMPLER_METRICS = ("tail_precision", "tail_recall", "injected_called_tail", "tail_predicted", "tail_true")
METRICS = ("image_auroc", "tail_image_auroc", "head_image_auroc", "pixel_auroc", "image_ap", "aupro")
TABLE_METRICS = (
    "image_auroc",
    "tail_image_auroc",
    "head_image_auroc",
    "pixel_auroc",
    "tail_precision",
    "tail_recall",
    "injected_called_tail",
)
CPU_FEATURES = FeatureSpec(image_size=112)
# The longtail_mix loader's size options; other datasets' loaders take none of them.
QUICK_OPTIONS_DATASET = "longtail_mix"


def cpu_tailedcore() -> TailedCoreConfig:
    """The CPU size: 112-px EfficientNet-Lite0 features; tail views every 45 degrees x flip."""
    return TailedCoreConfig(features=CPU_FEATURES, tail_rotation_step=45)


@dataclass(frozen=True)
class TailedCoreSweepConfig:
    dataset_options: dict[str, Any] = field(default_factory=dict)
    protocols: tuple[str, ...] = ("step_k1", "step_k4", "pareto")
    noise_ratios: tuple[float, ...] = (0.1,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    # Test protocol for the injected defects: removed, kept (the release's) or both
    # (see raylab.tasks.anomaly.experiment).
    injected_in_test: str = "removed"
    # The sweep's features; every method's ``features`` is set to these (identical inputs).
    features: FeatureSpec = field(default_factory=lambda: CPU_FEATURES)
    tailedcore: TailedCoreConfig = field(default_factory=cpu_tailedcore)
    softpatch: SoftPatchConfig = field(default_factory=SoftPatchConfig)
    # The release's PatchCore baseline: exact greedy coreset 10%, like the other two.
    patchcore: PatchCoreConfig = field(default_factory=lambda: PatchCoreConfig(coreset_method="exact"))
    methods: tuple[str, ...] = DEFAULT_METHODS
    max_concurrent_trials: int | None = (
        None  # default: resources.max_concurrent_trials, else local CPUs / threads_per_trial
    )
    threads_per_trial: int = 1
    images_per_group: int | None = None  # stratified subsample (class, split, label); None keeps all
    # Keep this many classes, evenly spread over the sorted names (the long-tail protocol then
    # picks its tail among them); None keeps all. A budget key: the smoke profile uses it.
    max_classes: int | None = None
    # --quick on longtail_mix: these loader options over dataset_options.
    quick_dataset_options: dict[str, Any] = field(
        default_factory=lambda: {"train_per_class": 24, "test_good_per_class": 8, "test_defective_per_class": 8}
    )
    quick_protocols: tuple[str, ...] = ("step_k1",)
    quick_seeds: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        from raylab.data.protocols import protocol_from_name

        require(
            all(0.0 <= r < 1.0 for r in self.noise_ratios),
            "noise_ratios",
            f"must lie in [0, 1), got {self.noise_ratios}",
        )
        check_injected_in_test(self.injected_in_test)
        for key in ("protocols", "quick_protocols"):
            for name in getattr(self, key):
                try:
                    protocol_from_name(name, 0.0, 0)
                except ValueError as error:
                    require(False, key, str(error))
        require(
            bool(self.methods) and set(self.methods) <= set(KNOWN_METHODS),
            "methods",
            f"must be non-empty and come from {KNOWN_METHODS}, got {self.methods}",
        )
        require(self.threads_per_trial >= 1, "threads_per_trial", f"must be >= 1, got {self.threads_per_trial}")
        require(
            self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
            "max_concurrent_trials",
            f"must be >= 1 or null, got {self.max_concurrent_trials}",
        )
        require(
            self.images_per_group is None or self.images_per_group >= 1,
            "images_per_group",
            f"must be >= 1 or null, got {self.images_per_group}",
        )
        require(
            self.max_classes is None or self.max_classes >= 2,
            "max_classes",
            f"must be >= 2 (a head and a tail class) or null, got {self.max_classes}",
        )


def full_config() -> TailedCoreSweepConfig:
    """The paper's size: PatchCore's WideResNet-50 embedder at 224 px, tail views every 15
    degrees (needs its weights)."""
    from raylab.features.backbones import WIDE_RESNET50_PATCHCORE

    features = FeatureSpec(backbone=WIDE_RESNET50_PATCHCORE, image_size=224, embed_dim=1024)
    return TailedCoreSweepConfig(features=features, tailedcore=TailedCoreConfig())


def quick(config: TailedCoreSweepConfig) -> TailedCoreSweepConfig:
    """One protocol, one seed (the corpus reduction is in :func:`corpus_options`: it depends on the dataset)."""
    return dataclasses.replace(config, protocols=config.quick_protocols, seeds=config.quick_seeds)


def arguments(parser) -> None:
    parser.add_argument(
        "--protocols",
        default=None,
        help="comma-separated long-tail protocols: step_k<K> (e.g. step_k1, step_k4) or pareto (default: the config's)",
    )
    noise_ratio_option(parser, "0.1")
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {', '.join(KNOWN_METHODS)} (default: the config's: {', '.join(DEFAULT_METHODS)})",
    )


def apply_arguments(config: TailedCoreSweepConfig, args) -> TailedCoreSweepConfig:
    """``--methods``, then every method reads the sweep's features (identical inputs for the comparison)."""
    methods = parse_list(args.methods, str, "--methods")
    if methods is not None:
        unknown = [m for m in methods if m not in KNOWN_METHODS]
        if unknown:
            raise ValueError(f"--methods {args.methods!r}: unknown {unknown}; choose from {', '.join(KNOWN_METHODS)}")
        config = dataclasses.replace(config, methods=methods)
    return dataclasses.replace(
        config,
        tailedcore=dataclasses.replace(config.tailedcore, features=config.features),
        softpatch=dataclasses.replace(config.softpatch, features=config.features),
        patchcore=dataclasses.replace(config.patchcore, features=config.features),
    )


def axes(request: Request[TailedCoreSweepConfig]) -> dict[str, tuple]:
    from raylab.data.protocols import protocol_from_name

    protocols = parse_list(request.args.protocols, str, "--protocols") or request.config.protocols
    for name in protocols:
        try:
            protocol_from_name(name, 0.0, 0)
        except ValueError as error:
            raise ValueError(f"--protocols {name!r}: {error}") from None
    return {"protocol": protocols, **noise_axes(request)}


def corpus_options(request: Request[TailedCoreSweepConfig]) -> dict[str, Any]:
    config = request.config
    quick_options = config.quick_dataset_options if request.quick and request.dataset == QUICK_OPTIONS_DATASET else {}
    return {**config.dataset_options, **quick_options}


@dataclass(frozen=True)
class SweepInputs:
    corpus: pa.Table
    features: FeatureSet  # patch grids, for the memories
    embeddings: FeatureSet  # pooled last-stage embeddings, for TailSampler


def global_embeddings(corpus: pa.Table, config: TailedCoreSweepConfig) -> FeatureSet:
    """TailSampler's input: the backbone's last stage, average-pooled, cached like any features."""
    import numpy as np

    from raylab.features.cache import cached_patch_features
    from raylab.features.extract import FeatureSet

    backbone = dataclasses.replace(config.features.backbone, out_indices=(config.tailedcore.embedding_stage,))
    spec = FeatureSpec(backbone=backbone, image_size=config.features.image_size, aggregation_kernel=1)
    grids = cached_patch_features(corpus, spec)
    pooled = np.asarray(grids.patches, dtype=np.float32).mean(axis=(1, 2))
    return FeatureSet(sample_ids=grids.sample_ids, patches=pooled)


def sweep_corpus(request: Request[TailedCoreSweepConfig]) -> pa.Table:
    """The corpus every trial reads: the dataset with its options, then the budget's subsets."""
    from raylab.data import load_corpus

    config = request.config
    corpus = load_corpus(request.dataset, request.data_root, **corpus_options(request))
    return budget_subsets(corpus, config.max_classes, config.images_per_group)


def prepare(request: Request[TailedCoreSweepConfig]) -> Prepared:
    from raylab.data.store import corpus_fingerprint
    from raylab.features.cache import cached_patch_features

    config = request.config
    corpus = sweep_corpus(request)
    inputs = SweepInputs(corpus, cached_patch_features(corpus, config.features), global_embeddings(corpus, config))
    return Prepared(inputs, corpus_fingerprint(corpus))


def trial(setting: Setting, inputs: SweepInputs, config: TailedCoreSweepConfig, context: TrialContext) -> TrialResult:
    """One (protocol, noise ratio, seed): fit every method on the pooled training set, evaluate per class."""
    import faiss
    import numpy as np
    import pyarrow.compute as pc
    import torch

    from raylab.data.protocols import apply_long_tail, protocol_from_name
    from raylab.data.protocols.noise import base_sample_id
    from raylab.methods.tailedcore.diagnostics import (
        class_group_metrics,
        defect_patch_cells,
        filter_removal,
        tail_quality,
    )
    from raylab.methods.tailedcore.model import TailedCore, predict_tail
    from raylab.methods.tailedcore.softpatch import SoftPatch
    from raylab.methods.tailedcore.views import RotationFlipViews
    from raylab.tasks.anomaly.artifacts import images_of, log_anomaly_artifacts
    from raylab.tasks.anomaly.benchmark import class_splits, evaluate_fitted
    from raylab.tasks.anomaly.patchcore.model import PatchCore
    from raylab.tasks.anomaly.scorer import log_anomaly_model, pooled_evaluation
    from raylab.timing import phase

    torch.set_num_threads(config.threads_per_trial)
    faiss.omp_set_num_threads(config.threads_per_trial)
    seed = int(setting["seed"])
    protocol = protocol_from_name(
        str(setting["protocol"]),
        float(setting["noise_ratio"]),
        seed,
        keep_injected_in_test=keeps_injected_in_test(setting),
    )
    result = apply_long_tail(inputs.corpus, protocol)
    features = inputs.features
    splits = class_splits(result.table, config.features.image_size)
    train_rows = result.table.filter(pc.equal(result.table["split"], "train")).sort_by("sample_id")
    train_ids = train_rows.column("sample_id").to_pylist()
    train = features.take(train_ids)
    injected = np.asarray(train_rows.column("injected_noise").to_pylist(), dtype=bool)
    tail_classes = set(result.tail_classes)
    true_tail = np.array([c in tail_classes for c in train_rows.column("class_name").to_pylist()], dtype=bool)
    defect_cells = defect_patch_cells(
        train_rows.column("mask").to_pylist(), train_ids, config.features.image_size, train.shape[1:3]
    )
    defect_cells &= injected[:, None, None]
    views = RotationFlipViews(
        inputs.corpus, config.features, config.tailedcore.tail_rotation_step, config.tailedcore.tail_hflip
    )

    values = dict(setting.values)
    prediction = predict_tail(config.tailedcore, train, inputs.embeddings.take(train_ids))
    rows = [
        tailsampler_row(
            prediction,
            train_rows,
            true_tail,
            injected,
            sorted(tail_classes),
            f"{TAILSAMPLER_ROW}-{setting.tag()}-{context.trial_id}",
            values,
            context,
        )
    ]
    for method in config.methods:
        start = time.perf_counter()
        diagnostics: dict[str, float] = {}
        if method.startswith("tailedcore"):
            detector = TailedCore(config.tailedcore, seed=seed).fit(
                train,
                inputs.embeddings.take(train_ids),
                views=None
                if method == "tailedcore_no_views"
                else (lambda indices: views([train_ids[i] for i in indices])),
                known_tail=true_tail if method == "tailedcore_true_tail" else None,
            )
            diagnostics.update(tail_quality(detector.tail.is_tail, true_tail, injected))
            diagnostics.update(
                {"tail_max_k": float(detector.tail.max_k), **filter_removal(detector.head_kept, injected, defect_cells)}
            )
            diagnostics.update({f"memory_{k}": float(v) for k, v in detector.memory_sizes.items()})
        elif method == "softpatch":
            detector = SoftPatch(config.softpatch, seed=seed).fit(train)
            diagnostics.update(filter_removal(detector.kept, injected, defect_cells))
        elif method == "patchcore":
            detector = PatchCore(config.patchcore, seed=seed).fit(train)
        else:  # class_patchcore: one memory per class, fitted below
            detector = None
        diagnostics["fit_seconds"] = time.perf_counter() - start
        if detector is None:
            evaluations = [
                evaluate_fitted(
                    PatchCore(config.patchcore, seed=seed).fit(features.take(split.train_ids)), split, features
                )
                for split in splits
            ]
        else:
            evaluations = [evaluate_fitted(detector, split, features) for split in splits]
        diagnostics["total_seconds"] = time.perf_counter() - start
        metrics = class_group_metrics(evaluations, tail_classes)
        tags = {"method": method, **values, "trial": context.trial_id}
        with context.nested_run(
            f"{method}-{setting.tag()}-{context.trial_id}", params={**values, "config": config}, tags=tags
        ) as run:
            run.log_metrics({**metrics, **diagnostics})
            log_anomaly_artifacts(run, evaluations, inputs.corpus, save_model=False)
            run.log_text(result.classes.to_csv(index=False), "protocol_classes.csv")
            run.log_text(result.manifest.to_csv(index=False), "protocol_manifest.csv")
            if detector is not None:  # one memory for every class: one MLflow model, "all"
                pooled = pooled_evaluation(evaluations)
                with tempfile.TemporaryDirectory() as scratch, phase("MLflow: logging deployable models"):
                    example = images_of(inputs.corpus, [base_sample_id(pooled.test_ids[0])])[0]
                    uri = log_anomaly_model(run, pooled, config.features, example, Path(scratch))
                run.set_tags(models=json.dumps({pooled.class_name: uri}))
        extra = {
            "tail_classes": sorted(tail_classes),
            "diagnostics": diagnostics,
            "per_class": {e.class_name: e.metrics for e in evaluations},
        }
        rows.append(Row(method, context.dataset, values, metrics, extra))
    return TrialResult(rows)


def tailsampler_row(
    prediction,
    train_rows: pa.Table,
    true_tail,
    injected,
    tail_classes: list[str],
    run_name: str,
    values: dict[str, Any],
    context: TrialContext,
) -> Row:
    """TailSampler's prediction against the protocol's truth, as its own summary row.

    Long-tail protocols are synthetic, so the true tail images and the injected defects are
    known; the row puts TailSampler's precision and recall, and the share of injected defect
    images it calls tail, beside the detectors' rows (its AUROC columns stay empty). Its
    nested run carries one line per training image (truth, prediction, predicted class size).
    """
    import pandas as pd

    from raylab.methods.tailedcore.diagnostics import tail_quality

    metrics = {**tail_quality(prediction.is_tail, true_tail, injected), "tail_max_k": float(prediction.max_k)}
    per_image = pd.DataFrame(
        {
            "sample_id": train_rows.column("sample_id").to_pylist(),
            "class_name": train_rows.column("class_name").to_pylist(),
            "true_tail": true_tail,
            "injected": injected,
            "predicted_tail": prediction.is_tail,
            "predicted_class_size": prediction.class_sizes,
        }
    )
    tags = {"method": TAILSAMPLER_ROW, **values, "trial": context.trial_id}
    with context.nested_run(run_name, params=values, tags=tags) as run:
        run.log_metrics(metrics)
        run.log_text(per_image.to_csv(index=False), "tail_predictions.csv")
    diagnostics = {
        "class_partition": prediction.class_partition.tolist(),
        "elbow_k": prediction.elbow_k,
        "share_k": prediction.share_k,
    }
    extra = {"tail_classes": tail_classes, "diagnostics": diagnostics}
    return Row(TAILSAMPLER_ROW, context.dataset, values, metrics, extra)


# --smoke: a paper-size config's architecture unchanged (backbone, 224 px, 15-degree views,
# coresets, LOF), its budget shrunk to one step_k1 trial on two images per (class, split,
# label) group of four classes: on longtail_mix banded, bumpy, crosshatched (DTD) and
# magnetic_tile, 24 images, 6 of them training images, two of those in the tail. The tail's
# views dominate the cost (each tail image brings 47 views x 784 patches to the exact
# coreset and the memory), so the class count is the budget that matters.
SMOKE = {"protocols": ["step_k1"], "seeds": [0], "images_per_group": 2, "max_classes": 4}
# The cost benchmark's second run: eight classes bring five tail images instead of two, so the
# tail's views (the work unit's bulk) grow about sixfold; more images per group would add
# head and test images and hardly any coreset work.
SMOKE_SCALED = {"max_classes": 8}


def cost(request: Request[TailedCoreSweepConfig]) -> CostModel:
    """The largest trial's greedy-coreset work and the arrays TailedCore holds at its peak.

    Applies every protocol and seed to the corpus (file lists and counts only), sizes the
    patch grids on the meta device, and takes the protocol's true tail images as the tail
    TailSampler finds (its prediction needs the features; at the paper's sizes it is close).
    """
    import itertools

    import pyarrow.compute as pc

    from raylab.data.protocols import apply_long_tail, protocol_from_name
    from raylab.experiment.cost import FLOAT32
    from raylab.features.cache import VIEWS_PER_PASS
    from raylab.features.extract import EXTRACTION_BATCH, backbone_state_bytes, extraction_peak_bytes, feature_shape
    from raylab.methods.tailedcore.views import views_per_image

    config, tailed = request.config, request.config.tailedcore
    corpus = sweep_corpus(request)
    grid = axes(request)
    trials, tail_images = [], set()
    for values in itertools.product(*grid.values()):
        setting = Setting(dict(zip(grid, values, strict=True)))
        protocol = protocol_from_name(
            setting["protocol"],
            setting["noise_ratio"],
            setting["seed"],
            keep_injected_in_test=keeps_injected_in_test(setting),
        )
        result = apply_long_tail(corpus, protocol)
        train = (
            result.table.filter(pc.equal(result.table["split"], "train"))
            .select(["sample_id", "class_name"])
            .to_pylist()
        )
        tail_classes = set(result.tail_classes)  # a pandas query per call: once per setting, not per row
        tail = [row["sample_id"] for row in train if row["class_name"] in tail_classes]
        tail_images.update(tail)
        trials.append((len(train), len(tail)))
    height, width, dim = feature_shape(config.features)
    patches, grid_bytes = height * width, height * width * dim * FLOAT32
    views = views_per_image(tailed.tail_rotation_step, tailed.tail_hflip) if "tailedcore" in config.methods else 0
    # A views pass embeds every view of VIEWS_PER_PASS // views images at once (raylab.features.cache).
    extraction_pass = max(EXTRACTION_BATCH, max(1, VIEWS_PER_PASS // views) * views if views else 0)
    projected = min(dim, tailed.coreset_projection_dim or dim)
    keep = tailed.lof.keep_fraction

    def coreset_work(candidates: float, ratio: float) -> float:
        return candidates * max(1.0, candidates * ratio)  # k-center: every selection rescans the candidates

    def trial_work(train: int, tail: int) -> float:
        tail_candidates = tail * (1 + views) * patches
        return (
            coreset_work(tail_candidates, tailed.coreset_ratio)
            + coreset_work(train * patches * keep, tailed.coreset_ratio)
            + coreset_work(train * patches * keep, config.softpatch.coreset_ratio)
            + coreset_work(train * patches, config.patchcore.coreset_ratio)
        )

    def trial_arrays(train: int, tail: int) -> float:
        # The training grids; the tail candidates' projection (the 1024-d candidates stream
        # from the view cache, one image at a time, see tail_coreset) with one image's views
        # beside it; the head candidates' flat copy is freed before the tail pass.
        tail_pass = tail * (1 + views) * patches * projected * FLOAT32 + views * grid_bytes
        head_pass = train * keep * grid_bytes * (1 + projected / dim)
        # The memory: tail and head coresets, then their concatenation and faiss's copy.
        memory = (tail * (1 + views) + train * keep) * tailed.coreset_ratio * grid_bytes
        return train * grid_bytes + max(tail_pass, head_pass) + 3 * memory

    largest = max(trials, key=lambda t: trial_arrays(*t))
    # Each trial logs one model per method, each with the backbone's weights (its memory
    # bank is the saved bank counted under checkpoints).
    model_bytes = len(trials) * len(config.methods) * backbone_state_bytes(config.features)
    memories = sum(  # saved per trial: TailedCore's, SoftPatch's and PatchCore's banks
        (tail * (1 + views) + 2 * train * keep + train) * tailed.coreset_ratio * grid_bytes for train, tail in trials
    )
    return CostModel(
        work=max(trial_work(*t) for t in trials),
        work_unit="coreset distance evaluations",
        array_bytes=trial_arrays(*largest),
        checkpoint_bytes=memories,
        cache_bytes=corpus.num_rows * grid_bytes + len(tail_images) * views * grid_bytes,
        model_bytes=model_bytes,
        accelerator_bytes=extraction_peak_bytes(config.features, extraction_pass),
        accelerator_step=f"an extraction pass of {extraction_pass} images or tail views; "
        "memory search runs on the CPU by default",
        notes=(
            f"{len(trials)} trials; the largest: {largest[0]} training images, "
            f"{largest[1]} tail images x {views} views; "
            f"patch grid {height}x{width}x{dim}; coresets select in {projected} dims",
            "the corpus's patch grids are shared by every trial (Ray object store), "
            "counted under caches, not per trial",
            "MLflow models: each holds its own copy of the backbone's weights",
        ),
    )


def report(rows: Sequence[Row], request: Request[TailedCoreSweepConfig]) -> Report:
    from raylab.methods.tailedcore.report import auroc_bars
    from raylab.report.tables import aggregate, format_table

    table = aggregate(
        [r.to_dict() for r in rows],
        ["protocol", "noise_ratio", "injected_in_test", "method"],
        METRICS + TAILSAMPLER_METRICS,
    )

    def figures(scratch: Path) -> list[Path]:
        return [auroc_bars(table, scratch / "image_auroc_by_protocol.png")]

    return Report(
        format_table(table, TABLE_METRICS),
        tables={"results_table.csv": table.to_csv(index=False)},
        figures=figures,
        table=table,
    )


EXPERIMENT = Experiment(
    name=NAME,
    description="TailedCore against SoftPatch and PatchCore on long-tailed, noisy training sets (step and "
    "pareto protocols) over protocols x noise ratios x seeds on Ray Tune, one memory for all classes, "
    "evaluated per class; tracked in MLflow (parent run per sweep, nested run per method and setting).",
    config_type=TailedCoreSweepConfig,
    profiles={"cpu": TailedCoreSweepConfig, "full": full_config},
    default_dataset="longtail_mix",
    metrics_help=", ".join(METRICS) + "; rows carry method in {" + ", ".join(KNOWN_METHODS) + "}, protocol, "
    "tail_classes, diagnostics and per_class; plus one "
    + TAILSAMPLER_ROW
    + " row per trial with "
    + ", ".join(TAILSAMPLER_METRICS[:3]),
    axes=axes,
    prepare=prepare,
    trial=trial,
    report=report,
    executor="tune",
    config_folder="tailedcore",
    quick=quick,
    arguments=arguments,
    check=require_registered_dataset,
    apply_arguments=apply_arguments,
    # Trials hold almost no CPU (their LOF tasks take the cluster's); concurrency caps them.
    trial_resources=lambda config: {"CPU": 0.01},
    max_concurrent=lambda config: config.max_concurrent_trials,
    trial_cpus=lambda config: config.threads_per_trial,
    smoke=SMOKE,
    smoke_scaled=SMOKE_SCALED,
    cost=cost,
)
