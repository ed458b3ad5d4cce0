"""The MLflow model of a deployed anomaly detector, logged as code.

MLflow stores this file with the model and runs it on load, so loading a raylab model
unpickles nothing (a pickled ``PythonModel`` would execute whatever a store handed back).
It is never imported as a module: :func:`raylab.tasks.anomaly.scorer.log_anomaly_model`
passes its path.
"""

from __future__ import annotations

import warnings

import mlflow
from mlflow.pyfunc import PythonModel

from raylab.tasks.anomaly.scorer import AnomalyScorer

# The model's signature is given explicitly when it is logged (an ``image`` column of bytes);
# MLflow's hint-based schema inference would only repeat it, and warns on every load.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class AnomalyDetectorModel(PythonModel):
    """``predict`` takes a DataFrame with an ``image`` column of encoded images (PNG, JPEG, ...)
    and returns ``image_score`` and ``is_anomalous`` (and ``anomaly_map`` with ``with_maps``)."""

    def load_context(self, context) -> None:
        self.scorer = AnomalyScorer(context.artifacts["scorer"])

    def predict(self, context, model_input, params=None):
        prediction = self.scorer.score(
            model_input["image"].tolist(), with_maps=bool((params or {}).get("with_maps", False))
        )
        return self.scorer.frame(prediction)


mlflow.models.set_model(AnomalyDetectorModel())
