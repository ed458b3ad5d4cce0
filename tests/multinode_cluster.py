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


def _import_chunk_module() -> None:
    import raylab.methods.meds.partial_memory  # noqa: F401

    time.sleep(1.0)  # held, so the node's two calls take two distinct worker processes


def warm_workers(nodes: list[str], per_node: int = 2) -> None:
    """Leave ``per_node`` idle worker processes on every node, the chunk task's module imported.

    Ray hands a leased worker the next queued task of the same kind, so short chunk tasks
    could all finish on the head before the second node's first worker process has started,
    and the second node would take no part though it was offered the work. Warm workers take
    that start-up race out of what the test observes; the chunk tasks themselves are sized
    to last far longer than a lease round trip."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    warm = ray.remote(num_cpus=1)(_import_chunk_module)
    ray.get(
        [
            warm.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            for node in nodes
            for _ in range(per_node)
        ]
    )


def run_once(corpus, label: str, seen: dict[str, set[str]]) -> dict:
    import ray

    from raylab.features import FeatureSpec
    from raylab.features.extract import extract_patch_features
    from raylab.methods.meds.partial_memory import bootstrap_memory_scores, l2_normalise

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    spec = FeatureSpec(image_size=32)
    features = extract_patch_features(corpus, spec, actors=len(nodes))
    _, h, w, d = features.patches.shape
    tokens = l2_normalise(features.patches.reshape(-1, h * w, d))
    warm_workers(nodes)
    # Two chunk tasks per node, each a few bootstraps over every image: about a second apiece here.
    scores = bootstrap_memory_scores(tokens, bootstraps=16, rho=0.5, seed=0, num_tasks=2 * len(nodes))
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
