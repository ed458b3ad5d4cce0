"""The experiment layer: every job a registered :class:`Experiment` on one runner."""

from raylab.experiment.registry import experiment_names, get_experiment
from raylab.experiment.runner import Prepared, main, run
from raylab.experiment.spec import Experiment, Report, Request, Row, SearchSpace, Setting, TrialContext, TrialResult

__all__ = [
    "Experiment",
    "Prepared",
    "Report",
    "Request",
    "Row",
    "SearchSpace",
    "Setting",
    "TrialContext",
    "TrialResult",
    "experiment_names",
    "get_experiment",
    "main",
    "run",
]
