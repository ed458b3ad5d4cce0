"""A Ray Tune + Optuna hyperparameter search that a trial runs inside itself.

The runner's ``--search`` (:mod:`raylab.experiment.executors`) searches over a whole trial;
some methods instead select hyperparameters *within* a trial, on validation data, as part
of their protocol (NNGuide picks k and its bank ratio this way before reporting on test
sets). :func:`optuna_search` is that inner search, so the Tune and Optuna wiring lives in
the experiment layer and a method package only supplies the objective and the space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class SearchTrial:
    """One search trial: its sampled parameters and the metrics its objective returned."""

    params: Mapping[str, Any]
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class SearchOutcome:
    """Every trial in Tune's order, and the best one by the search's metric and mode."""

    best: SearchTrial
    trials: Sequence[SearchTrial]


def _report(params: dict[str, Any], *, objective: Callable[[Mapping[str, Any]], Mapping[str, float]]) -> None:
    from ray import tune

    tune.report(dict(objective(params)))


def optuna_search(
    objective: Callable[[Mapping[str, Any]], Mapping[str, float]],
    space: Any,
    *,
    metric: str,
    mode: Literal["max", "min"],
    num_samples: int,
    seed: int,
    name: str,
    storage_path: str,
    points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
    max_concurrent: int | None = None,
    reuse_actors: bool = False,
) -> SearchOutcome:
    """Run ``num_samples`` Optuna (TPE) trials of ``objective(params) -> metrics`` on Ray Tune.

    ``space``: what :class:`~ray.tune.search.optuna.OptunaSearch` takes, a mapping of Optuna
    distributions or a define-by-run callable (picklable: Tune checkpoints it).
    ``objective`` is shipped to the trials once through the object store (it may close
    over large arrays). ``points_to_evaluate`` are tried first (e.g. the method's defaults).
    A failed trial fails the search, naming the first error.
    """
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    if num_samples < 1:
        raise ValueError(f"optuna_search {name}: num_samples must be >= 1, got {num_samples}")
    searcher = OptunaSearch(
        space=space,
        metric=metric,
        mode=mode,
        seed=seed,
        points_to_evaluate=[dict(p) for p in points_to_evaluate] if points_to_evaluate else None,
    )
    tuner = tune.Tuner(
        tune.with_parameters(_report, objective=objective),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=0),
    )
    grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} trial(s) of search {name} failed; first: {grid.errors[0]!r}")
    best = grid.get_best_result(metric=metric, mode=mode)
    return SearchOutcome(
        best=SearchTrial(dict(best.config), dict(best.metrics)),
        trials=[SearchTrial(dict(result.config), dict(result.metrics)) for result in grid],
    )
