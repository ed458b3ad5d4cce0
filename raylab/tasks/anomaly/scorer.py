"""A fitted anomaly detector as a self-contained scorer and an MLflow ``pyfunc`` model.

A scorer folder holds what turns an image into a score, and nothing that needs the training
run: the feature extractor's weights (``backbone.safetensors``, the features-only network, so
a model fitted on hub weights scores offline), the detector's own saved state (``detector/``),
and ``scorer.json`` (detector kind, feature spec, decision threshold, the run's metrics). A
manifest of sizes and SHA-256 digests is written last and checked before anything is read: a
model copied badly between stores fails naming the file instead of scoring wrongly. No file is
unpickled (safetensors, JSON, ``.npz`` without pickles, the detectors' own formats).

The decision threshold is the image score that maximised F1 on the run's test split (the
adaptive threshold anomaly-detection toolkits report): it makes ``is_anomalous`` comparable
across runs, but a deployment should calibrate its own on held-out images of its line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raylab.deploy.scorer_folder import SCORER_FILE, finish_folder, finite, image_signature, log_scorer, read_folder
from raylab.tasks.anomaly.detectors import DETECTOR_MODULES, anomaly_detectors, load_plugins, saved_format

if TYPE_CHECKING:
    import pandas as pd

    from raylab.features import FeatureSpec
    from raylab.tasks.anomaly.benchmark import ClassEvaluation
    from raylab.tasks.anomaly.maps import AnomalyPrediction
    from raylab.tracking.mlflow_conventions import TrackedRun

FORMAT = "raylab-anomaly-scorer"
VERSION = 1
BACKBONE_FILE = "backbone.safetensors"
DETECTOR_DIR = "detector"
BATCH_SIZE = 32


def save_scorer(
    directory: Path,
    detector: object,
    spec: FeatureSpec,
    *,
    image_threshold: float,
    class_name: str,
    metrics: dict[str, float],
) -> Path:
    """Write a scorer folder for a fitted ``detector`` on ``spec``'s features (manifest last)."""
    from safetensors.torch import save_file

    from raylab.features.extract import warm_backbone_state

    kind = saved_format(detector)
    if kind is None:
        known = anomaly_detectors().names()
        raise TypeError(
            f"{type(detector).__name__} cannot be deployed: it saves none of the registered formats {known}"
        )
    # A plug-in's module is recorded so that the process loading the scorer registers it too.
    module = anomaly_detectors().get(kind).detector_type.__module__
    directory.mkdir(parents=True, exist_ok=True)
    detector.save(directory / DETECTOR_DIR)
    save_file(warm_backbone_state(spec), str(directory / BACKBONE_FILE))
    info = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "plugins": [] if module in DETECTOR_MODULES else [module],
        "class_name": class_name,
        "feature_spec": dataclasses.asdict(spec),
        "image_threshold": image_threshold,
        "metrics": metrics,
    }
    return finish_folder(directory, info)


class AnomalyScorer:
    """A scorer folder loaded: encoded images in, image scores, maps and decisions out."""

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        from safetensors.torch import load_file

        from raylab.config import from_mapping
        from raylab.features import FeatureSpec
        from raylab.features.backbones import feature_wrapper, frozen
        from raylab.features.extract import PatchFeatureExtractor

        directory = Path(directory)
        self.info = info = read_folder(directory, FORMAT, VERSION)
        self.spec = from_mapping(FeatureSpec, info["feature_spec"], where=str(directory / SCORER_FILE))
        backbone = feature_wrapper(self.spec.backbone)
        backbone.load_state_dict(load_file(str(directory / BACKBONE_FILE)), strict=True)
        self.extractor = PatchFeatureExtractor(self.spec, threads or _default_threads(), backbone=frozen(backbone))
        self.detector = load_plugins(info.get("plugins", [])).get(info["kind"]).load(directory / DETECTOR_DIR)
        self.threshold = finite(info["image_threshold"])

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def score(
        self, images: Sequence[bytes], sample_ids: Sequence[str] | None = None, *, with_maps: bool = False
    ) -> AnomalyPrediction:
        """Score encoded images in batches; ``sample_ids`` name them in decoding errors."""
        from raylab.tasks.anomaly.maps import AnomalyPrediction

        ids = list(sample_ids) if sample_ids is not None else [f"image {i}" for i in range(len(images))]
        parts = []
        for start in range(0, len(images), BATCH_SIZE):
            batch = {
                "image": np.asarray(images[start : start + BATCH_SIZE], dtype=object),
                "sample_id": np.asarray(ids[start : start + BATCH_SIZE]),
            }
            parts.append(self.detector.predict(self.extractor(batch)["patches"], with_maps=with_maps))
        if not parts:
            raise ValueError("no images to score")
        return AnomalyPrediction(
            image_scores=np.concatenate([p.image_scores for p in parts]),
            patch_scores=np.concatenate([p.patch_scores for p in parts]),
            maps=np.concatenate([p.maps for p in parts]) if with_maps else None,
        )

    def frame(self, prediction: AnomalyPrediction) -> pd.DataFrame:
        """The model's output table: image score, decision at the stored threshold, optional map."""
        import pandas as pd

        scores = np.asarray(prediction.image_scores, dtype=np.float64)
        table = pd.DataFrame({"image_score": scores, "is_anomalous": scores >= self.threshold})
        if prediction.maps is not None:
            table["anomaly_map"] = [m.astype(np.float32).tolist() for m in prediction.maps]
        return table


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def pooled_evaluation(evaluations: Sequence[ClassEvaluation]) -> ClassEvaluation:
    """One detector evaluated per class (TailedCore's single memory for every class) as one
    evaluation named ``all``: its threshold is chosen on every class's test images together."""
    from raylab.tasks.anomaly.benchmark import ClassEvaluation
    from raylab.tasks.anomaly.maps import AnomalyPrediction

    first = evaluations[0]
    if any(e.detector is not first.detector for e in evaluations):
        raise ValueError("pooled_evaluation needs one detector evaluated on several classes")
    prediction = AnomalyPrediction(
        np.concatenate([e.prediction.image_scores for e in evaluations]),
        np.concatenate([e.prediction.patch_scores for e in evaluations]),
    )
    return ClassEvaluation(
        "all",
        {},
        [i for e in evaluations for i in e.test_ids],
        np.concatenate([e.labels for e in evaluations]),
        prediction,
        None,
        first.detector,
    )


def log_anomaly_model(
    run: TrackedRun, evaluation: ClassEvaluation, spec: FeatureSpec, example_image: bytes, scratch: Path
) -> str | None:
    """Log ``evaluation``'s fitted detector as an MLflow model named ``model-<class>`` attached
    to ``run``; returns its model URI (None for a detector that cannot be deployed yet)."""
    from raylab.eval.anomaly import best_f1_threshold

    if saved_format(evaluation.detector) is None:
        return None
    _, threshold = best_f1_threshold(evaluation.labels, evaluation.prediction.image_scores)
    folder = save_scorer(
        scratch / f"scorer-{evaluation.class_name}",
        evaluation.detector,
        spec,
        image_threshold=threshold,
        class_name=evaluation.class_name,
        metrics=dict(evaluation.metrics),
    )
    signature = image_signature({"image_score": "double", "is_anomalous": "boolean"}, {"with_maps": ("boolean", False)})
    return log_scorer(
        run,
        folder,
        name=f"model-{evaluation.class_name}",
        model_file=Path(__file__).with_name("scorer_pyfunc.py"),
        signature=signature,
        example_image=example_image,
        metadata={"class_name": evaluation.class_name},
    )
