"""Selecting NNGuide's k, bank ratio and ReAct percentile with Ray Tune and Optuna (TPE).

Selection never sees a reported test set: every trial fits on ``id_fit`` (the ID training
split minus the held-out validation images) and is scored on ``id_val`` against the one
OOD set designated as validation-OOD; the selected hyperparameters are then refitted on the
whole ``id_train`` and reported on ``id_test`` against the *other* OOD sets.

The search space is define-by-run (an Optuna callable), so it can be conditional: the bank
ratio is drawn first (log-uniform), then ``k`` from ``[1, min(k_max, bank size)]`` (log
scale), so every trial is a valid detector; ReAct is a yes/no choice and its percentile is
drawn only when it is on. The first trial is the official default (k = 10, 1% bank, no
ReAct). The search itself (Tune trials, the Optuna searcher) is the experiment layer's
:func:`raylab.experiment.search.optuna_search`; this module supplies the space and the
validation objective.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raylab.eval.ood import ood_metrics
from raylab.methods.nnguide.config import SweepConfig
from raylab.tasks.ood.benchmark import ood_scores
from raylab.tasks.ood.config import NNGuideConfig
from raylab.tasks.ood.detectors import LinearHead, ModelOutputs, fit_detector

METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")


@dataclass
class SweepResult:
    """The selected config, its validation metrics, and every trial (params + validation metrics)."""

    best: NNGuideConfig
    best_metrics: dict[str, float]
    trials: pd.DataFrame


def trial_config(params: dict[str, Any], base_score: str, seed: int) -> NNGuideConfig:
    react = params.get("react", False)
    return NNGuideConfig(
        k=int(params["k"]),
        bank_ratio=float(params["bank_ratio"]),
        base_score=base_score,  # type: ignore[arg-type]
        bank_seed=seed,
        react_percentile=float(params["react_percentile"]) if react else None,
    )


def validation_metrics(
    config: NNGuideConfig, fit: ModelOutputs, val_id: ModelOutputs, val_ood: ModelOutputs, head: LinearHead
) -> dict[str, float]:
    detector = fit_detector(config, fit, head)
    metrics = ood_metrics(ood_scores(detector, val_id), ood_scores(detector, val_ood))
    return {key: metrics[key] for key in METRICS}


@dataclass(frozen=True)
class SearchSpace:
    """The define-by-run Optuna space for a fit set of ``n_fit`` samples (picklable, for Tune's
    experiment checkpoints)."""

    n_fit: int
    config: SweepConfig

    def __call__(self, trial) -> None:
        low, high = self.config.bank_ratio_range
        ratio = trial.suggest_float("bank_ratio", low, high, log=True)
        bank_size = int(np.floor(ratio * self.n_fit + 1e-9))
        trial.suggest_int("k", 1, max(1, min(self.config.k_max, bank_size)), log=True)
        if trial.suggest_categorical("react", [False, True]):
            trial.suggest_float("react_percentile", *self.config.react_percentile_range)


def sweep_nnguide(
    fit: ModelOutputs,
    val_id: ModelOutputs,
    val_ood: ModelOutputs,
    head: LinearHead,
    config: SweepConfig,
    *,
    name: str,
    storage_path: str,
    num_samples: int | None = None,
    seed: int = 0,
) -> SweepResult:
    """Search NNGuide's hyperparameters (the shared Tune + Optuna search); the best is selected on validation only."""
    from raylab.experiment.search import optuna_search

    low = config.bank_ratio_range[0]
    if int(np.floor(low * len(fit) + 1e-9)) < 1:
        raise ValueError(f"bank_ratio_range starts at {low}: a bank of zero entries for {len(fit)} fit samples")
    mode = "max" if config.metric == "auroc" else "min"
    default = NNGuideConfig()
    objective = functools.partial(
        _objective, fit=fit, val_id=val_id, val_ood=val_ood, head=head, base_score=config.base_score, seed=seed
    )
    outcome = optuna_search(
        objective,
        SearchSpace(len(fit), config),
        metric=config.metric,
        mode=mode,
        num_samples=num_samples or config.num_samples,
        seed=config.seed + seed,
        name=name,
        storage_path=storage_path,
        points_to_evaluate=[{"bank_ratio": max(default.bank_ratio, low), "k": default.k, "react": False}],
        max_concurrent=config.max_concurrent,
        reuse_actors=True,
    )
    rows = []
    for trial in outcome.trials:
        row = {key: trial.params.get(key) for key in ("bank_ratio", "k", "react", "react_percentile")}
        row.update({key: trial.metrics.get(key) for key in METRICS})
        rows.append(row)
    trials = pd.DataFrame(rows).sort_values(config.metric, ascending=(mode == "min"), ignore_index=True)
    return SweepResult(
        best=trial_config(outcome.best.params, config.base_score, seed),
        best_metrics={key: float(outcome.best.metrics[key]) for key in METRICS},
        trials=trials,
    )


def _objective(params, *, fit, val_id, val_ood, head, base_score, seed) -> dict[str, float]:
    return validation_metrics(trial_config(params, base_score, seed), fit, val_id, val_ood, head)


def describe(config: NNGuideConfig) -> dict[str, Any]:
    """The swept fields of ``config``, for logging."""
    fields = dataclasses.asdict(config)
    return {key: fields[key] for key in ("k", "bank_ratio", "react_percentile", "base_score")}
