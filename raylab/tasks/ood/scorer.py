"""A classifier with a post-hoc OOD detector (NNGuide, KNN, energy, MSP, ...) as an MLflow model.

The scorer folder holds the classifier's weights and config (input size and normalisation),
the detector's config, and the ID training outputs the detector was fitted on
(penultimate features and logits). Loading refits the detector on those outputs: fitting is
deterministic (the bank subsample is seeded), and a refit keeps the stored state to plain
arrays instead of each detector's internals. The decision threshold is the OOD score that
maximised F1 for "OOD" on the run's ID test set against its OOD test sets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raylab.deploy.scorer_folder import finish_folder, finite, image_signature, log_scorer, read_folder

if TYPE_CHECKING:
    import pandas as pd

    from raylab.tasks.ood.config import ClassifierConfig, DetectorConfig
    from raylab.tasks.ood.detectors import ModelOutputs
    from raylab.tracking.mlflow_conventions import TrackedRun

FORMAT = "raylab-ood-scorer"
VERSION = 1
CLASSIFIER_FILE = "classifier.safetensors"


def detector_kind_name(config: DetectorConfig) -> str:
    from raylab.tasks.ood.config import DETECTOR_KINDS

    return next(name for name, kind in DETECTOR_KINDS.items() if type(config) is kind)


def save_ood_scorer(
    directory: Path,
    classifier: ClassifierConfig,
    state: Mapping[str, Any],
    detector: DetectorConfig,
    source: ModelOutputs,
    *,
    class_names: Sequence[str],
    threshold: float,
    metrics: dict[str, float],
) -> Path:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / CLASSIFIER_FILE))
    np.save(directory / "source_features.npy", np.asarray(source.features, dtype=np.float32))
    np.save(directory / "source_logits.npy", np.asarray(source.logits, dtype=np.float32))
    info = {
        "format": FORMAT,
        "version": VERSION,
        "classifier": dataclasses.asdict(
            dataclasses.replace(classifier, weights=None)
        ),  # the weights are the file beside
        "detector": {"kind": detector_kind_name(detector), "values": dataclasses.asdict(detector)},
        "class_names": list(class_names),
        "threshold": threshold,
        "metrics": metrics,
    }
    return finish_folder(directory, info)


class OODScorer:
    """An OOD scorer folder loaded: encoded images in, OOD scores, decisions and classes out."""

    def __init__(self, directory: str | Path, threads: int = 1) -> None:
        from safetensors.torch import load_file

        from raylab.config import from_mapping
        from raylab.tasks.ood.config import ClassifierConfig, detector_config
        from raylab.tasks.ood.detectors import ModelOutputs, fit_detector
        from raylab.tasks.ood.outputs import ClassifierActor, linear_head, transform_for

        directory = Path(directory)
        self.info = info = read_folder(directory, FORMAT, VERSION)
        classifier = from_mapping(ClassifierConfig, info["classifier"], where=str(directory / "scorer.json"))
        self.classifier = ClassifierActor(classifier, load_file(str(directory / CLASSIFIER_FILE)), threads)
        self.transform = transform_for(classifier)
        source = ModelOutputs(
            np.load(directory / "source_features.npy", allow_pickle=False),
            np.load(directory / "source_logits.npy", allow_pickle=False),
        )
        config = detector_config(
            info["detector"]["kind"], info["detector"]["values"], where=str(directory / "scorer.json")
        )
        self.detector = fit_detector(config, source, linear_head(self.classifier.model))
        self.threshold = finite(info["threshold"])

    def outputs(self, images: Sequence[bytes], sample_ids: Sequence[str]) -> ModelOutputs:
        from raylab.tasks.ood.detectors import ModelOutputs

        pixels = self.transform({"image": np.asarray(images, dtype=object), "sample_id": np.asarray(sample_ids)})[
            "pixels"
        ]
        out = self.classifier({"pixels": pixels, "sample_id": np.asarray(sample_ids)})
        return ModelOutputs(out["features"], out["logits"])

    def score(self, images: Sequence[bytes], sample_ids: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(OOD score, higher = more OOD; predicted ID class index) of each image."""
        if not images:
            raise ValueError("no images to score")
        ids = list(sample_ids) if sample_ids is not None else [f"image {i}" for i in range(len(images))]
        outputs = self.outputs(images, ids)
        return -self.detector.confidence(outputs), outputs.logits.argmax(axis=1)

    def frame(self, scores: np.ndarray, classes: np.ndarray) -> pd.DataFrame:
        import pandas as pd

        names = self.info["class_names"]
        scores = np.asarray(scores, dtype=np.float64)
        return pd.DataFrame(
            {"ood_score": scores, "is_ood": scores >= self.threshold, "predicted_class": [names[c] for c in classes]}
        )


def log_ood_model(
    run: TrackedRun,
    *,
    name: str,
    classifier: ClassifierConfig,
    state: Mapping[str, Any],
    detector: DetectorConfig,
    source: ModelOutputs,
    class_names: Sequence[str],
    id_scores: np.ndarray,
    ood_scores: np.ndarray,
    metrics: dict[str, float],
    example_image: bytes,
    scratch: Path,
) -> str:
    """Log one detector (with its classifier) as the MLflow model ``model-<name>`` attached to ``run``."""
    from raylab.eval.anomaly import best_f1_threshold

    labels = np.r_[np.zeros(len(id_scores), int), np.ones(len(ood_scores), int)]
    _, threshold = best_f1_threshold(labels, np.r_[id_scores, ood_scores])
    folder = save_ood_scorer(
        scratch / f"scorer-{name}",
        classifier,
        state,
        detector,
        source,
        class_names=class_names,
        threshold=threshold,
        metrics=metrics,
    )
    signature = image_signature({"ood_score": "double", "is_ood": "boolean", "predicted_class": "string"})
    return log_scorer(
        run,
        folder,
        name=f"model-{name}",
        model_file=Path(__file__).with_name("scorer_pyfunc.py"),
        signature=signature,
        example_image=example_image,
        metadata={"detector": name},
    )
