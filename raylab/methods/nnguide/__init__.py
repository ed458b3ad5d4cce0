"""NNGuide (Park et al., ICCV 2023) and its baselines for OOD detection on classifier outputs.

* :mod:`.detectors`: MSP, MaxLogit, Energy, KNN, NNGuide, ReAct; ``fit_detector(config,
  source, head)`` -> fitted detector with ``confidence(outputs)`` (higher = more ID).
* :mod:`.classifiers`: CIFAR ResNets (strict-loading the shared checkpoints), timm
  classifiers, a small CNN; :mod:`.training`: training one with Ray Train.
* :mod:`.features`: features and logits of a corpus, once, with Ray Data (cached).
* :mod:`.benchmark`: the protocol (roles, the one score negation, metrics);
  :mod:`.tuning`: hyperparameter selection on validation data (the shared Tune + Optuna search);
  :mod:`.experiment`: the ``nnguide_eval`` job.

The package exports the typed configs only (importable without torch).
"""

from raylab.methods.nnguide.config import (
    EnergyConfig,
    KNNConfig,
    MaxLogitConfig,
    MSPConfig,
    NNGuideConfig,
    NNGuideEvalConfig,
)

__all__ = [
    "EnergyConfig",
    "KNNConfig",
    "MSPConfig",
    "MaxLogitConfig",
    "NNGuideConfig",
    "NNGuideEvalConfig",
]
