"""Read a sweep back from MLflow: its parent run and the nested runs under it, as a table.

Every raylab job logs a parent run per sweep (with its experiment's setting axes as
``axes.*`` params) and a nested run per method and setting, tagged ``raylab.method`` and
``raylab.<axis>`` (see ``raylab.tracking``). This module turns those runs into one row per
finished nested run, with a column per axis and ``param.*`` and ``metric.*`` columns, which
the comparison report plots. It works on any tracking URI
(the SQLite file of a laptop or an ``mlflow server``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

# The axes of sweeps whose parent run predates listing them (``axes.*`` params).
LEGACY_AXES = ("noise_ratio", "injected_in_test", "seed")


@dataclass
class SweepRuns:
    experiment: str
    parent: Any  # mlflow.entities.Run
    runs: pd.DataFrame  # one row per finished nested run
    artifacts: dict[str, list[str]] = field(default_factory=dict)  # run id -> artifact paths
    axes: list[str] = field(default_factory=lambda: list(LEGACY_AXES))  # the experiment's setting axes


def setting_axes(parent: Any) -> list[str]:
    """The setting axes the sweep's experiment declared: its parent run logs each as an
    ``axes.<name>`` param (noise ratio and protocol for the anomaly jobs, normal class for
    DCAE, fold for CKD, ...), and every nested run carries its values as ``raylab.<name>`` tags."""
    declared = sorted(key.removeprefix("axes.") for key in parent.data.params if key.startswith("axes."))
    return declared or list(LEGACY_AXES)


def experiment_name(name: str) -> str:
    """``meds_sweep`` and ``raylab/meds_sweep`` name the same experiment."""
    return name if name.startswith("raylab/") or "/" in name else f"raylab/{name}"


def load_sweep(experiment: str, *, parent: str | None = None, tracking_uri: str | None = None) -> SweepRuns:
    """The nested runs of one sweep: ``parent`` (a run name, or an id or its first 6+
    characters), else the latest parent run of the experiment that has nested runs."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    name = experiment_name(experiment)
    found = client.get_experiment_by_name(name)
    if found is None:
        known = sorted(e.name for e in client.search_experiments())
        raise LookupError(f"no MLflow experiment {name!r} at {client.tracking_uri}; experiments there: {known}")
    every = _search_all(client, found.experiment_id)
    by_parent: dict[str, list[Any]] = {}
    for run in every:
        parent_id = run.data.tags.get("mlflow.parentRunId")
        if parent_id:
            by_parent.setdefault(parent_id, []).append(run)
    tops = [r for r in every if "mlflow.parentRunId" not in r.data.tags and r.info.run_id in by_parent]
    if parent is not None:
        tops = [r for r in tops if parent == r.info.run_name or (len(parent) >= 6 and r.info.run_id.startswith(parent))]
        if not tops:
            raise LookupError(f"experiment {name!r} has no parent run named {parent!r} with nested runs")
    if not tops:
        raise LookupError(f"experiment {name!r} has no sweep (a parent run with nested runs) yet")
    chosen = max(tops, key=lambda r: r.info.start_time)
    nested = [r for r in _descendants(chosen.info.run_id, by_parent) if r.info.status == "FINISHED"]
    axes = setting_axes(chosen)
    rows = []
    for run in nested:
        row: dict[str, Any] = {"run_id": run.info.run_id, "run_name": run.info.run_name}
        for tag in dict.fromkeys(["method", "dataset", *axes]):
            row[tag] = _number(run.data.tags.get(f"raylab.{tag}"))
        row.update({f"param.{k}": _number(v) for k, v in run.data.params.items()})
        row.update({f"metric.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    artifacts = {run.info.run_id: _list_artifacts(client, run.info.run_id) for run in nested}
    return SweepRuns(name, chosen, pd.DataFrame(rows), artifacts, axes)


def _search_all(client: Any, experiment_id: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _descendants(run_id: str, by_parent: dict[str, list[Any]]) -> list[Any]:
    out = []
    for child in by_parent.get(run_id, []):
        out.append(child)
        out.extend(_descendants(child.info.run_id, by_parent))
    return out


def _number(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _list_artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            if not item.path.startswith("model"):  # saved models: nothing to plot
                found.extend(_list_artifacts(client, run_id, item.path))
        else:
            found.append(item.path)
    return found


def download_artifact(run_id: str, path: str, *, tracking_uri: str | None = None) -> bytes:
    import os

    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file otherwise

    with tempfile.TemporaryDirectory() as scratch:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=scratch, tracking_uri=tracking_uri
        )
        return Path(local).read_bytes()
