"""The artifacts of one anomaly-detection run: overlays, ROC curves, per-class table, model."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from raylab.data.images import decode_image
from raylab.data.protocols.noise import base_sample_id
from raylab.methods.anomaly_benchmark import ClassEvaluation
from raylab.report.figures import anomaly_overlays, roc_figure
from raylab.tracking.mlflow_conventions import TrackedRun


def per_class_table(evaluations: Sequence[ClassEvaluation]) -> pd.DataFrame:
    return pd.DataFrame([{"class_name": e.class_name, **e.metrics} for e in evaluations])


def log_anomaly_artifacts(
    run: TrackedRun, evaluations: Sequence[ClassEvaluation], corpus: pa.Table, *, per_side: int = 4, save_model: bool = True
) -> None:
    """Log the per-class table, ROC curves, the most/least anomalous test images and the model."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        per_class_table(evaluations).to_csv(out / "per_class_metrics.csv", index=False)
        roc_figure({e.class_name: (e.labels, e.prediction.image_scores) for e in evaluations}, out / "roc_image.png")
        for evaluation in evaluations:
            if evaluation.prediction.maps is not None:
                _overlay(evaluation, corpus, per_side, out / f"overlays_{evaluation.class_name}.png")
        run.log_artifacts(out)
        if save_model:
            for evaluation in evaluations:
                save = getattr(evaluation.detector, "save", None)
                if save is not None:
                    model_dir = Path(scratch) / "model" / evaluation.class_name
                    save(model_dir)
                    run.log_artifacts(model_dir, f"model/{evaluation.class_name}")


def _overlay(evaluation: ClassEvaluation, corpus: pa.Table, per_side: int, path: Path) -> None:
    order = np.argsort(evaluation.prediction.image_scores)
    picked = list(order[::-1][:per_side]) + list(order[:per_side])
    ids = [base_sample_id(evaluation.test_ids[i]) for i in picked]
    rows = corpus.filter(pc.is_in(corpus["sample_id"], pa.array(ids)))
    by_id = dict(zip(rows.column("sample_id").to_pylist(), rows.column("image").to_pylist()))
    size = evaluation.prediction.maps.shape[-1]
    images = [np.asarray(decode_image(by_id[i], sample=i, mode="L").resize((size, size), Image.BILINEAR)) for i in ids]
    masks = [evaluation.masks[i] if evaluation.masks is not None else None for i in picked]
    titles = [
        f"{'most' if n < per_side else 'least'} | label {evaluation.labels[i]} | {evaluation.prediction.image_scores[i]:.3g}"
        for n, i in enumerate(picked)
    ]
    anomaly_overlays(images, [evaluation.prediction.maps[i] for i in picked], masks, titles, path)
