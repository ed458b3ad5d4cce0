"""raylab's own Prometheus metrics, exported through Ray (``ray.util.metrics``).

Every Ray node serves its metrics on its metrics-export port; Prometheus scrapes them with
Ray's own service discovery (``ray metrics launch-prometheus``) and ``dashboards/`` holds the
Grafana panels. Ray prefixes each name with ``ray_`` (and counters get ``_total``), so
``raylab_feature_images`` is queried as ``ray_raylab_feature_images_total``.

What is measured, and where:

* feature extraction (``raylab.features.extract``): images and seconds per actor batch,
  so images/s = ``rate(images) / rate(seconds)`` per backbone;
* memory banks (``raylab.memory.bank``): vectors held by the latest bank of each process,
  vectors added, queries answered and search seconds (queries/s);
* training (``raylab.train.harness``): the epoch and the metrics rank 0 reports, per run;
* results (``raylab.tracking``): every metric logged to an MLflow run (trial results:
  AUROC per job, method, dataset, noise ratio and seed).

Recording is a no-op in a process without Ray (plain unit tests, notebooks), so the layers
above call these functions unconditionally.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "counter" or "gauge"
    description: str
    tags: tuple[str, ...] = ()

    def prometheus_names(self) -> tuple[str, ...]:
        """The series names Prometheus sees for this metric."""
        base = f"ray_{self.name}"
        return (f"{base}_total",) if self.kind == "counter" else (base,)


FEATURE_IMAGES = MetricSpec(
    "raylab_feature_images", "counter", "images through patch-feature extraction", ("backbone",)
)
FEATURE_SECONDS = MetricSpec(
    "raylab_feature_seconds", "counter", "seconds spent in backbone forward passes", ("backbone",)
)
BANK_VECTORS = MetricSpec(
    "raylab_memory_bank_vectors",
    "gauge",
    "vectors in the most recently filled memory bank of a process",
    ("metric", "device"),
)
BANK_ADDED = MetricSpec("raylab_memory_bank_added", "counter", "vectors added to memory banks", ("metric", "device"))
BANK_QUERIES = MetricSpec(
    "raylab_memory_bank_queries", "counter", "query vectors searched in memory banks", ("metric", "device")
)
BANK_SEARCH_SECONDS = MetricSpec(
    "raylab_memory_bank_search_seconds", "counter", "seconds spent in memory-bank searches", ("metric", "device")
)
TRAIN_EPOCH = MetricSpec("raylab_train_epoch", "gauge", "last epoch reported by a Ray Train run (rank 0)", ("run",))
TRAIN_METRIC = MetricSpec(
    "raylab_train_metric", "gauge", "metrics reported by a Ray Train run (rank 0), e.g. its loss", ("run", "metric")
)
RUN_METRIC = MetricSpec(
    "raylab_run_metric",
    "gauge",
    "metrics logged to MLflow runs (trial results)",
    ("job", "method", "dataset", "noise_ratio", "seed", "metric"),
)

ALL = (
    FEATURE_IMAGES,
    FEATURE_SECONDS,
    BANK_VECTORS,
    BANK_ADDED,
    BANK_QUERIES,
    BANK_SEARCH_SECONDS,
    TRAIN_EPOCH,
    TRAIN_METRIC,
    RUN_METRIC,
)

_instances: dict[str, Any] = {}


def _metric(spec: MetricSpec) -> Any | None:
    """The process's ``ray.util.metrics`` object for ``spec``, or None without Ray."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return None
    if not ray.is_initialized():
        return None
    found = _instances.get(spec.name)
    if found is None:
        from ray.util import metrics

        kind = metrics.Counter if spec.kind == "counter" else metrics.Gauge
        found = _instances[spec.name] = kind(spec.name, description=spec.description, tag_keys=spec.tags)
    return found


def _tags(spec: MetricSpec, values: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(values.get(key, "")) for key in spec.tags}


def _count(spec: MetricSpec, amount: float, **tags: Any) -> None:
    metric = _metric(spec)
    if metric is not None and amount > 0:
        metric.inc(float(amount), tags=_tags(spec, tags))


def _set(spec: MetricSpec, value: float, **tags: Any) -> None:
    metric = _metric(spec)
    if metric is not None and value is not None and not (isinstance(value, float) and math.isnan(value)):
        metric.set(float(value), tags=_tags(spec, tags))


def record_feature_batch(images: int, seconds: float, backbone: str) -> None:
    _count(FEATURE_IMAGES, images, backbone=backbone)
    _count(FEATURE_SECONDS, seconds, backbone=backbone)


def record_bank_add(added: int, total: int, metric: str, device: str) -> None:
    _count(BANK_ADDED, added, metric=metric, device=device)
    _set(BANK_VECTORS, total, metric=metric, device=device)


def record_bank_search(queries: int, seconds: float, metric: str, device: str) -> None:
    _count(BANK_QUERIES, queries, metric=metric, device=device)
    _count(BANK_SEARCH_SECONDS, seconds, metric=metric, device=device)


def record_train_report(run: str, metrics: Mapping[str, Any]) -> None:
    if "epoch" in metrics:
        _set(TRAIN_EPOCH, metrics["epoch"], run=run)
    for key, value in metrics.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            _set(TRAIN_METRIC, value, run=run, metric=key)


def record_run_metrics(labels: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _set(RUN_METRIC, value, **{**labels, "metric": key})
