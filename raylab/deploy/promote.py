"""``raylab promote``: register a sweep's best model in the MLflow Model Registry under an alias.

The best run is chosen among a job's finished runs that logged deployable models (their
``raylab.models`` tag), by one metric, optionally restricted to a setting (``noise_ratio=0.4``,
``method=meds``) and one class. The new version records where it came from (sweep, run,
setting, metric and its value) as tags, so the registry alone answers "why this model";
serving ``models:/<name>@<alias>`` then follows the alias when a later promotion moves it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raylab.deploy.logged_models import MODELS_TAG


@dataclass(frozen=True)
class Promotion:
    name: str
    alias: str
    version: str
    model_uri: str
    run_id: str
    metric: str
    value: float

    def registry_uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def parse_filters(items: Sequence[str]) -> dict[str, str]:
    """``["noise_ratio=0.4", "method=meds"]`` -> a tag filter; fails naming a malformed item."""
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--where {item!r}: expected KEY=VALUE, e.g. noise_ratio=0.4")
        filters[key.strip()] = value.strip()
    return filters


def best_run(
    experiment: str,
    metric: str,
    *,
    mode: str = "max",
    where: Mapping[str, str] | None = None,
    class_name: str | None = None,
):
    """The finished run with deployable models that is best by ``metric`` under ``where``."""
    import mlflow

    from raylab.report.runs import experiment_name

    if mode not in ("max", "min"):
        raise ValueError(f"--mode must be max or min, got {mode!r}")
    name = experiment_name(experiment)
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        raise LookupError(f"no MLflow experiment {name!r} in {mlflow.get_tracking_uri()}")
    clauses = ["attributes.status = 'FINISHED'", f"tags.`{MODELS_TAG}` != ''"]
    clauses += [f"tags.`raylab.{key}` = '{value}'" for key, value in (where or {}).items()]
    runs = mlflow.search_runs([found.experiment_id], filter_string=" and ".join(clauses), output_format="list")
    candidates = []
    for run in runs:
        value = run.data.metrics.get(metric)
        models = json.loads(run.data.tags[MODELS_TAG])
        if value is None or math.isnan(value) or (class_name is not None and class_name not in models):
            continue
        candidates.append((value, run))
    if not candidates:
        described = ", ".join(f"{k}={v}" for k, v in (where or {}).items()) or "no filter"
        raise LookupError(
            f"{name}: no finished run with models and metric {metric!r} "
            f"({described}{', class ' + class_name if class_name else ''})"
        )
    return (max if mode == "max" else min)(candidates, key=lambda pair: pair[0])


def promote(
    experiment: str,
    metric: str,
    *,
    name: str,
    alias: str = "champion",
    mode: str = "max",
    where: Mapping[str, str] | None = None,
    class_name: str | None = None,
) -> Promotion:
    import mlflow

    value, run = best_run(experiment, metric, mode=mode, where=where, class_name=class_name)
    models: dict[str, str] = json.loads(run.data.tags[MODELS_TAG])
    if class_name is None and len(models) > 1:
        raise ValueError(
            f"run {run.info.run_id} has one model per class ({', '.join(sorted(models))}): choose one with --class"
        )
    chosen_class = class_name or next(iter(models))
    setting = {
        k.removeprefix("raylab."): v
        for k, v in run.data.tags.items()
        if k.startswith("raylab.") and k not in (MODELS_TAG,)
    }
    tags: dict[str, Any] = {
        "raylab.experiment": experiment,
        "raylab.run_id": run.info.run_id,
        "raylab.metric": metric,
        "raylab.metric_value": repr(value),
        "raylab.class_name": chosen_class,
        "raylab.parent_run_id": run.data.tags.get("mlflow.parentRunId", ""),
        **{f"raylab.setting.{k}": v for k, v in setting.items() if k not in ("driver", "version", "git_commit")},
    }
    version = mlflow.register_model(models[chosen_class], name, tags=tags)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    return Promotion(name, alias, str(version.version), models[chosen_class], run.info.run_id, metric, float(value))
