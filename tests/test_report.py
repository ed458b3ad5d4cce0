"""The comparison report reads the setting axes a sweep declares, whatever the experiment.

A real MLflow store (SQLite in the test's folder) holds a sweep shaped like DCAE's: a parent
run with its axes as ``axes.*`` params and nested runs tagged with their values; no noise
ratio anywhere.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from raylab.report.html import plotted_axis, render, results_table
from raylab.report.runs import LEGACY_AXES, load_sweep


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("raylab/novelty_sweep", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, run_name="novelty-sweep")
    client.log_param(parent.info.run_id, "axes.normal_class", "[0, 1, 2]")
    client.log_param(parent.info.run_id, "axes.seed", "[0, 1]")
    for method, offset in (("dcae", 0.1), ("ae", 0.0)):
        for normal_class in (0, 1, 2):
            for seed in (0, 1):
                tags = {
                    "mlflow.parentRunId": parent.info.run_id,
                    "raylab.method": method,
                    "raylab.normal_class": str(normal_class),
                    "raylab.seed": str(seed),
                }
                run = client.create_run(experiment, run_name=f"{method}-c{normal_class}-s{seed}", tags=tags)
                client.log_metric(run.info.run_id, "auroc", 0.6 + offset + 0.05 * normal_class + 0.01 * seed)
                client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    legacy = client.create_experiment("raylab/old_sweep", artifact_location=str(tmp_path / "old"))
    old_parent = client.create_run(legacy, run_name="old")
    old = client.create_run(
        legacy,
        run_name="patchcore-old",
        tags={"mlflow.parentRunId": old_parent.info.run_id, "raylab.method": "patchcore", "raylab.noise_ratio": "0.1"},
    )
    client.log_metric(old.info.run_id, "image_auroc", 0.9)
    client.set_terminated(old.info.run_id)
    return uri


def test_report_groups_and_plots_by_the_declared_axes(store: str):
    sweep = load_sweep("novelty_sweep", tracking_uri=store)
    assert sweep.axes == ["normal_class", "seed"]
    assert len(sweep.runs) == 12 and "noise_ratio" not in sweep.runs
    table = results_table(sweep.runs, ["auroc"], sweep.axes)
    assert list(table.columns) == ["method", "normal_class", "auroc", "runs"]  # seeds averaged over
    assert len(table) == 6 and set(table["runs"]) == {2}
    row = table[(table["method"] == "dcae") & (table["normal_class"] == 2)].iloc[0]
    assert row["auroc"] == "0.805 ± 0.005"
    assert plotted_axis(sweep.runs, sweep.axes) == "normal_class"
    page = render(sweep, store)
    assert "<h2>Metrics vs normal class</h2>" in page and 'alt="Metrics vs normal class"' in page


def test_a_sweep_logged_before_axes_were_declared_reads_the_anomaly_axes(store: str):
    sweep = load_sweep("old_sweep", tracking_uri=store)
    assert sweep.axes == list(LEGACY_AXES)
    assert sweep.runs["noise_ratio"].tolist() == [0.1]
