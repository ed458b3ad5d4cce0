"""Running anomaly detectors over protocol settings as Ray tasks, tracked in MLflow.

The driver loads the corpus, extracts (or loads cached) features once with Ray Data and puts
both in the object store; every (method, noise ratio, seed) setting then runs as one Ray task
that applies the noise protocol, fits and evaluates one detector per class, and logs its
nested MLflow run (metrics, per-class table, ROC curves, overlays, fitted model). The tasks
only read shared inputs, so they spread over a cluster unchanged.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from raylab.data.protocols.noise import NoiseProtocol, inject_noise
from raylab.features.extract import FeatureSet
from raylab.jobs import summary_row
from raylab.methods.anomaly_benchmark import AnomalyDetector, ClassSplit, class_splits, evaluate_per_class, mean_over_classes
from raylab.tracking import tracked_run
from raylab.tracking.anomaly_artifacts import log_anomaly_artifacts

DetectorFactory = Callable[[ClassSplit, int], AnomalyDetector]


@dataclass(frozen=True)
class AnomalySetting:
    method: str
    dataset: str
    noise_ratio: float
    seed: int
    keep_injected_in_test: bool = False


def evaluate_setting(
    setting: AnomalySetting,
    make_detector: DetectorFactory,
    corpus: pa.Table,
    features: FeatureSet,
    *,
    image_size: int,
    job: str,
    tracking_uri: str,
    parent_run_id: str | None,
    params: Any = None,
) -> dict[str, Any]:
    """Apply the protocol, evaluate per class, log a nested run; returns the summary row."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    protocol = NoiseProtocol(setting.noise_ratio, setting.seed, setting.keep_injected_in_test)
    result = inject_noise(corpus, protocol)
    splits = class_splits(result.table, image_size)
    tags = {"method": setting.method, "dataset": setting.dataset, "noise_ratio": setting.noise_ratio, "seed": setting.seed}
    name = f"{setting.method}-nr{setting.noise_ratio:g}-s{setting.seed}"
    with tracked_run(job, name, params=params, tags=tags, parent_run_id=parent_run_id) as run:
        evaluations = evaluate_per_class(lambda split: make_detector(split, setting.seed), splits, features)
        metrics = mean_over_classes(evaluations)
        run.log_metrics(metrics)
        log_anomaly_artifacts(run, evaluations, corpus)
        _log_manifest(run, result.manifest)
    return summary_row(
        setting.method,
        setting.dataset,
        setting.noise_ratio,
        setting.seed,
        metrics,
        per_class={e.class_name: e.metrics for e in evaluations},
    )


def _log_manifest(run, manifest) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "protocol_manifest.csv"
        manifest.to_csv(path, index=False)
        run.log_artifact(path)


def run_settings(
    settings: Sequence[AnomalySetting],
    make_detector: DetectorFactory,
    corpus: pa.Table,
    features: FeatureSet,
    **options: Any,
) -> list[dict[str, Any]]:
    """Run every setting as a Ray task over shared (object-store) corpus and features."""
    import ray

    corpus_ref, features_ref = ray.put(corpus), ray.put(features)
    task = ray.remote(num_cpus=1, scheduling_strategy="DEFAULT")(evaluate_setting)
    return ray.get([task.remote(s, make_detector, corpus_ref, features_ref, **options) for s in settings])
