"""The artifacts of one anomaly-detection run: overlays, ROC curves, per-class table, model."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from raylab.data.images import decode_image
from raylab.data.protocols.noise import base_sample_id
from raylab.deploy.logged_models import MODELS_TAG
from raylab.report.figures import anomaly_overlays, roc_figure
from raylab.tasks.anomaly.benchmark import ClassEvaluation
from raylab.timing import phase
from raylab.tracking.mlflow_conventions import TrackedRun

if TYPE_CHECKING:
    from raylab.features import FeatureSpec


def per_class_table(evaluations: Sequence[ClassEvaluation]) -> pd.DataFrame:
    return pd.DataFrame([{"class_name": e.class_name, **e.metrics} for e in evaluations])


def log_anomaly_artifacts(
    run: TrackedRun,
    evaluations: Sequence[ClassEvaluation],
    corpus: pa.Table,
    *,
    per_side: int = 4,
    save_model: bool = True,
    features: FeatureSpec | None = None,
) -> None:
    """Log the per-class table, ROC curves, the most/least anomalous test images and the models.

    With the run's ``features``, every class's detector that can be deployed is logged as an
    MLflow model (``model-<class>``, see :mod:`raylab.tasks.anomaly.scorer`) and the run's
    ``raylab.models`` tag maps each class to its model URI; any other detector is saved in
    its own format under ``model/<class>``.
    """
    from raylab.tasks.anomaly.detectors import saved_format
    from raylab.tasks.anomaly.scorer import log_anomaly_model

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        per_class_table(evaluations).to_csv(out / "per_class_metrics.csv", index=False)
        roc_figure({e.class_name: (e.labels, e.prediction.image_scores) for e in evaluations}, out / "roc_image.png")
        for evaluation in evaluations:
            if evaluation.prediction.maps is not None:
                _overlay(evaluation, corpus, per_side, out / f"overlays_{evaluation.class_name}.png")
        run.log_artifacts(out)
        if not save_model:
            return
        models = {}
        for evaluation in evaluations:
            if features is not None and saved_format(evaluation.detector) is not None:
                with phase("MLflow: logging deployable models"):
                    example = images_of(corpus, [base_sample_id(evaluation.test_ids[0])])[0]
                    models[evaluation.class_name] = log_anomaly_model(run, evaluation, features, example, out)
            elif hasattr(evaluation.detector, "save"):
                model_dir = out / "model" / evaluation.class_name
                evaluation.detector.save(model_dir)
                run.log_artifacts(model_dir, f"model/{evaluation.class_name}")
        if models:
            run.client.set_tag(run.run_id, MODELS_TAG, json.dumps(models, sort_keys=True))


def images_of(corpus: pa.Table, sample_ids: list[str]) -> list[bytes]:
    """The encoded images of ``sample_ids`` (original ids), in that order."""
    rows = corpus.filter(pc.is_in(corpus["sample_id"], pa.array(sample_ids)))
    by_id = dict(zip(rows.column("sample_id").to_pylist(), rows.column("image").to_pylist(), strict=True))
    return [by_id[i] for i in sample_ids]


def _overlay(evaluation: ClassEvaluation, corpus: pa.Table, per_side: int, path: Path) -> None:
    order = np.argsort(evaluation.prediction.image_scores)
    picked = list(order[::-1][:per_side]) + list(order[:per_side])
    ids = [base_sample_id(evaluation.test_ids[i]) for i in picked]
    size = evaluation.prediction.maps.shape[-1]
    images = [
        np.asarray(decode_image(data, sample=i, mode="L").resize((size, size), Image.BILINEAR))
        for i, data in zip(ids, images_of(corpus, ids), strict=True)
    ]
    masks = [evaluation.masks[i] if evaluation.masks is not None else None for i in picked]
    titles = [
        f"{'most' if n < per_side else 'least'} | label {evaluation.labels[i]} | "
        f"{evaluation.prediction.image_scores[i]:.3g}"
        for n, i in enumerate(picked)
    ]
    anomaly_overlays(images, [evaluation.prediction.maps[i] for i in picked], masks, titles, path)
