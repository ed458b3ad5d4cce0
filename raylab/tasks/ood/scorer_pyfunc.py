"""The MLflow model of a deployed OOD detector (classifier + NNGuide, KNN, energy, ...), logged
as code: MLflow runs this file on load, so loading unpickles nothing. Never imported as a
module: :func:`raylab.tasks.ood.scorer.log_ood_model` passes its path.
"""

from __future__ import annotations

import warnings

import mlflow
from mlflow.pyfunc import PythonModel

from raylab.tasks.ood.scorer import OODScorer

# The signature is given explicitly when the model is logged; MLflow's hint-based inference
# would only repeat it, and warns on every load.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class OODDetectorModel(PythonModel):
    """``predict`` takes a DataFrame with an ``image`` column of encoded images and returns
    ``ood_score`` (higher = more OOD), ``is_ood`` and ``predicted_class`` (an ID class)."""

    def load_context(self, context) -> None:
        self.scorer = OODScorer(context.artifacts["scorer"])

    def predict(self, context, model_input, params=None):
        return self.scorer.frame(*self.scorer.score(model_input["image"].tolist()))


mlflow.models.set_model(OODDetectorModel())
