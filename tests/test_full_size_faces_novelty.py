"""The paper-size CKD and DCAE configs, run end to end at their smoke budget on real data.

Each job gets its full-size config, ``--smoke`` and only what a 2-CPU machine needs besides:
the data folder and smaller CPU requests for its Train workers (the worker count stays that
of the full config). What this proves is that the official sizes build, train, checkpoint,
score and log on real images: the summary's metrics are finite and a logged figure is a
readable image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from raylab.experiment.registry import FULL_SIZE_CONFIGS
from raylab.testing.tracked_runs import assert_models_as_estimated, runs_under

pytestmark = [pytest.mark.full_size_smoke, pytest.mark.timeout(1800)]  # paper-size runs: minutes each on 2 cores


@pytest.fixture(autouse=True)
def own_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each job logs to its own MLflow store: its trial runs (``c0-s0``) and nested runs must
    not show up in the other tests' searches of the session's store, nor theirs in ours."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
    monkeypatch.undo()
    from raylab.tracking.mlflow_conventions import configure

    configure()  # the session's store again, for this process's MLflow client
    assert mlflow.get_tracking_uri() != f"sqlite:///{tmp_path / 'mlflow.db'}"


def _run(job: str, argv: list[str], summary: Path) -> dict[str, Any]:
    from raylab.experiment import get_experiment, run

    out = run(get_experiment(job), [*argv, "--smoke", "--summary-json", str(summary), "--no-progress"])
    written = json.loads(summary.read_text())
    assert written["rows"], f"{job} wrote no rows"
    for row in written["rows"]:
        assert row["metrics"] and all(math.isfinite(value) for value in row["metrics"].values()), row
    return out


def _opens_as_image(run_id: str, artifact: str, scratch: Path) -> None:
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(scratch))
    with Image.open(local) as image:
        image.load()
        assert image.width > 10 and image.height > 10


def test_ckd_official_size_smoke(ray_session, shared_data: Path, tmp_path: Path) -> None:
    """IR-SE ResNet-18 at 128x128 faces and 48x128 bands, batch 16, all five methods (one DDP
    worker per run on the test's two CPUs: the registry's small-machine setting)."""
    argv = [
        "--config",
        "ckd/orl_full",
        "--data-root",
        str(shared_data),
        *FULL_SIZE_CONFIGS["ckd/orl_full"].small_machine,
    ]
    out = _run("ckd_train", argv, tmp_path / "ckd.json")
    network, train = out["config"].ckd.network, out["config"].ckd.train
    assert network.widths == (64, 128, 256, 512) and (network.face_size, train.batch_size) == ((128, 128), 16)
    children = runs_under(out["name"])
    assert len(children) == 5
    _opens_as_image(children[0].info.run_id, "figures/cmc.png", tmp_path)
    assert_models_as_estimated("ckd_train", argv, children)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_dcae_full_size_smoke(ray_session, shared_data: Path, tmp_path: Path, dataset: str) -> None:
    """Width 64, latent 64, the full discriminators; selection, three trained variants, scoring."""
    argv = [
        "--dataset",
        dataset,
        "--config",
        f"dcae/{dataset}_full",
        "--data-root",
        str(shared_data),
        *FULL_SIZE_CONFIGS[f"dcae/{dataset}_full"].small_machine,
    ]
    out = _run("dcae_sweep", argv, tmp_path / "dcae.json")
    assert out["config"].network.width == 64 and out["config"].train.num_workers == 2
    runs = runs_under(out["name"])
    trial_runs = [r for r in runs if r.info.run_name == "c0-s0"]
    assert len(trial_runs) == 1
    _opens_as_image(trial_runs[0].info.run_id, "reconstructions.png", tmp_path)
    assert_models_as_estimated("dcae_sweep", argv, runs)
