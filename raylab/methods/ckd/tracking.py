"""What an MLflow run of one CKD training holds: curves, test metrics, figures, the encoder.

Per epoch: the loss terms, training and validation periocular top-1, learning rate. Final:
the test metrics on unseen identities, a CMC curve and a verification ROC (FAR on a log
axis) as PNG images, and the periocular encoder as an MLflow PyTorch model
exported with ``torch.export`` (MLflow's ``pt2`` format: loads without raylab installed and
unpickles nothing), logged as an MLflow 3 model attached to the run with torch pinned; its
URI is the run's ``raylab.models`` tag (``mlflow.pytorch.load_model(uri)``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raylab.report.figures import line_figure
from raylab.tracking.mlflow_conventions import TrackedRun

if TYPE_CHECKING:
    from raylab.methods.ckd.experiment import CKDRun


def log_ckd_run(run: TrackedRun, result: CKDRun, *, log_model: bool = True) -> None:
    for row in result.trained.history:
        run.log_metrics({f"train/{k}": v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    run.log_metrics(result.evaluation.metrics)
    evaluation = result.evaluation
    with tempfile.TemporaryDirectory() as scratch:
        ranks = np.arange(1, len(evaluation.cmc) + 1)
        cmc = line_figure(
            {result.method: (ranks, evaluation.cmc)},
            Path(scratch) / "cmc.png",
            xlabel="rank",
            ylabel="identification rate",
            title="periocular CMC (unseen identities)",
        )
        keep = evaluation.far > 0
        roc = line_figure(
            {result.method: (evaluation.far[keep], evaluation.tar[keep])},
            Path(scratch) / "roc.png",
            xlabel="false accept rate",
            ylabel="true accept rate",
            title="periocular verification ROC",
            logx=True,
        )
        run.log_artifact(cmc, "figures")
        run.log_artifact(roc, "figures")
        if log_model:
            import mlflow.pytorch

            from raylab.deploy.logged_models import attached_to, pinned_requirements

            with attached_to(run):
                info = mlflow.pytorch.log_model(
                    result.encoder,
                    name="periocular_encoder",
                    input_example=result.example_input,
                    serialization_format="pt2",
                    pip_requirements=pinned_requirements(("torch", "numpy")),
                )
            run.set_tags(models=json.dumps({"periocular_encoder": info.model_uri}))
