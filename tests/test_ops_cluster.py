"""Multi-node: on a two-node ``ray.cluster_utils.Cluster``, Ray Data's feature extraction and
MeDS's partial-memory tasks run on both nodes and give the one-node result.

The cluster lives in a subprocess (``tests/multinode_cluster.py``): this test session holds
its own in-process Ray already. The same cluster first runs everything with one node, then
a second node joins and everything runs again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ops_support import ROOT

pytestmark = pytest.mark.ops


def test_two_nodes_share_the_work_and_match_one_node(tmp_path, shared_data):
    env = dict(
        os.environ, MULTINODE_OUT=str(tmp_path / "arrays"), RAYLAB_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1"
    )
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "multinode_cluster.py")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MULTINODE_RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-6000:]
    result = json.loads(lines[-1].removeprefix("MULTINODE_RESULT "))
    one, two = result["one_node"], result["two_nodes"]
    assert len(one["nodes"]) == 1 and len(two["nodes"]) == 2
    assert result["images"] > 512  # three Parquet shards, so three blocks to share out
    # Every Ray Data extraction task and every partial-memory task of the one-node run ran
    # on its node; in the two-node run both nodes took part in both steps.
    assert one["extraction_task_nodes"] == one["partial_memory_task_nodes"] == one["nodes"]
    assert sorted(two["extraction_task_nodes"]) == sorted(two["nodes"]), two
    assert sorted(two["partial_memory_task_nodes"]) == sorted(two["nodes"]), two
    assert two["partial_memory_tasks"] == 4
    single, double = np.load(one["arrays"]), np.load(two["arrays"])
    np.testing.assert_array_equal(single["sample_ids"], double["sample_ids"])
    # Same blocks and batches on either layout: the features agree to float32 rounding.
    np.testing.assert_allclose(single["patches"], double["patches"], rtol=0, atol=1e-5)
    # Partial memories are exact sums whatever the task layout (raylab.methods.meds.partial_memory).
    np.testing.assert_array_equal(single["scores"], double["scores"])
