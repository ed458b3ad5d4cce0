"""``jobs/tailedcore_sweep.py``: TailedCore, SoftPatch and PatchCore over long-tail protocols on Ray Tune.

One Tune trial = one setting (protocol, noise ratio, seed). It applies the long-tail
protocol (:mod:`raylab.data.protocols.longtail`) to the shared corpus, pools the training
images of *all* classes (the long-tail setting has no class labels at training time), and
fits each method once on identical cached features:

* ``tailedcore``: TailSampler tail memory (+ rotation/flip views) U LOF-filtered head memory;
* ``softpatch``: LOF-filtered memory with LOF-weighted scores;
* ``patchcore``: greedy coreset of everything (the foundation's PatchCore, pooled);
* optionally ``class_patchcore``: PatchCore with one memory per class (a class-aware
  reference that shows what each class's few images allow without pooling), and the
  TailedCore ablations ``tailedcore_no_views`` (no rotation/flip views) and
  ``tailedcore_true_tail`` (the protocol's true tail images instead of TailSampler's).

Each fitted memory is then evaluated per class on that class's test images (image and
pixel AUROC, AP, AUPRO), averaged over classes, over the protocol's tail classes
(``tail_image_auroc``) and over its head classes (``head_image_auroc``). MLflow gets a
parent run per sweep and a nested run per (method, setting) with the protocol's class
manifest, per-class metrics, ROC curves, overlays, the fitted memory and the diagnostics
only the platform can compute (it reads the protocol's truth, the methods never do):
TailSampler's precision and recall against the true tail images, and the share of
injected-noise and of clean patches each LOF filter removed.

Features are extracted once per corpus (patch grids for the memories, last-stage pooled
embeddings for TailSampler) and cached; only the tail images' augmented views are
computed inside trials, and cached per image (:mod:`raylab.methods.tailedcore.views`).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylab.config import load_config
from raylab.data import load_corpus
from raylab.data.images import ImageTransform
from raylab.data.protocols import apply_long_tail, protocol_from_name, subsample_corpus
from raylab.features import FeatureSpec, cached_patch_features
from raylab.features.extract import FeatureSet
from raylab.jobs import init_ray, job_parser, parse_seeds, summary_row, write_summary
from raylab.methods.anomaly_benchmark import ClassEvaluation, class_splits, evaluate_fitted, mean_over_classes
from raylab.methods.patchcore import PatchCore, PatchCoreConfig
from raylab.methods.tailedcore.config import SoftPatchConfig, TailedCoreConfig
from raylab.methods.tailedcore.model import TailedCore
from raylab.methods.tailedcore.report import auroc_bars
from raylab.methods.tailedcore.softpatch import SoftPatch
from raylab.methods.tailedcore.views import RotationFlipViews
from raylab.report.tables import aggregate, format_table
from raylab.tracking import tracked_run, tracking_uri
from raylab.tracking.anomaly_artifacts import log_anomaly_artifacts

JOB = "tailedcore_sweep"
METHODS = ("tailedcore", "softpatch", "patchcore")
# A class-aware reference, not a competitor: PatchCore with one memory per class, fitted on
# that class's own training images (it reads the class labels the other methods never get).
# Ablations of TailedCore: without its tail views, and with the true tail images in place of
# TailSampler's prediction (the protocol's truth, which only the platform reads).
REFERENCE_METHODS = ("class_patchcore", "tailedcore_no_views", "tailedcore_true_tail")
METRICS = ("image_auroc", "tail_image_auroc", "head_image_auroc", "pixel_auroc", "image_ap", "aupro")
TABLE_METRICS = ("image_auroc", "tail_image_auroc", "head_image_auroc", "pixel_auroc")
CPU_FEATURES = FeatureSpec(image_size=112)


def cpu_tailedcore() -> TailedCoreConfig:
    """The CPU size: 112-px EfficientNet-Lite0 features; tail views every 45 degrees x flip."""
    return TailedCoreConfig(features=CPU_FEATURES, tail_rotation_step=45)


@dataclass
class TailedCoreSweepConfig:
    dataset_options: dict[str, Any] = field(default_factory=dict)
    protocols: tuple[str, ...] = ("step_k1", "step_k4", "pareto")
    noise_ratios: tuple[float, ...] = (0.1,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    keep_injected_in_test: bool = False
    features: FeatureSpec = field(default_factory=lambda: CPU_FEATURES)
    tailedcore: TailedCoreConfig = field(default_factory=cpu_tailedcore)
    softpatch: SoftPatchConfig = field(default_factory=SoftPatchConfig)
    # The release's PatchCore baseline: exact greedy coreset 10%, like the other two.
    patchcore: PatchCoreConfig = field(default_factory=lambda: PatchCoreConfig(coreset_method="exact"))
    methods: tuple[str, ...] = METHODS
    max_concurrent_trials: int | None = None  # default: one per CPU / threads_per_trial
    threads_per_trial: int = 1
    images_per_group: int | None = None  # stratified subsample (class, split, label); None keeps all
    quick_dataset_options: dict[str, Any] = field(
        default_factory=lambda: {"train_per_class": 24, "test_good_per_class": 8, "test_defective_per_class": 8}
    )
    quick_protocols: tuple[str, ...] = ("step_k1",)
    quick_seeds: tuple[int, ...] = (0,)


def parser() -> argparse.ArgumentParser:
    parser = job_parser(
        JOB,
        "TailedCore against SoftPatch and PatchCore on long-tailed, noisy training sets (step and "
        "pareto protocols) over noise ratios x seeds on Ray Tune, one memory for all classes, "
        "evaluated per class; tracked in MLflow (parent run per sweep, nested run per method and setting).",
        default_dataset="longtail_mix",
        metrics_help=", ".join(METRICS) + "; rows carry method in {tailedcore, softpatch, patchcore} and protocol",
    )
    parser.add_argument("--protocols", default=None, help="comma-separated: step_k1, step_k4, pareto (default: config)")
    parser.add_argument("--noise-ratios", default=None, help="comma-separated noise ratios (default: config, 0.1)")
    parser.add_argument(
        "--methods", default=None,
        help=f"comma-separated, from {', '.join(METHODS + REFERENCE_METHODS)} (default: config, the first three)",
    )
    parser.add_argument("--name", default=None, help="Tune run name; re-running the same name resumes the sweep")
    return parser


def _with_features(config: TailedCoreSweepConfig) -> TailedCoreSweepConfig:
    """Every method reads the sweep's features (identical inputs for the comparison)."""
    return dataclasses.replace(
        config,
        tailedcore=dataclasses.replace(config.tailedcore, features=config.features),
        softpatch=dataclasses.replace(config.softpatch, features=config.features),
        patchcore=dataclasses.replace(config.patchcore, features=config.features),
    )


def global_embeddings(corpus: pa.Table, config: TailedCoreSweepConfig) -> FeatureSet:
    """TailSampler's input: the backbone's last stage, average-pooled, cached like any features."""
    backbone = dataclasses.replace(config.features.backbone, out_indices=(config.tailedcore.embedding_stage,))
    spec = FeatureSpec(backbone=backbone, image_size=config.features.image_size, aggregation_kernel=1)
    grids = cached_patch_features(corpus, spec)
    pooled = np.asarray(grids.patches, dtype=np.float32).mean(axis=(1, 2))
    return FeatureSet(sample_ids=grids.sample_ids, patches=pooled)


def filter_removal(kept: np.ndarray, injected: np.ndarray, defect_cells: np.ndarray) -> dict[str, float]:
    """Share of patches a filter dropped: of clean images, of injected images, of their defects.

    ``defect_cells`` (N, h, w) marks the patches of injected images that overlap their
    defect mask (images without masks, like ELPV's, contribute none).
    """
    removed = ~kept

    def share(selector: np.ndarray) -> float:
        return float(removed[selector].mean()) if selector.any() else float("nan")

    return {
        "clean_patches_removed": share(np.broadcast_to(~injected[:, None, None], kept.shape)),
        "noise_patches_removed": share(np.broadcast_to(injected[:, None, None], kept.shape)),
        "defect_patches_removed": share(defect_cells),
    }


def defect_patch_cells(masks: list[bytes | None], ids: list[str], image_size: int, grid: tuple[int, int]) -> np.ndarray:
    """(N, h, w): which patch cells of each image overlap its defect mask."""
    transform = ImageTransform(size=image_size)
    rows = np.linspace(0, image_size, grid[0] + 1).astype(int)
    columns = np.linspace(0, image_size, grid[1] + 1).astype(int)
    cells = np.zeros((len(masks), *grid), dtype=bool)
    for i, (mask, sample) in enumerate(zip(masks, ids)):
        if mask is None:
            continue
        pixels = transform.mask(mask, sample)
        for y in range(grid[0]):
            for x in range(grid[1]):
                cells[i, y, x] = pixels[rows[y] : rows[y + 1], columns[x] : columns[x + 1]].any()
    return cells


def tail_quality(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    hits = int((predicted & truth).sum())
    return {
        "tail_predicted": float(predicted.sum()),
        "tail_true": float(truth.sum()),
        "tail_precision": hits / predicted.sum() if predicted.any() else float("nan"),
        "tail_recall": hits / truth.sum() if truth.any() else float("nan"),
    }


def run_trial(
    params: dict[str, Any],
    corpus: pa.Table,
    features: FeatureSet,
    embeddings: FeatureSet,
    config: TailedCoreSweepConfig,
    context: dict[str, Any],
) -> None:
    """The Tune trainable: one setting, reported to Tune once."""
    from ray import tune

    tune.report(evaluate_setting(params, corpus, features, embeddings, config, context))


def evaluate_setting(
    params: dict[str, Any],
    corpus: pa.Table,
    features: FeatureSet,
    embeddings: FeatureSet,
    config: TailedCoreSweepConfig,
    context: dict[str, Any],
) -> dict[str, Any]:
    """One (protocol, noise ratio, seed): fit every method on the pooled training set, evaluate per class."""
    import faiss
    import mlflow
    import torch

    torch.set_num_threads(config.threads_per_trial)
    faiss.omp_set_num_threads(config.threads_per_trial)
    mlflow.set_tracking_uri(context["tracking_uri"])
    name, noise_ratio, seed = str(params["protocol"]), float(params["noise_ratio"]), int(params["seed"])
    protocol = protocol_from_name(name, noise_ratio, seed, keep_injected_in_test=config.keep_injected_in_test)
    result = apply_long_tail(corpus, protocol)
    splits = class_splits(result.table, config.features.image_size)
    train_rows = result.table.filter(pc.equal(result.table["split"], "train")).sort_by("sample_id")
    train_ids = train_rows.column("sample_id").to_pylist()
    train = features.take(train_ids)
    injected = np.asarray(train_rows.column("injected_noise").to_pylist(), dtype=bool)
    tail_classes = set(result.tail_classes)
    true_tail = np.array([c in tail_classes for c in train_rows.column("class_name").to_pylist()], dtype=bool)
    defect_cells = defect_patch_cells(train_rows.column("mask").to_pylist(), train_ids, config.features.image_size, train.shape[1:3])
    defect_cells &= injected[:, None, None]
    views = RotationFlipViews(corpus, config.features, config.tailedcore.tail_rotation_step, config.tailedcore.tail_hflip)

    summary: dict[str, Any] = {}
    tag = f"{name}-nr{noise_ratio:g}-s{seed}"
    for method in config.methods:
        start = time.perf_counter()
        diagnostics: dict[str, float] = {}
        if method.startswith("tailedcore"):
            detector = TailedCore(config.tailedcore, seed=seed).fit(
                train,
                embeddings.take(train_ids),
                views=None if method == "tailedcore_no_views" else (lambda rows: views([train_ids[i] for i in rows])),
                known_tail=true_tail if method == "tailedcore_true_tail" else None,
            )
            diagnostics.update(tail_quality(detector.tail.is_tail, true_tail))
            diagnostics.update({"tail_max_k": float(detector.tail.max_k), **filter_removal(detector.head_kept, injected, defect_cells)})
            diagnostics.update({f"memory_{k}": float(v) for k, v in detector.memory_sizes.items()})
        elif method == "softpatch":
            detector = SoftPatch(config.softpatch, seed=seed).fit(train)
            diagnostics.update(filter_removal(detector.kept, injected, defect_cells))
        elif method == "patchcore":
            detector = PatchCore(config.patchcore, seed=seed).fit(train)
        elif method == "class_patchcore":
            detector = None  # one memory per class, fitted below
        else:
            raise ValueError(f"unknown method {method!r}; known: {METHODS + REFERENCE_METHODS}")
        diagnostics["fit_seconds"] = time.perf_counter() - start
        if detector is None:
            evaluations = [evaluate_fitted(PatchCore(config.patchcore, seed=seed).fit(features.take(split.train_ids)), split, features) for split in splits]
        else:
            evaluations = [evaluate_fitted(detector, split, features) for split in splits]
        diagnostics["total_seconds"] = time.perf_counter() - start
        metrics = class_group_metrics(evaluations, tail_classes)
        tags = {"method": method, "dataset": context["dataset"], "protocol": name, "noise_ratio": noise_ratio, "seed": seed}
        with tracked_run(JOB, f"{method}-{tag}", params={**params, "config": config}, tags=tags, parent_run_id=context["parent_run_id"]) as run:
            run.log_metrics({**metrics, **diagnostics})
            log_anomaly_artifacts(run, evaluations, corpus, save_model=False)
            run.log_text(result.classes.to_csv(index=False), "protocol_classes.csv")
            run.log_text(result.manifest.to_csv(index=False), "protocol_manifest.csv")
            if detector is not None:
                with tempfile.TemporaryDirectory() as scratch:
                    run.log_artifacts(detector.save(Path(scratch) / "model"), "model")
        summary[f"{method}/metrics"] = metrics
        summary[f"{method}/diagnostics"] = diagnostics
        summary[f"{method}/per_class"] = {e.class_name: e.metrics for e in evaluations}
    summary["image_auroc"] = summary[f"{config.methods[0]}/metrics"]["image_auroc"]
    summary["tail_classes"] = sorted(tail_classes)
    return summary


def class_group_metrics(evaluations: list[ClassEvaluation], tail_classes: set[str]) -> dict[str, float]:
    """Means over all classes, plus image AUROC over the tail and over the head classes."""
    metrics = mean_over_classes(evaluations)
    for group, members in (("tail", [e for e in evaluations if e.class_name in tail_classes]), ("head", [e for e in evaluations if e.class_name not in tail_classes])):
        metrics[f"{group}_image_auroc"] = mean_over_classes(members)["image_auroc"] if members else float("nan")
    return metrics


def default_config_file(dataset: str) -> Path | None:
    candidate = Path(__file__).resolve().parents[3] / "configs" / "tailedcore" / f"{dataset}.yaml"
    return candidate if candidate.exists() else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from ray import tune

    args = parser().parse_args(argv)
    config = _with_features(load_config(TailedCoreSweepConfig, args.config or default_config_file(args.dataset)))
    if args.methods:
        config = dataclasses.replace(config, methods=tuple(args.methods.split(",")))
    unknown = sorted(set(config.methods) - set(METHODS + REFERENCE_METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {METHODS + REFERENCE_METHODS}")
    protocols = tuple(args.protocols.split(",")) if args.protocols else (config.quick_protocols if args.quick else config.protocols)
    for protocol in protocols:
        protocol_from_name(protocol, 0.0, 0)  # fail on a typo before any work
    ratios = tuple(float(r) for r in args.noise_ratios.split(",")) if args.noise_ratios else config.noise_ratios
    seeds = parse_seeds(args.seeds) or (config.quick_seeds if args.quick else config.seeds)
    options = {**config.dataset_options, **(config.quick_dataset_options if args.quick and args.dataset == "longtail_mix" else {})}
    corpus = load_corpus(args.dataset, args.data_root, **options)
    if config.images_per_group is not None:
        corpus = subsample_corpus(corpus, config.images_per_group)
    init_ray()
    import ray

    features = cached_patch_features(corpus, config.features)
    embeddings = global_embeddings(corpus, config)
    name = args.name or f"tailedcore-{args.dataset}{'-quick' if args.quick else ''}"
    from raylab.data.store import cache_root

    storage_path = str(cache_root() / "ray_results")
    with tracked_run(JOB, name, params=config, tags={"dataset": args.dataset, "method": "sweep"}) as parent:
        context = {"tracking_uri": tracking_uri(), "parent_run_id": parent.run_id, "dataset": args.dataset}
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, corpus=corpus, features=features, embeddings=embeddings, config=config, context=context),
            {"cpu": 0.01},
        )
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrent = config.max_concurrent_trials or max(1, cpus // max(1, config.threads_per_trial))
        experiment = Path(storage_path) / name
        space = {"protocol": tune.grid_search(list(protocols)), "noise_ratio": tune.grid_search(list(ratios)), "seed": tune.grid_search(list(seeds))}
        tuner = (
            tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
            if tune.Tuner.can_restore(str(experiment))
            else tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
                run_config=tune.RunConfig(name=name, storage_path=storage_path),
            )
        )
        grid = tuner.fit()
        errors = [r.error for r in grid if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} sweep trial(s) failed; first: {errors[0]}")
        rows = []
        for r in grid:
            settings = r.metrics["config"]
            for method in config.methods:
                rows.append(
                    summary_row(
                        method, args.dataset, float(settings["noise_ratio"]), int(settings["seed"]), r.metrics[f"{method}/metrics"],
                        protocol=settings["protocol"], tail_classes=r.metrics["tail_classes"],
                        diagnostics=r.metrics[f"{method}/diagnostics"], per_class=r.metrics[f"{method}/per_class"],
                    )
                )
        table = aggregate(rows, ["protocol", "noise_ratio", "method"], METRICS)
        text = format_table(table, TABLE_METRICS)
        parent.log_text(text, "results_table.txt")
        parent.log_text(table.to_csv(index=False), "results_table.csv")
        with tempfile.TemporaryDirectory() as scratch:
            parent.log_artifact(auroc_bars(table, Path(scratch) / "image_auroc_by_protocol.png"))
    print(text)
    if args.summary_json:
        write_summary(args.summary_json, JOB, rows)
    return {"rows": rows, "table": table}
