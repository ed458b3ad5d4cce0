"""The anomaly-detection paper-size configs, run end to end at their smoke budgets.

``meds/full_dinov2`` (DINOv2-reg ViT-B/14 at 392 px, 8 decoder blocks of width 768) and
``tailedcore/full_wrn50`` (WideResNet-50 at 224 px, tail views every 15 degrees) run with
their architecture untouched: ``--smoke`` shrinks only the budget keys, and the pretrained
weights are stood in for by random ones in the loaders' real formats (a timm
``.safetensors``, a torchvision ``.pth``). The only other overrides are resources (how many
CPUs a Train worker or a trial takes), so the runs fit the 2-CPU test Ray. Metrics of random
weights mean nothing; every method reaching the summary with finite numbers, and the report
figure being a readable image, is what these tests prove.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from raylab.experiment import get_experiment, run
from raylab.experiment.registry import FULL_SIZE_CONFIGS
from raylab.testing.random_weights import smoke_weight_arguments
from raylab.testing.tracked_runs import assert_models_as_estimated, runs_under

pytestmark = [pytest.mark.full_size_smoke, pytest.mark.timeout(1800)]  # paper-size runs: minutes each on 2 cores


@pytest.fixture(scope="module")
def weight_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("random-weights")


def _smoke_run(job: str, argv: list[str], summary: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    run(get_experiment(job), [*argv, "--smoke", "--no-progress", "--summary-json", str(summary)])
    seconds = time.perf_counter() - start
    print(f"{job} smoke: {seconds:.0f} s")
    return json.loads(summary.read_text()), seconds


def _assert_finite_rows(summary: dict, methods: set[str], metrics: tuple[str, ...]) -> None:
    assert {row["method"] for row in summary["rows"]} == methods
    for row in summary["rows"]:
        for name in metrics:
            assert math.isfinite(row["metrics"][name]), (row["method"], name, row["metrics"][name])


def _assert_report_figure_opens(job: str, sweep: str, figure: str, tmp_path: Path) -> None:
    """The sweep's parent MLflow run holds the report figure, and PIL reads it as an image."""
    import mlflow
    from PIL import Image

    # Only the parent carries the sweep's name (nested runs are named method-setting-trial).
    runs = mlflow.search_runs(experiment_names=[f"raylab/{job}"], filter_string=f"tags.mlflow.runName = '{sweep}'")
    assert len(runs) == 1, f"one parent run named {sweep}"
    path = mlflow.artifacts.download_artifacts(
        run_id=runs["run_id"].iloc[0], artifact_path=figure, dst_path=str(tmp_path)
    )
    with Image.open(path) as image:
        image.load()
        assert image.width > 100 and image.height > 100


def test_meds_full_dinov2_at_smoke_budget(ray_session, weight_folder: Path, tmp_path: Path):
    argv = [
        "--config",
        "meds/full_dinov2",
        *smoke_weight_arguments("meds/full_dinov2", weight_folder),
        # Resources, not architecture: 2 DDP workers sharing the test Ray's 2 CPUs (the registry's
        # small-machine settings, also what benchmarks/full_size_costs.py measures).
        *FULL_SIZE_CONFIGS["meds/full_dinov2"].small_machine,
    ]
    summary, _ = _smoke_run("meds_sweep", argv, tmp_path / "meds.json")
    # ELPV has no pixel masks: image-level metrics only.
    _assert_finite_rows(
        summary, {"meds", "clean_oracle", "patchcore", "partial_memory", "distilled"}, ("image_auroc", "image_ap")
    )
    assert {row["noise_ratio"] for row in summary["rows"]} == {0.2}
    _assert_report_figure_opens("meds_sweep", summary["sweep"], "image_auroc_vs_noise.png", tmp_path)
    # The dry run's disk estimate for logged models agrees with what the run logged (the
    # memory banks it leaves out are a few percent at this size).
    assert_models_as_estimated("meds_sweep", argv, runs_under(summary["sweep"]))


def test_tailedcore_full_wrn50_at_smoke_budget(ray_session, shared_data: Path, weight_folder: Path, tmp_path: Path):
    argv = [
        "--data-root",
        str(shared_data),  # longtail_mix, the default (its smoke classes: three DTD textures, magnetic tile)
        "--config",
        "tailedcore/full_wrn50",
        *smoke_weight_arguments("tailedcore/full_wrn50", weight_folder),
        # Resources: the one trial's tail-view extraction may use both CPUs.
        "--set",
        "threads_per_trial=2",
    ]
    summary, _ = _smoke_run("tailedcore_sweep", argv, tmp_path / "tailedcore.json")
    # One TailSampler row (its tail precision and recall, no AUROC) beside the detectors' rows.
    assert [row["method"] for row in summary["rows"]].count("tailsampler") == 1
    detector_rows = {"rows": [row for row in summary["rows"] if row["method"] != "tailsampler"]}
    detectors = {"tailedcore", "softpatch", "patchcore", "tailedcore_true_tail"}
    _assert_finite_rows(detector_rows, detectors, ("image_auroc", "image_ap", "tail_image_auroc", "head_image_auroc"))
    assert {row["protocol"] for row in summary["rows"]} == {"step_k1"}
    tailed = next(row for row in summary["rows"] if row["method"] == "tailedcore")
    # The tail memory holds the tail images' rotation/flip views: 47 per image at 15 degrees.
    diagnostics = tailed["diagnostics"]
    assert diagnostics["memory_tail_images"] >= 1
    assert diagnostics["memory_tail_candidates"] == diagnostics["memory_tail_images"] * 48 * 28 * 28
    _assert_report_figure_opens("tailedcore_sweep", summary["sweep"], "image_auroc_by_protocol.png", tmp_path)
