"""No MLflow run stays RUNNING after its driver died, and a restarted sweep keeps one parent.

Runs are made by raylab's own ``tracked_run`` on the session's real SQLite store; a "dead
driver" is a real process of this host that has exited.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid

import mlflow
import pytest
from ops_support import BIN, free_port, process_group, wait_for_http

from raylab.tracking import tracked_run
from raylab.tracking.mlflow_conventions import DRIVER_TAG, RESTARTS_TAG, close_orphaned_runs, experiment_id

pytestmark = pytest.mark.ops


def _dead_driver() -> str:
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{socket.gethostname()}:{process.pid}"


def _orphan(job: str, name: str, driver: str) -> tuple[str, str]:
    """A parent RUNNING with a RUNNING nested run, as a driver killed mid-sweep leaves them."""
    client = mlflow.MlflowClient()
    exp = experiment_id(job)
    parent = client.create_run(exp, run_name=name, tags={DRIVER_TAG: driver})
    child = client.create_run(
        exp, run_name=f"{name}-trial", tags={DRIVER_TAG: driver, "mlflow.parentRunId": parent.info.run_id}
    )
    client.log_param(parent.info.run_id, "lr", "0.1")
    return parent.info.run_id, child.info.run_id


def _status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


def test_new_run_closes_orphans_of_dead_drivers(isolated_outputs):
    job, name = f"test-orphans-{uuid.uuid4().hex[:8]}", "sweep-a"
    parent, child = _orphan(job, name, _dead_driver())
    with tracked_run(job, name) as run:
        assert run.run_id != parent
        assert _status(parent) == "KILLED" and _status(child) == "KILLED"
    assert _status(run.run_id) == "FINISHED"


def test_resume_reopens_the_interrupted_parent(isolated_outputs):
    job, name = f"test-orphans-{uuid.uuid4().hex[:8]}", "sweep-b"
    parent, child = _orphan(job, name, _dead_driver())
    with tracked_run(job, name, params={"lr": 0.1}, resume=True) as run:
        assert run.run_id == parent
        assert _status(parent) == "RUNNING" and _status(child) == "KILLED"
    finished = mlflow.MlflowClient().get_run(parent)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags[RESTARTS_TAG] == "1"
    assert finished.data.tags["mlflow.source.type"] == "LOCAL"  # MLflow's context tags, also on a reopened run
    # Repeating a finished sweep of the same identity keeps its one parent run too.
    with tracked_run(job, name, params={"lr": 0.1}, resume=True) as again:
        assert again.run_id == parent
    assert mlflow.MlflowClient().get_run(parent).data.tags[RESTARTS_TAG] == "2"
    # A resumed sweep with another configuration is refused, naming the parameter.
    parent2, _ = _orphan(job, "sweep-c", _dead_driver())
    with pytest.raises(ValueError, match="lr: '0.1' -> '0.2'"):
        with tracked_run(job, "sweep-c", params={"lr": 0.2}, resume=True):
            pass
    assert _status(parent2) == "FAILED"


def test_live_driver_is_not_an_orphan_and_other_hosts_are_left_alone(isolated_outputs):
    job = f"test-orphans-{uuid.uuid4().hex[:8]}"
    with tracked_run(job, "running-now") as first:
        with tracked_run(job, "running-now") as second:
            assert _status(first.run_id) == "RUNNING" and second.run_id != first.run_id
    remote, _ = _orphan(job, "remote", "some-other-host:12345")
    with pytest.warns(UserWarning, match="cannot be checked from this host"):
        closed = close_orphaned_runs(mlflow.MlflowClient(), experiment_id(job), "remote")
    assert closed == [] and _status(remote) == "RUNNING"


def test_plain_mlflow_ui_in_the_folder_shows_raylabs_runs(tmp_path, monkeypatch):
    """A job on a laptop's defaults, then ``mlflow ui`` with no options in the same folder
    (a real server on 127.0.0.1): it finds the experiment, in its model-training kind, and
    the run with MLflow's context tags."""
    job = f"test-plain-ui-{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAYLAB_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    try:
        with tracked_run(job, "laptop-run") as run:
            run.log_metrics({"image_auroc": 0.75})
    finally:
        mlflow.set_tracking_uri(previous)  # tracked_run pointed MLflow at this folder's store
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "mlruns.db").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    port = free_port()
    command = [str(BIN / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(port)]
    with process_group(command, tmp_path / "mlflow-ui.log", env=env, cwd=tmp_path) as process:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", process, tmp_path / "mlflow-ui.log", 300.0)
        query = urllib.parse.urlencode({"experiment_name": f"raylab/{job}"})
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as answer:
            experiment = json.load(answer)["experiment"]
        assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={run.run_id}", timeout=30) as answer:
            found = json.load(answer)["run"]
    tags = {t["key"]: t["value"] for t in found["data"]["tags"]}
    assert found["info"]["experiment_id"] == experiment["experiment_id"]
    assert {m["key"]: m["value"] for m in found["data"]["metrics"]} == {"image_auroc": 0.75}
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"] and tags["mlflow.source.name"]
