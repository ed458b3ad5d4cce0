"""Scale from zero on Ray's own autoscaler (the ``fake_multinode`` provider its tests use).

A 0-CPU head with autoscaling, and one worker node type carrying a custom accelerator
resource (``accel``; this machine has no CUDA) with ``min_workers: 0``. The MeDS smoke sweep
is submitted with ``--resources gpu --accelerator accel``: it asks for the accelerator
though the cluster has none when it starts, so the autoscaler launches nodes; two trials run
at once on two nodes, Train workers and extraction actors sit on accelerator nodes (Ray's
state API), the rows equal a local CPU run's, and the idle nodes are removed afterwards.

``AutoscalingCluster`` is not used: its base config is not in the wheel and it runs
``ray stop --force``. The head runs in its own process group, stopped by signalling it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ops_support import BIN, RAY_HEAD_GRACE_S, ROOT, cli_env, free_port, process_group, wait_for_http
from support_meds import MEDS_SMOKE, assert_rows_match_local_run

pytestmark = pytest.mark.ops

ACCELERATOR = "accel"
WORKER_TYPE = "accelerator_node"
# The node type the fake provider tags its head with. Under any other name the autoscaler
# sees no head of the configured type and, every few seconds, launches one (a whole Ray node:
# raylet, agents, log monitor) and removes it again (max_workers 0): 90 launches in one run
# of this test, on the two cores the sweep needs.
HEAD_TYPE = "ray.head.default"
SMOKE = [*MEDS_SMOKE, "--noise-ratios", "0,0.2"]


# While the job runs: long enough to span the gap between the job's extraction and its trials
# on two busy cores (at 12 s the autoscaler removed a node while Tune was placing trials on
# it). Once the job has ended the config is rewritten with the short one: the autoscaler
# reads its config file again at every update, so the test need not sit out the minute.
IDLE_TIMEOUT_DURING_JOB_MIN = 1.0
IDLE_TIMEOUT_AFTER_JOB_MIN = 0.1


def _cluster_config(gcs_port: int, idle_timeout_minutes: float) -> dict:
    return {
        "cluster_name": "raylab-autoscaling-test",
        "max_workers": 2,
        "idle_timeout_minutes": idle_timeout_minutes,
        "upscaling_speed": 2.0,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "head_node_type": HEAD_TYPE,
        "available_node_types": {
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            # Two trials of the smoke sweep fit one node each: 2 Train workers x (0.99 CPU + 1 accel).
            WORKER_TYPE: {
                "resources": {"CPU": 2, ACCELERATOR: 2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _write_config(path: Path, gcs_port: int, idle_timeout_minutes: float) -> None:
    """Whole or not at all: the autoscaler may read the file at any moment."""
    staged = path.with_suffix(".staged")
    staged.write_text(yaml.safe_dump(_cluster_config(gcs_port, idle_timeout_minutes)))
    staged.replace(path)


STATE = """
import json, sys
from ray.util.state import list_actors, list_nodes
address = sys.argv[1]
nodes = [dict(node_id=n.node_id, state=n.state, resources=n.resources_total, is_head=n.is_head_node)
         for n in list_nodes(address=address, detail=True, limit=1000)]
actors = [dict(class_name=a.class_name, node_id=a.node_id, state=a.state)
          for a in list_actors(address=address, detail=True, limit=10000, raise_on_missing_output=False)]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def _state(dashboard: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", STATE, dashboard], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def scaled_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoscaling")
    temp_dir = Path(tempfile.mkdtemp(prefix="rla", dir="/tmp"))  # short: Ray's socket paths are limited
    gcs_port, dashboard_port = free_port(), free_port()
    config = root / "cluster.yaml"
    _write_config(config, gcs_port, IDLE_TIMEOUT_DURING_JOB_MIN)
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs_port}",
        "--num-cpus=0",
        f"--autoscaling-config={config}",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    env = cli_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    with process_group(command, root / "head.log", env=env, grace=RAY_HEAD_GRACE_S) as head:
        wait_for_http(f"{dashboard}/api/version", head, root / "head.log", 300)
        assert [n for n in _state(dashboard)["nodes"] if not n["is_head"]] == []  # from zero
        summary = root / "summary.json"
        job_env = cli_env(
            RAY_ADDRESS=f"127.0.0.1:{gcs_port}",
            MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
            RAYLAB_CACHE_DIR=str(root / "cache"),
            HF_HUB_OFFLINE="1",
        )
        started = time.monotonic()
        job = subprocess.run(
            [
                sys.executable,
                "jobs/meds_sweep.py",
                *SMOKE,
                "--resources",
                "gpu",
                "--accelerator",
                ACCELERATOR,
                "--set",
                "resources.max_concurrent_trials=2",
                "--summary-json",
                str(summary),
            ],
            cwd=ROOT,
            env=job_env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        job_seconds = time.monotonic() - started
        assert job.returncode == 0, (job.stdout + job.stderr)[-6000:]
        after_job = _state(dashboard)
        _write_config(config, gcs_port, IDLE_TIMEOUT_AFTER_JOB_MIN)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            later = _state(dashboard)
            if all(n["state"] == "DEAD" for n in later["nodes"] if not n["is_head"]):
                break
            time.sleep(5)
        removal_seconds = time.monotonic() - started - job_seconds
        print(f"autoscaling sweep: {job_seconds:.0f} s; idle nodes removed {removal_seconds:.0f} s after it")
        sweep = json.loads(summary.read_text())["sweep"]
        yield {
            "rows": json.loads(summary.read_text())["rows"],
            "after_job": after_job,
            "later": later,
            "trial_spans": _trial_spans(root / "cache" / "ray_results" / sweep),
            "log": job.stdout + job.stderr,
        }


def _trial_spans(experiment: Path) -> list[tuple[float, float]]:
    """(start, end) in seconds of each Tune trial, from its last result (end minus its total time)."""
    spans = []
    for result in sorted(experiment.glob("*/result.json")):
        last = json.loads(result.read_text().strip().splitlines()[-1])
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    return spans


def _accelerator_nodes(state: dict) -> set[str]:
    return {n["node_id"] for n in state["nodes"] if not n["is_head"] and n["resources"].get(ACCELERATOR, 0) > 0}


def test_nodes_are_launched_for_the_accelerator_asked_for(scaled_sweep):
    assert len(_accelerator_nodes(scaled_sweep["after_job"])) >= 2


def test_trials_ran_at_once_with_workers_on_two_nodes(scaled_sweep):
    trials = [a for a in scaled_sweep["after_job"]["actors"] if a["class_name"] == "ImplicitFunc"]
    assert len(trials) == 2, trials
    # A trial's own actor holds 0.01 CPU (Tune may pack both on one node); its work runs on
    # its Train workers and tasks, which need the accelerator.
    (start_a, end_a), (start_b, end_b) = scaled_sweep["trial_spans"]
    assert start_a < end_b and start_b < end_a  # they ran at the same time
    workers = [a for a in scaled_sweep["after_job"]["actors"] if a["class_name"] == "RayTrainWorker"]
    assert len({w["node_id"] for w in workers}) >= 2


def test_train_workers_and_extraction_actors_sit_on_accelerator_nodes(scaled_sweep):
    nodes = _accelerator_nodes(scaled_sweep["after_job"])
    placed = [
        a
        for a in scaled_sweep["after_job"]["actors"]
        if a["class_name"] == "RayTrainWorker" or a["class_name"].startswith("MapWorker")
    ]
    assert any(a["class_name"].startswith("MapWorker") for a in placed)
    assert (
        len([a for a in placed if a["class_name"] == "RayTrainWorker"]) == 2 * 2
    )  # 2 trials x 2 workers (one Train run for stages 2+3)
    assert {a["node_id"] for a in placed} <= nodes


def test_idle_nodes_are_removed(scaled_sweep):
    workers = [n for n in scaled_sweep["later"]["nodes"] if not n["is_head"]]
    assert workers and all(n["state"] == "DEAD" for n in workers)


def test_rows_equal_a_local_run(scaled_sweep, meds_smoke_runs):
    local = meds_smoke_runs["first"]["rows"] + meds_smoke_runs["changed"]["rows"]  # noise 0, noise 0.2
    assert_rows_match_local_run(scaled_sweep["rows"], local)
