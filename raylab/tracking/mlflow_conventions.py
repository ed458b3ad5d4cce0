"""MLflow conventions every raylab job follows, so runs of all methods compare in one UI.

* Tracking URI: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
  directory (artifacts beside it in ``mlartifacts/``), the laptop default and MLflow's own,
  so a plain ``mlflow ui`` there shows the runs; ``$RAYLAB_HOME`` or, under
  ``ray job submit``, ``~/.raylab`` instead of the cwd (``raylab/storage.py``). Readers
  also find the ``mlruns.db`` older raylab versions wrote.
* One experiment per job (``raylab/<job>``), tagged as model development so MLflow's UI
  opens it on its runs; a sweep is a parent run with nested runs.
* Every run carries MLflow's own context tags (user, source name and type, git commit), as
  ``mlflow.start_run`` would set them: raylab creates runs through ``MlflowClient``, which
  sets none.
* Params are flattened (``stage1.bootstraps``) so configs of any depth become comparable
  columns; tags say what a run is (method, dataset, noise ratio, seed, commit, version).
* No run stays RUNNING after its driver died: every run records its driver
  (``raylab.driver`` = host:pid); starting a top-level run of the same name marks runs of
  dead drivers on this host (and their nested runs) KILLED, and ``resume=True`` (a
  restarted or repeated sweep of the same identity) reopens its parent run, interrupted or
  finished, so one sweep keeps one parent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import raylab

DEFAULT_DB = "mlflow.db"  # = raylab.storage.DB_NAME
ARTIFACT_DIR = "mlartifacts"
MAX_PARAM_LENGTH = 6000
# The experiment tag MLflow's UI reads to choose an experiment's page (3.x: its ExperimentKind
# enum in the web app, set by the kind selector through setExperimentTag). Without it the UI
# infers a kind, and an experiment of a sweep's runs can open on an empty GenAI overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The context tags mlflow.start_run resolves (mlflow.tracking.context) that a nested run takes
# from its parent: it is created in a trial process, whose own argv is Ray's worker script.
CONTEXT_TAGS = (
    "mlflow.user",
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
    "mlflow.source.git.branch",
    "mlflow.source.git.repoURL",
)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db`` with the root from
    :func:`raylab.storage.default_root` (the cwd on a laptop, never Ray's session folder)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from raylab.storage import default_root

    return f"sqlite:///{default_root().tracking_db}"


def configure() -> str:
    """Point MLflow at raylab's tracking URI (idempotent); returns the URI."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(job: str) -> str:
    """The id of ``raylab/<job>``, created with a local artifact root when the store is SQLite
    and tagged with its kind (see :func:`mark_experiment_kind`)."""
    import mlflow

    uri = configure()
    name = job if job.startswith("raylab/") else f"raylab/{job}"
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        mark_experiment_kind(existing)
        return existing.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACT_DIR).as_uri()
    try:
        return mlflow.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except Exception:  # created concurrently by another trial
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        mark_experiment_kind(found)
        return found.experiment_id


def mark_experiment_kind(experiment: Any) -> None:
    """Tag an experiment created before raylab set its kind, so MLflow's UI opens it on its
    runs (model training) instead of guessing. A kind already there is kept: it may have been
    chosen in the UI. One tag write, once per experiment."""
    import mlflow

    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


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
    """The checkout's commit; else ``RAYLAB_GIT_COMMIT`` (set by the cluster image's build,
    whose context has no ``.git``); else ``"unknown"``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(raylab.__file__).parent,
            timeout=5,
        ).stdout.strip()
        if commit:
            return commit
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("RAYLAB_GIT_COMMIT", "").strip() or "unknown"


def context_tags(commit: str | None = None) -> dict[str, str]:
    """The tags ``mlflow.start_run`` would give a run started by this process (MLflow's context
    registry: ``mlflow.user``, ``mlflow.source.name`` = the entry point, git branch and
    remote), with two corrections: ``mlflow.source.type`` is ``JOB`` for a ``ray job submit``
    driver (MLflow says ``LOCAL`` outside Databricks), and ``mlflow.source.git.commit`` is the
    commit of raylab's code (:func:`git_commit`: also known in the cluster image, which has
    no ``.git`` for MLflow to read), the same as ``raylab.git_commit`` (pass it as ``commit``
    when known: finding it runs ``git``)."""
    from mlflow.tracking.context.registry import resolve_tags

    from raylab.storage import RAY_JOB_DRIVER_ENV

    tags = {k: str(v) for k, v in resolve_tags().items()}
    tags["mlflow.source.type"] = "JOB" if os.environ.get(RAY_JOB_DRIVER_ENV) else "LOCAL"
    commit = commit or git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def _inherited_context(client: Any, parent_run_id: str) -> dict[str, str]:
    """The parent run's context tags: a nested run belongs to the job its parent's driver runs,
    while its own process may be a Ray worker (whose entry point is Ray's worker script)."""
    parent_tags = client.get_run(parent_run_id).data.tags
    return {k: parent_tags[k] for k in CONTEXT_TAGS if k in parent_tags}


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
    resume: bool = False,
) -> Iterator[Any]:
    """Start a run (nested under ``parent_run_id`` when given) and always end it.

    A failing body marks the run FAILED instead of leaving it RUNNING in the UI. A top-level
    run first closes orphans of the same name (see :func:`close_orphaned_runs`); with
    ``resume=True`` it reopens the latest ended run of that name instead of creating
    one (a restarted sweep keeps its parent run, and its finished trials stay nested in it).
    The run gets MLflow's context tags (:func:`context_tags`; a nested run its parent's).
    """
    import mlflow

    exp = experiment_id(job)
    client = mlflow.MlflowClient()
    raylab_tags = run_tags(**(tags or {}))
    run_tags_ = context_tags(raylab_tags["raylab.git_commit"])
    if parent_run_id:
        run_tags_.update(_inherited_context(client, parent_run_id))
    run_tags_.update(raylab_tags)
    run_tags_[DRIVER_TAG] = driver_id()
    if parent_run_id:
        run_tags_["mlflow.parentRunId"] = parent_run_id
    previous = None
    if not parent_run_id:
        close_orphaned_runs(client, exp, run_name)
        if resume:
            previous = _latest_resumable(client, exp, run_name)
    if previous is not None:
        run = previous
        client.update_run(run.info.run_id, status="RUNNING")
        restarts = int(run.data.tags.get(RESTARTS_TAG, "0")) + 1
        for key, value in {**run_tags_, RESTARTS_TAG: str(restarts)}.items():
            client.set_tag(run.info.run_id, key, value)
    else:
        run = client.create_run(exp, run_name=run_name, tags=run_tags_)
    status = "FAILED"
    try:
        if params is not None:
            items = list(flatten_params(params).items())
            if previous is not None:
                _check_same_params(previous, dict(items))
                items = [(k, v) for k, v in items if k not in previous.data.params]
            for start in range(0, len(items), 100):
                client.log_batch(
                    run.info.run_id,
                    params=[mlflow.entities.Param(k, v) for k, v in items[start : start + 100]],
                )
        yield TrackedRun(client, run.info.run_id, {"job": job.removeprefix("raylab/"), **(tags or {})})
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status=status)


DRIVER_TAG = "raylab.driver"
RESTARTS_TAG = "raylab.restarts"


def driver_id() -> str:
    """``host:pid`` of this process: lets a later run tell whether a RUNNING run is orphaned."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _driver_alive(driver: str | None) -> bool | None:
    """True/False for a driver on this host; None where it cannot be known (another host)."""
    if not driver or ":" not in driver:
        return None
    host, _, pid = driver.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_named(client: Any, experiment: str, run_name: str, status: str | None = None) -> list[Any]:
    quote = '"' if "'" in run_name else "'"
    query = f"attributes.run_name = {quote}{run_name}{quote}" + (
        f" and attributes.status = '{status}'" if status else ""
    )
    runs = client.search_runs(
        [experiment], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1000
    )
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def close_orphaned_runs(client: Any, experiment: str, run_name: str) -> list[str]:
    """Mark RUNNING top-level runs named ``run_name`` whose driver process is gone KILLED,
    together with their RUNNING nested runs; returns the ids marked.

    A driver killed hard (SIGKILL, a lost node, ``ray job stop`` after its grace period)
    cannot end its own runs. A run whose driver is alive is running now and is left alone;
    runs whose driver lived on another host cannot be checked from here and are left alone
    with a warning.
    """
    closed: list[str] = []
    for run in _runs_named(client, experiment, run_name, "RUNNING"):
        alive = _driver_alive(run.data.tags.get(DRIVER_TAG))
        if alive:
            continue
        if alive is None:
            warnings.warn(
                f"MLflow run {run_name!r} ({run.info.run_id}) is RUNNING under driver "
                f"{run.data.tags.get(DRIVER_TAG, 'unknown')}, which cannot be checked from this host",
                stacklevel=3,
            )
            continue
        closed.extend(_kill_tree(client, experiment, run.info.run_id))
    return closed


def _kill_tree(client: Any, experiment: str, run_id: str) -> list[str]:
    children = client.search_runs(
        [experiment],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
        max_results=10000,
    )
    closed = [c for child in children for c in _kill_tree(client, experiment, child.info.run_id)]
    client.set_terminated(run_id, status="KILLED")
    return [*closed, run_id]


def _latest_resumable(client: Any, experiment: str, run_name: str) -> Any | None:
    """The latest top-level run of that name if it ended (interrupted, or finished: a rerun of a
    finished sweep with the same identity keeps its one parent and its nested runs)."""
    for run in _runs_named(client, experiment, run_name):
        if run.info.status == "FINISHED":
            return run
        if run.info.status in ("FAILED", "KILLED"):
            # Nested runs an interrupted driver left RUNNING (its own status may be FAILED).
            for child in client.search_runs(
                [experiment],
                filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}' and attributes.status = 'RUNNING'",
            ):
                _kill_tree(client, experiment, child.info.run_id)
            return run
        return None
    return None


def _check_same_params(run: Any, params: Mapping[str, str]) -> None:
    changed = {
        k: (run.data.params[k], v) for k, v in params.items() if k in run.data.params and run.data.params[k] != v
    }
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items())[:5])
        raise ValueError(
            f"cannot resume MLflow run {run.info.run_name!r} ({run.info.run_id}) with a different configuration "
            f"({detail}); use a new run name"
        )


@dataclasses.dataclass
class TrackedRun:
    """A thin handle that logs to one run without touching MLflow's global active-run state.

    Working through ``MlflowClient`` with explicit run ids keeps nested runs and concurrent
    trials in one process from logging into each other's runs.
    """

    client: Any
    run_id: str
    # What the run is (job, method, dataset, noise ratio, seed): the labels its metrics
    # carry when they are also exported to Prometheus (``raylab.metrics``).
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        from raylab.metrics import record_run_metrics

        record_run_metrics(self.labels, metrics)

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
