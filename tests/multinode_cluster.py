"""Run raylab's distributed steps on a ``ray.cluster_utils.Cluster``, first with one node,
then with a second node added, and print (as JSON) where the work ran and what it returned.

``tests/test_ops_cluster.py`` runs this in a subprocess: the test session already holds an
in-process Ray, and a process can be connected to one Ray cluster only.

Both runs see the same data: a stratified sample of real ELPV cells, large enough for three
Parquet shards (256 rows each), i.e. three Ray Data blocks. Ray Data reads the shards, decodes
and extracts patch features on an actor pool (one actor per node in the two-node run); MeDS
stage 1 runs its bootstrapped partial memories as Ray tasks. Where each ran comes from Ray's
state API (the task records the GCS keeps), not from the code under test.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import numpy as np


def task_nodes(name_part: str, seen: set[str], expected: int) -> dict[str, str]:
    """task id -> node id of the finished tasks whose name contains ``name_part``, not in ``seen``.

    Task events reach the GCS about once a second, so this polls until ``expected`` tasks
    are listed (or a minute has passed)."""
    from ray.util.state import list_tasks

    found: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for task in list_tasks(address=DASHBOARD, limit=10000, raise_on_missing_output=False):
            if (
                name_part in (task.name or "")
                and "__init__" not in task.name
                and task.task_id not in seen
                and task.node_id
            ):
                found[task.task_id] = task.node_id
        if len(found) >= expected:
            break
        time.sleep(1)
    return found


DASHBOARD = ""


def wait_for_cpus(cpus: int, timeout: float = 120.0) -> None:
    """Until every node's CPUs are free in the scheduler's view: a node that has registered
    but whose resources have not reached the other raylets yet would get no SPREAD work."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) < cpus:
        time.sleep(0.5)
    time.sleep(3)  # one more round of the raylets' resource-view exchange


def run_once(corpus, label: str, seen: dict[str, set[str]]) -> dict:
    import ray

    from raylab.features import FeatureSpec
    from raylab.features.extract import extract_patch_features
    from raylab.methods.meds.partial_memory import bootstrap_memory_scores, l2_normalise

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    spec = FeatureSpec(image_size=32)
    features = extract_patch_features(corpus, spec, actors=len(nodes))
    _, h, w, d = features.patches.shape
    tokens = l2_normalise(features.patches[:64].reshape(64, h * w, d))
    scores = bootstrap_memory_scores(tokens, bootstraps=8, rho=0.5, seed=0, num_tasks=2 * len(nodes))
    blocks = -(-corpus.num_rows // 256)
    extractors = task_nodes("MapBatches(Model", seen["extract"], expected=blocks)  # ModelTask or ModelActor
    chunks = task_nodes("_chunk_task", seen["chunk"], expected=2 * len(nodes))
    seen["extract"] |= set(extractors)
    seen["chunk"] |= set(chunks)
    out = f"{os.environ['MULTINODE_OUT']}-{label}.npz"
    np.savez(out, sample_ids=features.sample_ids.astype(str), patches=features.patches, scores=scores)
    return {
        "nodes": nodes,
        "extraction_tasks": len(extractors),
        "extraction_task_nodes": sorted(set(extractors.values())),
        "partial_memory_tasks": len(chunks),
        "partial_memory_task_nodes": sorted(set(chunks.values())),
        "arrays": out,
    }


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raylab.data import load_corpus
    from raylab.data.protocols import subsample_corpus

    global DASHBOARD

    corpus = subsample_corpus(load_corpus("elpv"), 90)
    # A free dashboard port: Ray's default 8265 may belong to another Ray on this machine.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    head = {"num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        context = ray.init(address=cluster.address, log_to_driver=False)
        DASHBOARD = f"http://{context.dashboard_url}"
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        seen: dict[str, set[str]] = {"extract": set(), "chunk": set()}
        result = {"images": corpus.num_rows, "one_node": run_once(corpus, "one", seen)}
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        wait_for_cpus(4)
        result["two_nodes"] = run_once(corpus, "two", seen)
        print("MULTINODE_RESULT " + json.dumps(result), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
