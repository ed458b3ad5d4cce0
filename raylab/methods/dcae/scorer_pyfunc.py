"""The MLflow model of a deployed novelty detector (DCAE, plain AE), logged as code.

MLflow stores this file with the model and runs it on load, so loading unpickles nothing.
It is never imported as a module: :func:`raylab.methods.dcae.scorer.log_novelty_model`
passes its path.
"""

from __future__ import annotations

import warnings

import mlflow
from mlflow.pyfunc import PythonModel

from raylab.methods.dcae.scorer import NoveltyScorer

# The signature is given explicitly when the model is logged; MLflow's hint-based inference
# would only repeat it, and warns on every load.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class NoveltyDetectorModel(PythonModel):
    """``predict`` takes a DataFrame with an ``image`` column of encoded images and returns
    ``novelty_score`` (higher = more novel) and ``is_novel``."""

    def load_context(self, context) -> None:
        self.scorer = NoveltyScorer(context.artifacts["scorer"])

    def predict(self, context, model_input, params=None):
        return self.scorer.frame(self.scorer.score(model_input["image"].tolist()))


mlflow.models.set_model(NoveltyDetectorModel())
