"""The cluster configurations in ``cluster/`` are valid and say what cluster/README.md says.

Launcher YAMLs go through Ray's own preparation and schema validation (what ``ray up``
runs before it touches a cloud); the KubeRay manifests are checked for the fields KubeRay
requires and for consistency (Ray version, image, volume, service, job entrypoint).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHERS = sorted(CLUSTER.glob("*.yaml"))
RAY_TAG = f"rayproject/ray:{ray.__version__}-py311"


def test_there_is_a_launcher_config_per_cloud():
    assert {p.stem for p in LAUNCHERS} >= {"aws", "gcp"}


@pytest.mark.parametrize("path", LAUNCHERS, ids=[p.stem for p in LAUNCHERS])
def test_launcher_config_passes_ray_validation_and_matches_raylab(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    prepared = prepare_config(raw)
    validate_config(prepared)  # raises on any schema or consistency error
    assert prepared["idle_timeout_minutes"] > 0
    docker = prepared["docker"]
    assert docker["head_image"] == RAY_TAG and docker["worker_image"] == f"{RAY_TAG}-gpu"
    assert any("/mnt/raylab:/mnt/raylab" in option for option in docker["run_options"])
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert all(0 == t["min_workers"] <= t["max_workers"] <= prepared["max_workers"] for t in workers.values())
    for t in workers.values():  # spot capacity for the GPU workers
        config = t["node_config"]
        spot = config.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or config.get("scheduling", {}).get("provisioningModel") == "SPOT"
        assert spot, config
    assert any('raylab[gpu' in command for command in prepared["setup_commands"])
    assert prepared["file_mounts"]["/home/ray/raylab"] == "."
    head_start = " ".join(prepared["head_start_ray_commands"])
    worker_start = " ".join(prepared["worker_start_ray_commands"])
    assert "RAYLAB_CACHE_DIR=/mnt/raylab/cache" in head_start and "RAYLAB_CACHE_DIR=/mnt/raylab/cache" in worker_start
    assert "mlflow server --host $(hostname -I" in head_start and "0.0.0.0" not in head_start  # private address only
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker_start


def _documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def test_kuberay_raycluster_has_required_fields_and_gpu_autoscaling():
    docs = _documents(CLUSTER / "kuberay" / "raycluster.yaml")
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"] == "raylab"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["rayStartParams"]["num-cpus"] == "0"
    head_containers = _containers(head["template"])
    assert head_containers[0]["name"] == "ray-head"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM {RAY_TAG}-gpu" in dockerfile and 'raylab[gpu' in dockerfile
    image = head_containers[0]["image"]
    assert image.endswith(f"-ray{ray.__version__}-gpu")
    claims = {docs["PersistentVolumeClaim"]["metadata"]["name"]}
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in _containers(group["template"]):
            assert container["image"] == image
            assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env["RAYLAB_CACHE_DIR"].startswith("/mnt/raylab") and env["MLFLOW_TRACKING_URI"] == "http://raylab-mlflow:5000"
        volumes = group["template"]["spec"]["volumes"]
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v} <= claims
    service = docs["Service"]
    assert service["spec"]["type"] == "ClusterIP" and service["metadata"]["name"] == "raylab-mlflow"
    assert service["spec"]["selector"] == {"ray.io/cluster": "raylab", "ray.io/node-type": "head"}
    served = {p["containerPort"] for c in head_containers for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= served


def test_kuberay_rayjob_runs_the_meds_sweep_on_that_cluster():
    from raylab.methods.meds.sweep import parser

    job = _documents(CLUSTER / "kuberay" / "rayjob-meds-sweep.yaml")["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "raylab"}
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "python" and command[1] == "/home/ray/raylab/jobs/meds_sweep.py"
    assert (ROOT / "jobs" / "meds_sweep.py").exists()
    parser().parse_args(command[2:])  # every flag is one the job accepts
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://raylab-mlflow:5000" and env["RAYLAB_CACHE_DIR"] == "/mnt/raylab/cache"
