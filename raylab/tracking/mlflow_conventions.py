"""MLflow conventions every raylab job follows, so runs of all methods compare in one UI.

* Tracking URI: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db`` in the working
  directory (artifacts beside it in ``mlartifacts/``), the laptop default.
* One experiment per job (``raylab/<job>``); a sweep is a parent run with nested runs.
* Params are flattened (``stage1.bootstraps``) so configs of any depth become comparable
  columns; tags say what a run is (method, dataset, noise ratio, seed, commit, version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import raylab

DEFAULT_DB = "mlruns.db"
ARTIFACT_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def configure() -> str:
    """Point MLflow at raylab's tracking URI (idempotent); returns the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(job: str) -> str:
    """The id of ``raylab/<job>``, created with a local artifact root when the store is SQLite."""
    import mlflow

    uri = configure()
    name = job if job.startswith("raylab/") else f"raylab/{job}"
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another trial
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Nested dataclasses / mappings -> ``{"a.b.c": "value"}`` (values stringified, clipped)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    flat: dict[str, str] = {}
    if isinstance(config, Mapping):
        for key, value in config.items():
            flat.update(flatten_params(value, f"{prefix}{key}."))
        return flat
    flat[prefix.rstrip(".")] = str(config)[:MAX_PARAM_LENGTH]
    return flat


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(raylab.__file__).parent, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(**tags: Any) -> dict[str, str]:
    """Standard tags plus the caller's (method, dataset, noise_ratio, seed, ...)."""
    base = {"raylab.version": raylab.__version__, "raylab.git_commit": git_commit()}
    base.update({f"raylab.{k}" if "." not in k else k: str(v) for k, v in tags.items() if v is not None})
    return base


@contextlib.contextmanager
def tracked_run(
    job: str,
    run_name: str,
    *,
    params: Any = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Any]:
    """Start a run (nested under ``parent_run_id`` when given) and always end it.

    A failing body marks the run FAILED instead of leaving it RUNNING in the UI.
    """
    import mlflow

    exp = experiment_id(job)
    run_tags_ = run_tags(**(tags or {}))
    if parent_run_id:
        run_tags_["mlflow.parentRunId"] = parent_run_id
    client = mlflow.MlflowClient()
    run = client.create_run(exp, run_name=run_name, tags=run_tags_)
    status = "FAILED"
    try:
        if params is not None:
            flat = flatten_params(params)
            items = list(flat.items())
            for start in range(0, len(items), 100):
                client.log_batch(
                    run.info.run_id,
                    params=[mlflow.entities.Param(k, v) for k, v in items[start : start + 100]],
                )
        yield TrackedRun(client, run.info.run_id)
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status=status)


@dataclasses.dataclass
class TrackedRun:
    """A thin handle that logs to one run without touching MLflow's global active-run state.

    Working through ``MlflowClient`` with explicit run ids keeps nested runs and concurrent
    trials in one process from logging into each other's runs.
    """

    client: Any
    run_id: str

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        now = int(time.time() * 1000)
        entries = [
            mlflow.entities.Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        if entries:
            self.client.log_batch(self.run_id, metrics=entries)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, **tags: Any) -> None:
        for key, value in run_tags(**tags).items():
            if key.startswith("raylab.") and key not in ("raylab.version", "raylab.git_commit"):
                self.client.set_tag(self.run_id, key, value)
