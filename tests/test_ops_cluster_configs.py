"""The cluster configurations in ``cluster/`` are valid and say what cluster/README.md says.

Launcher YAMLs go through Ray's own preparation and schema validation (what ``ray up``
runs before it touches a cloud); the KubeRay manifests are checked for the fields KubeRay
requires, for the KubeRay operator's own spec rules that raylab relies on (a RayCluster the
operator rejects is applied without error and then never starts), and for consistency (Ray
version, image, volume, service, job entrypoint). Every recipe runs the image built from
``cluster/Dockerfile`` (one CUDA major) and is secured: Ray token auth, a shared file system
for the raylab group only, private services, SSH from a configured CIDR.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHERS = sorted(CLUSTER.glob("*.yaml"))
RAY_TAG = f"rayproject/ray:{ray.__version__}-py311"
# The image every recipe runs: cluster/Dockerfile built for raylab's Ray and CUDA 12.x.
IMAGE = re.compile(rf"^REGISTRY/raylab:[0-9.]+-ray{re.escape(ray.__version__)}-cu12\d$")
RAYLAB_GID = 2000


def _dockerfile_args() -> dict[str, str]:
    text = (CLUSTER / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))


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
    # One image everywhere, the one cluster/Dockerfile builds: no per-node installs.
    assert IMAGE.match(docker["image"]), docker["image"]
    assert docker.get("head_image", docker["image"]) == docker["image"] == docker.get("worker_image", docker["image"])
    assert not any(t.get("docker") for t in prepared["available_node_types"].values())
    commands = prepared["setup_commands"] + prepared["head_setup_commands"] + prepared["worker_setup_commands"]
    assert not any("pip install" in command for command in commands + prepared["initialization_commands"])
    assert "/home/ray/raylab" not in prepared["file_mounts"]  # raylab comes with the image
    options = docker["run_options"]
    assert any("/mnt/raylab:/mnt/raylab" in option for option in options)
    # Ray token auth in every container, the token copied from the `ray up` machine.
    assert "--env RAY_AUTH_MODE=token" in options
    assert prepared["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    # The shared file system belongs to the raylab group, never world-writable.
    initialization = " ".join(prepared["initialization_commands"])
    assert "chmod 777" not in initialization and not re.search(r"chmod [0-7]?[0-7][0-7][2367]\b", initialization)
    assert f"chgrp {RAYLAB_GID} /mnt/raylab" in initialization and "chmod 2770 /mnt/raylab" in initialization
    assert f"--group-add {RAYLAB_GID}" in options
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers.values())
    assert all(0 == t["min_workers"] <= t["max_workers"] <= prepared["max_workers"] for t in workers.values())
    for t in workers.values():  # spot capacity for the GPU workers
        config = t["node_config"]
        spot = (
            config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
            or config.get("scheduling", {}).get("provisioningModel") == "SPOT"
        )
        assert spot, config
    head_start = " ".join(prepared["head_start_ray_commands"])
    worker_start = " ".join(prepared["worker_start_ray_commands"])
    assert "RAYLAB_CACHE_DIR=/mnt/raylab/cache" in head_start and "RAYLAB_CACHE_DIR=/mnt/raylab/cache" in worker_start
    assert "mlflow server --host $(hostname -I" in head_start and "0.0.0.0" not in head_start  # private address only
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker_start
    assert "umask 0007" in head_start and "umask 0007" in worker_start
    assert "0.0.0.0/0" not in path.read_text()


def test_aws_nodes_use_a_pinned_ami_and_the_raylab_security_group():
    """Ray's AWS launcher opens SSH to 0.0.0.0/0 on a security group it creates; raylab's
    nodes use their own group instead (SSH from RAYLAB_SSH_CIDR, cluster/README.md)."""
    types = yaml.safe_load((CLUSTER / "aws.yaml").read_text())["available_node_types"]
    for name, node_type in types.items():
        config = node_type["node_config"]
        assert re.fullmatch(r"ami-[0-9a-f]{8,17}", config["ImageId"]), name
        assert config["SecurityGroupIds"] and all(g.startswith("sg-") for g in config["SecurityGroupIds"]), name
    assert len({t["node_config"]["ImageId"] for t in types.values()}) == 1


def test_gcp_nodes_use_the_raylab_network_a_570_driver_image_and_wait_for_the_driver():
    raw = yaml.safe_load((CLUSTER / "gcp.yaml").read_text())
    for name, node_type in raw["available_node_types"].items():
        config = node_type["node_config"]
        assert [i["network"] for i in config["networkInterfaces"]] == ["global/networks/raylab"], name
        image = config["disks"][0]["initializeParams"]["sourceImage"]
        assert "-cu12" in image and "nvidia-570" in image, image
    assert any("until nvidia-smi" in command for command in raw["initialization_commands"])


def test_dockerfile_installs_dependencies_before_the_source_on_one_cuda_major():
    text = (CLUSTER / "Dockerfile").read_text()
    args = _dockerfile_args()
    assert args["RAY_IMAGE"].startswith(f"{RAY_TAG}-cu{args['CUDA_MAJOR']}")
    assert args["TORCH_INDEX"].rsplit("/", 1)[-1].startswith(f"cu{args['CUDA_MAJOR']}")
    assert args["TORCH_INDEX"].rsplit("/", 1)[-1] == args["RAY_IMAGE"].rsplit("-", 1)[-1]
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["FAISS_GPU_VERSION"])  # faiss-gpu 1.15.x: CUDA 12 runtime
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    first_copy = next(i for i, line in enumerate(lines) if line.startswith("COPY"))
    source_copy = next(i for i, line in enumerate(lines) if re.match(r"COPY .* \. /home/ray/raylab$", line))
    install = next(
        i for i, line in enumerate(lines) if "pip install" in line and "-r /tmp/raylab-requirements.txt" in line
    )
    assert "pyproject.toml" in lines[first_copy] and first_copy < install < source_copy
    assert "--no-deps" in next(line for line in lines[source_copy:] if "pip install" in line)
    assert "ENV RAYLAB_GIT_COMMIT=${RAYLAB_GIT_COMMIT}" in text and "RAYLAB_GIT_COMMIT" in args
    assert ".git" in (CLUSTER / "Dockerfile.dockerignore").read_text().split()  # hence the build argument


def test_git_commit_falls_back_to_the_commit_baked_into_the_image(monkeypatch):
    import subprocess

    from raylab.tracking import mlflow_conventions

    def no_git(*args, **kwargs):
        raise subprocess.CalledProcessError(128, "git")

    monkeypatch.setattr(mlflow_conventions.subprocess, "run", no_git)
    monkeypatch.setenv("RAYLAB_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    assert mlflow_conventions.git_commit() == "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.delenv("RAYLAB_GIT_COMMIT")
    assert mlflow_conventions.git_commit() == "unknown"


def _documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def kuberay_operator_errors(cluster: dict) -> list[str]:
    """The KubeRay operator's spec validation rules that raylab's RayCluster relies on.

    The operator rejects a RayCluster that breaks them (a warning event, no pods), although
    ``kubectl apply`` accepts it: the CRD schema does not encode them.
    """
    errors = []
    spec = cluster["spec"]
    head_env = {e["name"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    if (spec.get("autoscalerOptions") or {}).get("version") == "v2" and "RAY_enable_autoscaler_v2" in head_env:
        errors.append("both spec.autoscalerOptions.version v2 and the head's RAY_enable_autoscaler_v2 are set")
    if (spec.get("autoscalerOptions") or {}).get("version") == "v2" and not spec.get("enableInTreeAutoscaling"):
        errors.append("autoscalerOptions.version v2 needs enableInTreeAutoscaling")
    if (spec.get("authOptions") or {}).get("mode") == "token":
        major, minor = (int(x) for x in spec["rayVersion"].split(".")[:2])
        if (major, minor) < (2, 52):
            errors.append("authOptions token mode needs rayVersion >= 2.52")
    return errors


def test_kuberay_operator_rules_hold_for_the_raycluster():
    cluster = _documents(CLUSTER / "kuberay" / "raycluster.yaml")["RayCluster"]
    assert kuberay_operator_errors(cluster) == []
    both = copy.deepcopy(cluster)  # what the manifest used to say: rejected by the operator
    both["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_enable_autoscaler_v2", "value": "1"}
    )
    assert kuberay_operator_errors(both) == [
        "both spec.autoscalerOptions.version v2 and the head's RAY_enable_autoscaler_v2 are set"
    ]


def test_kuberay_pods_are_non_root_authenticated_and_fenced():
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    job = _documents(CLUSTER / "kuberay" / "rayjob-meds-sweep.yaml")["RayJob"]
    templates = [
        spec["headGroupSpec"]["template"],
        *(g["template"] for g in spec["workerGroupSpecs"]),
        job["spec"]["submitterPodTemplate"],
    ]
    for template in templates:
        pod = template["spec"]["securityContext"]
        assert (
            pod["runAsNonRoot"] is True and pod["runAsUser"] != 0 and pod["seccompProfile"]["type"] == "RuntimeDefault"
        )
        for container in template["spec"]["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for template in templates[:-1]:
        assert RAYLAB_GID in template["spec"]["securityContext"]["supplementalGroups"]
    assert spec["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False
    submitter = job["spec"]["submitterPodTemplate"]
    env = {e["name"]: e for e in submitter["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": cluster["metadata"]["name"],
        "key": "auth_token",
    }
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    cluster_pods = {"ray.io/cluster": cluster["metadata"]["name"]}
    head_pods = cluster_pods | {"ray.io/node-type": "head"}
    covering = [
        p
        for p in policies.values()
        if cluster_pods.items() <= p["spec"]["podSelector"]["matchLabels"].items() <= head_pods.items()
    ]
    assert covering and all(p["spec"]["policyTypes"] == ["Ingress"] for p in covering)
    for policy in covering:
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert "ipBlock" not in peer  # pods only, never an address range
                if peer.get("namespaceSelector") is not None and "podSelector" not in peer:
                    assert {p["port"] for p in rule["ports"]} == {8080}  # another namespace: metrics only
    inside = [
        peer["podSelector"]["matchLabels"]
        for p in covering
        for r in p["spec"]["ingress"]
        for peer in r["from"]
        if "namespaceSelector" not in peer
    ]
    assert cluster_pods in inside and submitter["metadata"]["labels"] in inside
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert all("0.0.0.0" not in " ".join(c.get("args", [])) or c["name"] == "mlflow" for c in head)


def test_kuberay_raycluster_has_required_fields_and_gpu_autoscaling():
    docs = _documents(CLUSTER / "kuberay" / "raycluster.yaml")
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"] == "raylab"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["version"] == "v2"
    assert kuberay_operator_errors(cluster) == []
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["rayStartParams"]["num-cpus"] == "0"
    head_containers = _containers(head["template"])
    assert head_containers[0]["name"] == "ray-head"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "FROM ${RAY_IMAGE}" in dockerfile and _dockerfile_args()["RAY_IMAGE"].startswith(f"{RAY_TAG}-cu12")
    assert 'extras["gpu"]' in dockerfile  # the gpu extra (faiss-gpu) goes into the image
    image = head_containers[0]["image"]
    assert IMAGE.match(image), image
    assert all(c["image"] == image for c in head_containers)
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
            assert (
                env["RAYLAB_CACHE_DIR"].startswith("/mnt/raylab")
                and env["MLFLOW_TRACKING_URI"] == "http://raylab-mlflow:5000"
            )
        volumes = group["template"]["spec"]["volumes"]
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v} <= claims
    service = docs["Service"]
    assert service["spec"]["type"] == "ClusterIP" and service["metadata"]["name"] == "raylab-mlflow"
    assert service["spec"]["selector"] == {"ray.io/cluster": "raylab", "ray.io/node-type": "head"}
    served = {p["containerPort"] for c in head_containers for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= served


def test_kuberay_rayjob_runs_the_meds_sweep_on_that_cluster():
    from raylab.experiment.arguments import experiment_parser
    from raylab.experiment.registry import get_experiment

    parser = lambda: experiment_parser(get_experiment("meds_sweep"))  # noqa: E731 (what jobs/meds_sweep.py parses)

    job = _documents(CLUSTER / "kuberay" / "rayjob-meds-sweep.yaml")["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "raylab"}
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "python" and command[1] == "/home/ray/raylab/jobs/meds_sweep.py"
    assert (ROOT / "jobs" / "meds_sweep.py").exists()
    parser().parse_args(command[2:])  # every flag is one the job accepts
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://raylab-mlflow:5000" and env["RAYLAB_CACHE_DIR"] == "/mnt/raylab/cache"
    cluster = _documents(CLUSTER / "kuberay" / "raycluster.yaml")["RayCluster"]
    image = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert [c["image"] for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]] == [image]
