"""What an experiment is: a typed config, setting axes, and a trial that turns one setting into rows.

A method package describes its job as an :class:`Experiment` and registers it; the runner
(:mod:`raylab.experiment.runner`) owns everything around the trial: the command line, the
config story, validation before Ray starts, identity, MLflow's parent run, the executor,
the summary. The trial sees only a :class:`Setting` (one point of the grid, plus sampled
search parameters), the shared inputs, the typed config and a frozen :class:`TrialContext`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

C = TypeVar("C")

Executor = Literal["tune", "tasks", "driver"]


@dataclass(frozen=True)
class Setting:
    """One point of the experiment's grid (axis -> value), plus a search trial's sampled parameters."""

    values: Mapping[str, Any]
    search: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, axis: str) -> Any:
        return self.values[axis]

    def tag(self) -> str:
        """Short readable label: ``nr0.2-s0`` style, used in run names beside the hash."""
        parts = [
            f"{_ABBREVIATIONS.get(k, k)}{v:g}" if isinstance(v, float) else f"{_ABBREVIATIONS.get(k, k)}{v}"
            for k, v in self.values.items()
        ]
        return "-".join(parts)


_ABBREVIATIONS = {
    "noise_ratio": "nr",
    "injected_in_test": "inj-",
    "seed": "s",
    "protocol": "",
    "normal_class": "c",
    "fold": "f",
    "method": "",
}


@dataclass(frozen=True)
class Row:
    """One result: a method on one setting. ``setting`` is a mapping, so every experiment keeps
    its own axes (noise ratio, protocol, normal class, fold, ...) without placeholders."""

    method: str
    dataset: str
    setting: Mapping[str, Any]
    metrics: Mapping[str, float]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        metrics = {
            k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
            for k, v in self.metrics.items()
        }
        return {"method": self.method, "dataset": self.dataset, **self.setting, "metrics": metrics, **self.extra}


@dataclass(frozen=True)
class TrialResult:
    rows: Sequence[Row]
    # What Tune ranks search trials by (and ASHA's time attribute); empty for grid trials.
    objective: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial may know about where it runs; frozen, typed, picklable."""

    experiment: str
    dataset: str
    data_root: str | None
    sweep: str
    trial_id: str
    parent_run_id: str
    tracking_uri: str
    storage_path: str
    quick: bool
    executor: Executor

    def run_name(self, *parts: str) -> str:
        """A Ray Train run name unique to this trial's inputs: resumes only what it would recompute."""
        return "-".join([self.sweep, self.trial_id, *parts])

    @contextlib.contextmanager
    def nested_run(
        self, name: str, *, params: Any = None, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None
    ) -> Iterator[Any]:
        """An MLflow run nested under the sweep's parent run (or under ``parent_run_id``)."""
        import mlflow

        from raylab.tracking import tracked_run

        mlflow.set_tracking_uri(self.tracking_uri)
        with tracked_run(
            self.experiment,
            name,
            params=params,
            tags={"dataset": self.dataset, **(tags or {})},
            parent_run_id=parent_run_id or self.parent_run_id,
        ) as run:
            yield run

    def report(self, metrics: Mapping[str, float]) -> None:
        """An intermediate result (e.g. per stage, for ASHA); only Tune trials record it."""
        if self.executor == "tune":
            from ray import tune

            tune.report(dict(metrics))


@dataclass(frozen=True)
class SearchSpace:
    """A hyperparameter search: Tune distributions, the objective, and ASHA over ``time_attr``."""

    space: Callable[[], Mapping[str, Any]]
    metric: str
    mode: Literal["max", "min"] = "max"
    time_attr: str | None = None
    max_t: int = 1
    grace_period: int = 1  # ASHA compares trials from this step on; every trial runs at least this far
    help: str = "run N Optuna trials per setting"


@dataclass(frozen=True)
class Report:
    """What a finished sweep shows: the printed text and files for the parent run."""

    text: str
    tables: Mapping[str, str] = field(default_factory=dict)  # artifact file name -> text (CSV, ...)
    metrics: Mapping[str, float] = field(default_factory=dict)
    figures: Callable[[Any], list[Any]] | None = None  # scratch folder -> paths to log
    table: Any = None  # the aggregated table (a DataFrame), returned to Python callers


@dataclass(frozen=True)
class Request(Generic[C]):
    """A resolved, validated run: what the runner passes to the experiment's hooks."""

    config: C
    dataset: str
    data_root: str | None
    quick: bool
    args: argparse.Namespace


@dataclass(frozen=True)
class Experiment(Generic[C]):
    """A registered job. The hooks, in the order the runner calls them:

    ``axes(request)`` -> axis -> values (validated, before Ray); ``check(request)`` -> more
    input checks before Ray (data root, classes); ``prepare(request)`` -> shared inputs
    (corpus, cached features), after Ray starts; ``trial(setting, inputs, config, context)``
    -> :class:`TrialResult` per setting; ``report(rows, request)`` -> :class:`Report`.
    """

    name: str
    description: str
    config_type: type[C]
    profiles: Mapping[str, Callable[[], C]]
    default_dataset: str
    metrics_help: str
    axes: Callable[[Request[C]], Mapping[str, Sequence[Any]]]
    prepare: Callable[[Request[C]], Any]
    trial: Callable[[Setting, Any, C, TrialContext], TrialResult]
    report: Callable[[Sequence[Row], Request[C]], Report]
    executor: Executor = "tune"
    config_folder: str | None = None  # package data folder of dataset overlays: configs/<folder>/<dataset>.yaml
    default_profile: str = "cpu"
    quick: Callable[[C], C] | None = None  # the `quick` profile: this experiment's reductions
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    apply_arguments: Callable[[C, argparse.Namespace], C] | None = None
    check: Callable[[Request[C]], None] | None = None
    search: SearchSpace | None = None
    # Config keys the setting decides (a value there would be silently overwritten): refused.
    setting_keys: tuple[str, ...] = ()
    # What each trial's own process holds (Tune trial or Ray task); its Train workers ask for theirs.
    trial_resources: Callable[[C], Mapping[str, float]] = lambda config: {"CPU": 1.0}
    # Concurrent trials: ``resources.max_concurrent_trials``, else a limit the config declares,
    # else auto: the local CPUs over the CPUs a running trial keeps busy (its Train workers).
    max_concurrent: Callable[[C], int | None] = lambda config: None
    trial_cpus: Callable[[C], float] = lambda config: 1.0
    summary_extra: Callable[[Request[C], Sequence[Row]], Mapping[str, Any]] | None = None
    # ``--smoke``: the budget this experiment's paper-size configs shrink to (budget keys only,
    # see :mod:`raylab.experiment.budget`), applied over ``--config`` and under ``--set``.
    smoke: Mapping[str, Any] = field(default_factory=dict)
    # The budget that grows the cost model's work unit from the smoke's (applied over
    # ``smoke``); ``benchmarks/full_size_costs.py`` times both to separate seconds per unit of
    # work from start-up. Empty: the smoke's step keys doubled.
    smoke_scaled: Mapping[str, Any] = field(default_factory=dict)
    # ``--dry-run``: the experiment's account of one trial's work (see :mod:`raylab.experiment.cost`).
    cost: Callable[[Request[C]], Any] | None = None
