"""NNGuide (Park et al., ICCV 2023) for OOD detection on classifier outputs: the job around the
OOD family's detectors.

* :mod:`raylab.tasks.ood` (the family): the detectors (MSP, MaxLogit, Energy, KNN, NNGuide,
  ReAct; ``fit_detector(config, source, head)`` -> a fitted detector with
  ``confidence(outputs)``, higher = more ID), their configs and registry, the benchmark
  protocol (roles, the one score negation, metrics), the classifiers every detector reads
  (CIFAR ResNets strict-loading the shared checkpoints, timm classifiers, a small CNN), their
  features and logits of a corpus, once, with Ray Data (cached), and the deployable scorer.
* :mod:`.training`: training a classifier with Ray Train, where no pretrained one exists.
* :mod:`.tuning`: hyperparameter selection on validation data (the shared Tune + Optuna
  search); :mod:`.experiment`: the ``nnguide_eval`` job.

The package exports the typed configs only (importable without torch).
"""

from raylab.methods.nnguide.config import NNGuideEvalConfig
from raylab.tasks.ood.config import EnergyConfig, KNNConfig, MaxLogitConfig, MSPConfig, NNGuideConfig

__all__ = [
    "EnergyConfig",
    "KNNConfig",
    "MSPConfig",
    "MaxLogitConfig",
    "NNGuideConfig",
    "NNGuideEvalConfig",
]
