"""The industrial anomaly-detection protocol shared by PatchCore, SoftPatch, TailedCore and MeDS.

One *setting* = (noise ratio, seed): the noise protocol is applied to the corpus, then each
class gets its own detector, fitted on that class's (possibly contaminated) training
patches and evaluated on its test images; the setting's metrics are the mean over classes,
as MVTec-style papers report them. Detectors see patch features only: never labels of
training images, never the ``injected_noise`` flags.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylab.data.images import ImageTransform
from raylab.eval import anomaly_metrics
from raylab.features.extract import FeatureSet
from raylab.tasks.anomaly.detectors import AnomalyDetector
from raylab.tasks.anomaly.maps import AnomalyPrediction
from raylab.timing import phase


@dataclass
class ClassSplit:
    """What a detector of one class may see (train ids) and what it is judged on."""

    class_name: str
    train_ids: list[str]
    test_ids: list[str]
    test_labels: np.ndarray
    test_masks: np.ndarray | None
    train_injected: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))


def class_splits(table: pa.Table, image_size: int) -> list[ClassSplit]:
    """Per-class train/test views of a protocol's output table.

    Masks are decoded at the model's input size; a corpus without any mask (ELPV) gets
    ``test_masks=None`` and so no pixel metrics. ``train_injected`` is kept for the
    platform's own diagnostics (e.g. filter precision of MeDS), never passed to a method.
    """
    transform = ImageTransform(size=image_size)
    splits = []
    for class_name in sorted(set(table.column("class_name").to_pylist())):
        rows = table.filter(pc.equal(table["class_name"], class_name))
        train = rows.filter(pc.equal(rows["split"], "train"))
        test = rows.filter(pc.equal(rows["split"], "test"))
        test_ids = test.column("sample_id").to_pylist()
        raw_masks = test.column("mask").to_pylist()
        masks = None
        if any(m is not None for m in raw_masks):
            masks = np.stack([transform.mask(m, s) for m, s in zip(raw_masks, test_ids, strict=True)])
        splits.append(
            ClassSplit(
                class_name=class_name,
                train_ids=train.column("sample_id").to_pylist(),
                test_ids=test_ids,
                test_labels=np.asarray(test.column("label").to_pylist(), dtype=np.int64),
                test_masks=masks,
                train_injected=np.asarray(train.column("injected_noise").to_pylist(), dtype=bool),
            )
        )
    return splits


@dataclass
class ClassEvaluation:
    class_name: str
    metrics: dict[str, float]
    test_ids: list[str]
    labels: np.ndarray
    prediction: AnomalyPrediction
    masks: np.ndarray | None
    detector: AnomalyDetector


def evaluate_per_class(
    make_detector: Callable[[ClassSplit], AnomalyDetector], splits: Sequence[ClassSplit], features: FeatureSet
) -> list[ClassEvaluation]:
    return [
        evaluate_fitted(make_detector(split).fit(features.take(split.train_ids)), split, features) for split in splits
    ]


def evaluate_fitted(detector: AnomalyDetector, split: ClassSplit, features: FeatureSet) -> ClassEvaluation:
    """Score one class's test images with a fitted detector and compute its metrics."""
    with phase("evaluation: scoring test images and metrics"):
        prediction = detector.predict(features.take(split.test_ids), with_maps=split.test_masks is not None)
        metrics = anomaly_metrics(split.test_labels, prediction.image_scores, split.test_masks, prediction.maps)
    return ClassEvaluation(
        split.class_name, metrics, split.test_ids, split.test_labels, prediction, split.test_masks, detector
    )


def mean_over_classes(evaluations: Sequence[ClassEvaluation]) -> dict[str, float]:
    """Mean of each metric over the classes that have it (classes without masks have no pixel metrics)."""
    names = list(dict.fromkeys(name for e in evaluations for name in e.metrics))
    means = {}
    for name in names:
        values = [e.metrics[name] for e in evaluations if not math.isnan(e.metrics.get(name, math.nan))]
        means[name] = float(np.mean(values)) if values else float("nan")
    return means
