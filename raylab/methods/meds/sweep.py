"""``jobs/meds_sweep.py``: MeDS and its baselines over noise ratios and seeds on Ray Tune.

One Tune trial = one protocol setting (noise ratio, seed). It applies the noise protocol to
the shared corpus, then for every class fits, on identical cached features:

* ``meds``: the three stages (partial memories -> distillation -> progressive selection);
* ``distilled``: the stage-2 network alone (no selection);
* ``partial_memory``: the stage-1 bootstrapped memories alone as the detector;
* ``patchcore``: the foundation's PatchCore;

and logs one nested MLflow run per method (metrics, per-class table, ROC, overlays, model;
for MeDS also the per-epoch kept fraction and the filter's precision and recall against the
injected-noise flags, which only the platform reads). The grid axes (noise ratio x seed)
are ``tune.grid_search``; ``--search N`` instead runs Optuna over (rho, B, k, lr) with ASHA
over the stages, as a sensitivity study (its objective is test AUROC: never use it to pick
a configuration to report).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raylab.config import load_config
from raylab.data import load_corpus
from raylab.data.protocols import NoiseProtocol, inject_noise, subsample_corpus
from raylab.features import FeatureSpec, cached_patch_features
from raylab.features.extract import FeatureSet
from raylab.jobs import init_ray, job_parser, parse_seeds, summary_row, write_summary
from raylab.methods.anomaly_benchmark import ClassEvaluation, class_splits, evaluate_fitted, mean_over_classes
from raylab.methods.meds.config import MeDSConfig, cpu_config
from raylab.methods.meds.method import MeDS
from raylab.methods.meds.partial_memory import PartialMemoryDetector
from raylab.methods.patchcore import PatchCore, PatchCoreConfig
from raylab.progress import tune_verbosity
from raylab.report.figures import metric_vs_setting
from raylab.report.tables import aggregate, format_table
from raylab.tracking import tracked_run, tracking_uri
from raylab.tracking.anomaly_artifacts import log_anomaly_artifacts

JOB = "meds_sweep"
METHODS = ("meds", "patchcore", "partial_memory", "distilled")
METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


@dataclass
class MeDSSweepConfig:
    dataset_options: dict[str, Any] = field(default_factory=dict)
    noise_ratios: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    seeds: tuple[int, ...] = (0,)
    keep_injected_in_test: bool = False
    features: FeatureSpec = field(default_factory=FeatureSpec)
    meds: MeDSConfig = field(default_factory=cpu_config)
    # PatchCore baseline on the same features; 1% coreset in the CPU size (the PatchCore
    # paper's own ablation shows 1% within a fraction of a point of 10% on MVTec).
    patchcore: PatchCoreConfig = field(default_factory=lambda: PatchCoreConfig(coreset_ratio=0.01))
    methods: tuple[str, ...] = METHODS
    # Stratified subsample (per class, split and label); None keeps the whole corpus.
    images_per_group: int | None = None
    quick_images_per_group: int = 40
    quick_noise_ratios: tuple[float, ...] = (0.0, 0.2)


def parser() -> argparse.ArgumentParser:
    parser = job_parser(
        JOB,
        "MeDS (bootstrapped partial memories, distillation, progressive selection) against "
        "PatchCore, stage 1 alone and stage 2 alone, over noise ratios x seeds on Ray Tune, "
        "tracked in MLflow (a parent run per sweep, nested runs per method and setting).",
        default_dataset="elpv",
        metrics_help=", ".join(METRICS) + "; rows carry method in {meds, patchcore, partial_memory, distilled}",
    )
    parser.add_argument("--noise-ratios", default=None, help="comma-separated noise ratios (default 0,0.1,0.2,0.4)")
    parser.add_argument(
        "--search",
        type=int,
        default=0,
        metavar="N",
        help="run N Optuna trials over rho, B, k, lr per grid point with ASHA over the stages "
        "(a sensitivity study: the objective is test AUROC, so never report its best trial as a result)",
    )
    parser.add_argument("--name", default=None, help="Tune run name; re-running the same name resumes the sweep")
    return parser


def filter_quality(history: list[np.ndarray], injected: np.ndarray) -> list[dict[str, float]]:
    """Per stage-3 epoch: kept fraction, and precision / recall of the removal vs injected noise."""
    rows = []
    for keep in history:
        removed = ~np.asarray(keep, dtype=bool)
        caught = int((removed & injected).sum())
        rows.append(
            {
                "kept_fraction": float(np.mean(~removed)),
                "filter_precision": caught / removed.sum() if removed.any() else float("nan"),
                "filter_recall": caught / injected.sum() if injected.any() else float("nan"),
            }
        )
    return rows


def run_trial(params: dict[str, Any], corpus: pa.Table, features: FeatureSet, config: MeDSSweepConfig, context: dict[str, Any]) -> None:
    """One (noise ratio, seed) setting, all methods; reports per-stage metrics to Tune (the
    last report, stage 3, carries every method's metrics; no return value, which Tune would
    record as one more report)."""
    import mlflow
    from ray import tune

    mlflow.set_tracking_uri(context["tracking_uri"])
    noise_ratio, seed = float(params["noise_ratio"]), int(params["seed"])
    meds_config = _with_search_overrides(config.meds, params)
    result = inject_noise(corpus, NoiseProtocol(noise_ratio, seed, config.keep_injected_in_test))
    splits = class_splits(result.table, config.features.image_size)
    image_size = config.features.image_size
    evaluations: dict[str, list[ClassEvaluation]] = {m: [] for m in config.methods}
    filter_rows: list[list[dict[str, float]]] = []
    run_tag = f"{context['dataset']}-nr{noise_ratio:g}-s{seed}" + (f"-{params['trial_tag']}" if "trial_tag" in params else "")
    for split in splits:
        train = features.take(split.train_ids)
        if "patchcore" in config.methods:
            evaluations["patchcore"].append(evaluate_fitted(PatchCore(config.patchcore, seed=seed).fit(train), split, features))
        if "partial_memory" in config.methods:
            stage1 = dataclasses.replace(meds_config.stage1, seed=seed, pool_grid=meds_config.token_grid)
            detector = PartialMemoryDetector(stage1, image_size=image_size).fit(train)
            evaluations["partial_memory"].append(evaluate_fitted(detector, split, features))
        tune.report({"stage": 1, "image_auroc": _latest_auroc(evaluations, "partial_memory")})
        meds = MeDS(meds_config, seed=seed, image_size=image_size, run_name=f"{context['name']}-{run_tag}-{split.class_name}", storage_path=context["storage_path"])
        meds.fit(train)
        if "distilled" in config.methods:
            evaluations["distilled"].append(evaluate_fitted(meds.distilled, split, features))
        tune.report({"stage": 2, "image_auroc": _latest_auroc(evaluations, "distilled")})
        evaluations["meds"].append(evaluate_fitted(meds, split, features))
        filter_rows.append(filter_quality(meds.selection_history, split.train_injected))

    summary: dict[str, Any] = {"stage": 3}
    for method, class_evaluations in evaluations.items():
        metrics = mean_over_classes(class_evaluations)
        tags = {"method": method, "dataset": context["dataset"], "noise_ratio": noise_ratio, "seed": seed}
        with tracked_run(JOB, f"{method}-{run_tag}", params={**params, "config": config}, tags=tags, parent_run_id=context["parent_run_id"]) as run:
            run.log_metrics(metrics)
            if method == "meds":
                for epoch, per_class in enumerate(zip(*filter_rows)):
                    run.log_metrics({k: float(np.nanmean([c[k] for c in per_class])) for k in per_class[0]}, step=epoch)
            log_anomaly_artifacts(run, class_evaluations, corpus)
        summary.update({f"{method}/{k}": v for k, v in metrics.items()})
    summary["image_auroc"] = summary["meds/image_auroc"]
    tune.report(summary)


def _latest_auroc(evaluations: dict[str, list[ClassEvaluation]], method: str) -> float:
    found = evaluations.get(method) or []
    return float(np.mean([e.metrics["image_auroc"] for e in found])) if found else float("nan")


SEARCH_KEYS = {"rho": ("stage1", "rho"), "bootstraps": ("stage1", "bootstraps"), "mad_k": ("selection", "mad_k"), "lr": ("distillation", "lr")}


def _with_search_overrides(config: MeDSConfig, params: dict[str, Any]) -> MeDSConfig:
    for key, (section, name) in SEARCH_KEYS.items():
        if key in params:
            config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{name: params[key]})})
    return config


def default_config_file(dataset: str) -> Path | None:
    """``configs/meds/<dataset>.yaml`` when the checkout has one: each dataset's documented size."""
    candidate = Path(__file__).resolve().parents[3] / "configs" / "meds" / f"{dataset}.yaml"
    return candidate if candidate.exists() else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from ray import tune

    args = parser().parse_args(argv)
    config = load_config(MeDSSweepConfig, args.config or default_config_file(args.dataset))
    ratios = tuple(float(r) for r in args.noise_ratios.split(",")) if args.noise_ratios else (config.quick_noise_ratios if args.quick else config.noise_ratios)
    seeds = parse_seeds(args.seeds) or config.seeds
    corpus = load_corpus(args.dataset, args.data_root, **config.dataset_options)
    per_group = config.quick_images_per_group if args.quick else config.images_per_group
    if per_group is not None:
        corpus = subsample_corpus(corpus, per_group)
    init_ray()
    import ray

    features = cached_patch_features(corpus, config.features)
    name = args.name or f"meds-{args.dataset}{'-quick' if args.quick else ''}"
    from raylab.data.store import cache_root

    storage_path = str(cache_root() / "ray_results")
    experiment = Path(storage_path) / name
    # A restarted sweep (same name, Tune state on disk) reopens its interrupted parent run.
    restoring = not args.search and tune.Tuner.can_restore(str(experiment))
    with tracked_run(JOB, name, params=config, tags={"dataset": args.dataset, "method": "sweep"}, resume=restoring) as parent:
        context = {"tracking_uri": tracking_uri(), "parent_run_id": parent.run_id, "dataset": args.dataset, "name": name, "storage_path": storage_path}
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, corpus=corpus, features=features, config=config, context=context), {"cpu": 0.01}
        )
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrent = max(1, cpus // max(1, config.meds.train_workers))
        results = []
        if args.search:
            from ray.tune.schedulers import ASHAScheduler
            from ray.tune.search.optuna import OptunaSearch

            space = {"rho": tune.uniform(0.05, 0.3), "bootstraps": tune.randint(5, 40), "mad_k": tune.uniform(1.0, 5.0), "lr": tune.loguniform(5e-4, 5e-3)}
            for ratio in ratios:
                for seed in seeds:
                    tuner = tune.Tuner(
                        trainable,
                        param_space={**space, "noise_ratio": ratio, "seed": seed},
                        tune_config=tune.TuneConfig(
                            metric="image_auroc", mode="max", num_samples=args.search, max_concurrent_trials=concurrent,
                            search_alg=OptunaSearch(seed=seed),
                            scheduler=ASHAScheduler(time_attr="stage", max_t=3, grace_period=1, reduction_factor=2),
                        ),
                        run_config=tune.RunConfig(name=f"{name}-search-nr{ratio:g}-s{seed}", storage_path=storage_path, verbose=tune_verbosity()),
                    )
                    results.extend(r.metrics for r in tuner.fit() if r.metrics and r.metrics.get("stage") == 3)
        else:
            tuner = (
                tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
                if restoring
                else tune.Tuner(
                    trainable,
                    param_space={"noise_ratio": tune.grid_search(list(ratios)), "seed": tune.grid_search(list(seeds))},
                    tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
                    run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=tune_verbosity()),
                )
            )
            grid = tuner.fit()
            errors = [r.error for r in grid if r.error]
            if errors:
                raise RuntimeError(f"{len(errors)} sweep trial(s) failed; first: {errors[0]}")
            results = [r.metrics for r in grid]
        rows = [
            summary_row(method, args.dataset, float(r["config"]["noise_ratio"]), int(r["config"]["seed"]),
                        {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(f"{method}/")})
            for r in results
            for method in config.methods
        ]
        table = aggregate(rows, ["noise_ratio", "method"], METRICS)
        text = format_table(table, ["image_auroc", "pixel_auroc", "aupro"])
        parent.log_text(text, "results_table.txt")
        parent.log_text(table.to_csv(index=False), "results_table.csv")
        with tempfile.TemporaryDirectory() as scratch:
            series = {
                method: (list(g["noise_ratio"]), list(g["image_auroc_mean"]), list(g["image_auroc_std"]))
                for method, g in table.groupby("method")
            }
            plot = metric_vs_setting(series, Path(scratch) / "image_auroc_vs_noise.png", "noise ratio", "image AUROC")
            parent.log_artifact(plot)
    print(text)
    if args.summary_json:
        write_summary(args.summary_json, JOB, rows)
    return {"rows": rows, "table": table}
