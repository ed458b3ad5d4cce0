"""raylab's metrics reach Prometheus through Ray, and the Grafana dashboards only query
metrics that exist: raylab's own (``raylab.metrics``) or ones Ray exports.

Both are checked against a live scrape of the session Ray node's metrics endpoint (the one
``ray metrics launch-prometheus`` points Prometheus at), not against a list in the test.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

# Ray workers cannot import this test module: ship its functions and classes by value.
from ray import cloudpickle  # noqa: E402

from raylab import metrics as raylab_metrics

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RAYLAB_NAMES = {name for spec in raylab_metrics.ALL for name in spec.prometheus_names()}
# A metric name in PromQL, not a label (labels are followed by a matcher).
METRIC_NAME = re.compile(r"\b(ray_[A-Za-z0-9_]+)\b(?!\s*(?:=|!=|=~|!~))")


def scrape(ray_module) -> dict[str, list[str]]:
    """Metric name -> its sample lines, from this node's Prometheus endpoint."""
    node = ray_module._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            found.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)
    return found


def scrape_until(ray_module, wanted, timeout: float = 90.0) -> dict[str, list[str]]:
    """Scrape until ``wanted(samples)`` holds, keeping every sample seen (as Prometheus would):
    metrics reach the endpoint every few seconds, and Ray drops a gauge value a couple of
    export intervals after it was last set."""
    deadline = time.monotonic() + timeout
    seen: dict[str, list[str]] = {}
    while True:
        for name, lines in scrape(ray_module).items():
            seen.setdefault(name, []).extend(line for line in lines if line not in seen[name])
        if wanted(seen) or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def queried_metrics(dashboard: dict) -> set[str]:
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    expressions += [v["query"]["query"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return {name for expression in expressions for name in METRIC_NAME.findall(expression)}


class Exerciser:
    """Runs raylab's instrumented code in a Ray worker and stays alive while it is scraped."""

    def run(self) -> int:
        from raylab.features import FeatureSpec
        from raylab.features.backbones import BackboneSpec
        from raylab.features.extract import PatchFeatureExtractor
        from raylab.memory import MemoryBank

        extractor = PatchFeatureExtractor(FeatureSpec(backbone=BackboneSpec(weights=None), image_size=32), threads=1)
        extractor({"pixels": np.zeros((3, 3, 32, 32), np.float32), "sample_id": np.array(["a", "b", "c"])})
        bank = MemoryBank(8, metric="ip", device="cpu")
        bank.add(np.random.default_rng(0).random((100, 8), dtype=np.float32))
        bank.search(np.random.default_rng(1).random((40, 8), dtype=np.float32), k=1)
        raylab_metrics.record_train_report("metrics-test-run", {"epoch": 3, "train_loss": 0.5})
        return 0


def _noop() -> int:
    return 0


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_is_valid_grafana_and_queries_exported_metrics(path, ray_session):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 27
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval"}
            assert used <= variables, (panel["title"], used - variables)
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    queried = queried_metrics(dashboard)
    assert queried, path.name
    # Ray exports task metrics once tasks have run in the session.
    ray_session.get(ray_session.remote(num_cpus=0)(_noop).remote())
    from_ray = queried - RAYLAB_NAMES
    samples = scrape_until(ray_session, lambda s: from_ray <= set(s))
    missing = sorted(from_ray - set(samples))
    assert not missing, f"{path.name} queries metrics neither raylab nor Ray exports: {missing}"


def test_dashboards_cover_every_raylab_metric():
    queried = set().union(*(queried_metrics(json.loads(p.read_text())) for p in DASHBOARDS))
    assert RAYLAB_NAMES <= queried, sorted(RAYLAB_NAMES - queried)


def test_raylab_metrics_reach_the_prometheus_endpoint(ray_session, isolated_outputs):
    from raylab.tracking import tracked_run

    job = f"metrics-test-{time.time_ns()}"
    worker = ray_session.remote(num_cpus=0)(Exerciser).remote()
    try:
        assert ray_session.get(worker.run.remote(), timeout=300) == 0
        with tracked_run(
            job, "trial", tags={"method": "meds", "dataset": "elpv", "noise_ratio": 0.1, "seed": 0}
        ) as run:
            run.log_metrics({"image_auroc": 0.875})

        def complete(samples):
            return RAYLAB_NAMES <= set(samples) and any(
                job in line for line in samples.get("ray_raylab_run_metric", [])
            )

        samples = scrape_until(ray_session, complete)
    finally:
        ray_session.kill(worker)
    assert RAYLAB_NAMES <= set(samples), sorted(RAYLAB_NAMES - set(samples))
    run_lines = [line for line in samples["ray_raylab_run_metric"] if f'job="{job}"' in line]
    assert any(
        'metric="image_auroc"' in line and 'noise_ratio="0.1"' in line and line.endswith(" 0.875") for line in run_lines
    ), run_lines
    assert any('backbone="efficientnet_lite0"' in line for line in samples["ray_raylab_feature_images_total"])
    assert any(line.endswith(" 100.0") or line.endswith(" 100") for line in samples["ray_raylab_memory_bank_vectors"])
