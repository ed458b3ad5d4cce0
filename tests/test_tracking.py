"""Tests for raylab.tracking: MLflow conventions on a real MLflow (SQLite) store.

The store is the session's SQLite file (the ``isolated_outputs`` fixture); each test works in
an experiment of its own.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

import raylab
from raylab.storage import RAY_JOB_DRIVER_ENV
from raylab.tasks.anomaly.patchcore import PatchCoreConfig
from raylab.tracking import configure, experiment_id, flatten_params, run_tags, tracked_run, tracking_uri
from raylab.tracking.mlflow_conventions import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MAX_PARAM_LENGTH, git_commit


@dataclass
class Leaf:
    depth: int = 3
    sizes: tuple[int, ...] = (1, 2)


@dataclass
class Branch:
    leaf: Leaf = field(default_factory=Leaf)
    name: str = "b"
    extra: dict = field(default_factory=lambda: {"k": {"deep": 1.5}, "none": None})


def unique_job() -> str:
    return f"test-tracking-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def session_store(isolated_outputs):
    """The session's SQLite store (a fresh store per test would cost seconds of migrations);
    every test uses its own experiment, so tests never see each other's runs."""
    uri = tracking_uri()
    assert uri == f"sqlite:///{isolated_outputs / 'mlflow.db'}"
    return uri


def test_flatten_params_nested_dataclasses():
    flat = flatten_params(Branch())
    assert flat == {
        "leaf.depth": "3",
        "leaf.sizes": "(1, 2)",
        "name": "b",
        "extra.k.deep": "1.5",
        "extra.none": "None",
    }
    real = flatten_params(PatchCoreConfig())
    assert real["features.backbone.name"] == "efficientnet_lite0"
    assert real["features.backbone.out_indices"] == "(2, 3)"
    assert real["features.image_size"] == "224"
    assert real["coreset_ratio"] == "0.1"
    assert all(isinstance(v, str) for v in real.values())
    assert flatten_params({"a": 1}, prefix="job.") == {"job.a": "1"}
    assert len(flatten_params({"long": "x" * (MAX_PARAM_LENGTH + 50)})["long"]) == MAX_PARAM_LENGTH


def test_tracking_uri_default_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri() == "sqlite:////elsewhere/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # empty counts as unset
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_experiment_created_once_with_local_artifacts(session_store, isolated_outputs):
    job = unique_job()
    first = experiment_id(job)
    second = experiment_id(f"raylab/{job}")  # the prefixed name is the same experiment
    assert first == second
    client = mlflow.MlflowClient(session_store)
    found = client.search_experiments(filter_string=f"name = 'raylab/{job}'")
    assert [e.experiment_id for e in found] == [first]
    assert found[0].artifact_location == (isolated_outputs / "mlartifacts").as_uri()
    assert mlflow.get_tracking_uri() == session_store == configure()


def test_tracked_run_finishes_and_logs(session_store):
    job = unique_job()
    params = {f"p{i:03d}": i for i in range(250)}  # more than one log_batch of params
    with tracked_run(job, "ok", params=params, tags={"method": "patchcore", "seed": 3, "skipped": None}) as run:
        run.log_metrics({"image_auroc": 0.9, "pixel_auroc": math.nan, "aupro": None})
        run.log_text("hello", "notes/hello.txt")
        run.set_tags(dataset="magnetic_tile")
    client = mlflow.MlflowClient(session_store)
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.run_name == "ok"
    assert finished.data.metrics == {"image_auroc": 0.9}  # NaN and None are not logged
    assert len(finished.data.params) == 250 and finished.data.params["p249"] == "249"
    tags = finished.data.tags
    assert tags["raylab.method"] == "patchcore" and tags["raylab.seed"] == "3"
    assert tags["raylab.dataset"] == "magnetic_tile"
    assert "raylab.skipped" not in tags
    assert tags["raylab.version"] == raylab.__version__
    assert len(tags["raylab.git_commit"]) in (40, len("unknown"))
    local = Path(client.download_artifacts(run.run_id, "notes/hello.txt"))
    assert local.read_text() == "hello"


def test_tracked_run_marks_failed_runs(session_store):
    job = unique_job()
    with pytest.raises(ZeroDivisionError):
        with tracked_run(job, "parent") as parent:
            with tracked_run(job, "child", parent_run_id=parent.run_id) as child:
                parent.log_metrics({"started": 1.0})
                _ = 1 / 0
    client = mlflow.MlflowClient(session_store)
    assert client.get_run(child.run_id).info.status == "FAILED"
    assert client.get_run(parent.run_id).info.status == "FAILED"
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).data.metrics == {"started": 1.0}  # logged before the failure stays

    with tracked_run(job, "after") as after:
        pass
    runs = client.search_runs([experiment_id(job)])
    assert {r.info.run_name: r.info.status for r in runs} == {
        "parent": "FAILED",
        "child": "FAILED",
        "after": "FINISHED",
    }
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert after.run_id in {r.info.run_id for r in runs}


def test_tracked_run_with_unloggable_params_is_failed_not_running(session_store):
    job = unique_job()
    with pytest.raises(MlflowException):
        # MLflow rejects a param key with forbidden characters: the run must not stay RUNNING.
        with tracked_run(job, "bad-params", params={"bad key?!": 1}):
            pytest.fail("the body must not run when params cannot be logged")
    runs = mlflow.MlflowClient(session_store).search_runs([experiment_id(job)])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_run_tags_prefix_and_keep_dotted_keys():
    tags = run_tags(method="m", noise_ratio=0.1, **{"mlflow.note.content": "x"})
    assert tags["raylab.method"] == "m" and tags["raylab.noise_ratio"] == "0.1"
    assert tags["mlflow.note.content"] == "x"


def test_experiments_open_in_mlflows_model_training_view(session_store):
    client = mlflow.MlflowClient(session_store)
    created = client.get_experiment(experiment_id(unique_job()))
    assert created.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    # an experiment made before raylab set the kind is tagged when a job next uses it
    older = unique_job()
    client.create_experiment(f"raylab/{older}")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment_by_name(f"raylab/{older}").tags
    assert client.get_experiment(experiment_id(older)).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # a kind someone chose (in the UI's selector) is kept
    chosen = unique_job()
    client.create_experiment(f"raylab/{chosen}", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert client.get_experiment(experiment_id(chosen)).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_experiment_kind_is_what_the_installed_mlflow_ui_reads():
    """The tag is read by MLflow's web app only (no Python constant): check its bundle."""
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not bundle.is_dir():
        pytest.skip("this MLflow install has no web UI bundle (mlflow-skinny)")
    text = "".join(path.read_text(errors="ignore") for path in bundle.glob("*.js"))
    assert f'"{EXPERIMENT_KIND_TAG}"' in text
    assert f'CUSTOM_MODEL_DEVELOPMENT="{EXPERIMENT_KIND}"' in text


def test_runs_carry_mlflows_context_tags(session_store, monkeypatch):
    import getpass
    import sys

    job = unique_job()
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setattr(sys, "argv", ["jobs/probe_sweep.py", "--quick"])
    with tracked_run(job, "parent") as parent:
        # the trial process that makes a nested run is a Ray worker, with Ray's entry point
        monkeypatch.setattr(sys, "argv", ["/site-packages/ray/_private/workers/default_worker.py"])
        with tracked_run(job, "child", parent_run_id=parent.run_id) as child:
            pass
    client = mlflow.MlflowClient(session_store)
    commit = git_commit()
    for run_id in (parent.run_id, child.run_id):
        tags = client.get_run(run_id).data.tags
        assert tags["mlflow.user"] == getpass.getuser()
        assert tags["mlflow.source.name"] == "jobs/probe_sweep.py"  # the job's, also in the nested run
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags.get("mlflow.source.git.commit", "unknown") == commit == tags["raylab.git_commit"]
    # a `ray job submit` driver's runs are JOB runs
    monkeypatch.setenv(RAY_JOB_DRIVER_ENV, '{"runtime_env": {}, "metadata": {}}')
    with tracked_run(job, "submitted") as submitted:
        pass
    assert client.get_run(submitted.run_id).data.tags["mlflow.source.type"] == "JOB"
