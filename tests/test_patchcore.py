"""Tests for PatchCore, the shared anomaly post-processing and the ``patchcore_eval`` job (one
Ray task per setting, a nested MLflow run each) through the experiment runner, on a small
real magnetic-tile subset.

Features of the subset (40 images per (split, label) group, 112 px) are extracted once with
Ray Data into the session's feature cache; the job test asks for the same subset and spec, so
it finds them there.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from raylab.data import NoiseProtocol, inject_noise, load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.data.protocols.noise import base_sample_id
from raylab.eval import anomaly_metrics
from raylab.experiment import get_experiment, run
from raylab.features import FeatureSpec
from raylab.features.cache import cached_patch_features
from raylab.tasks.anomaly.benchmark import class_splits
from raylab.tasks.anomaly.maps import patch_scores_to_maps, reduce_to_image_scores
from raylab.tasks.anomaly.patchcore import PatchCoreConfig
from raylab.tasks.anomaly.patchcore.model import PatchCore
from raylab.tracking import tracking_uri

IMAGE_SIZE = 112
PER_GROUP = 40
SPEC = FeatureSpec(image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> pa.Table:
    """40 train, 40 good test and 40 defective test tiles (the job's --quick subsample)."""
    return subsample_corpus(load_corpus("magnetic_tile", shared_data), PER_GROUP)


@pytest.fixture(scope="module")
def features(corpus, ray_session):
    return cached_patch_features(corpus, SPEC)


@pytest.fixture(scope="module")
def split(corpus):
    (only,) = class_splits(corpus, IMAGE_SIZE)
    return only


@pytest.fixture(scope="module")
def fitted(features, split) -> PatchCore:
    return PatchCore(PatchCoreConfig(features=SPEC, coreset_ratio=0.1), seed=0).fit(features.take(split.train_ids))


# ---------------------------------------------------------------------------------------------
# PatchCore


def test_patchcore_detects_magnetic_tile_defects(fitted, features, split):
    assert len(split.train_ids) == 40 and len(split.test_ids) == 80
    assert split.test_labels.sum() == 40 and split.test_masks.shape == (80, IMAGE_SIZE, IMAGE_SIZE)
    patches = features.take(split.test_ids)
    prediction = fitted.predict(patches)
    assert prediction.image_scores.shape == (80,)
    assert prediction.patch_scores.shape == (80, 14, 14)
    assert prediction.maps.shape == (80, IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(prediction.image_scores, prediction.patch_scores.reshape(80, -1).max(axis=1))
    metrics = anomaly_metrics(split.test_labels, prediction.image_scores, split.test_masks, prediction.maps)
    # Measured: image AUROC 0.765, pixel AUROC 0.71 (0.75-0.79 / 0.71-0.81 over subsample seeds).
    assert metrics["image_auroc"] > 0.68, metrics
    assert metrics["pixel_auroc"] > 0.62, metrics
    # A memory patch scores zero: training images score far below the test defects.
    train_scores = fitted.predict(features.take(split.train_ids[:10]), with_maps=False)
    assert train_scores.maps is None
    assert np.median(train_scores.image_scores) < np.median(prediction.image_scores[split.test_labels == 1])
    # The coreset keeps ~10% of the 40 x 14 x 14 training patches.
    assert len(fitted.bank) == pytest.approx(0.1 * 40 * 14 * 14, abs=2)


def test_patchcore_save_load_scores_identically(fitted, features, split, tmp_path):
    directory = fitted.save(tmp_path / "model")
    loaded = PatchCore.load(directory)
    assert loaded.config == fitted.config
    assert loaded.seed == fitted.seed
    patches = features.take(split.test_ids)
    before, after = fitted.predict(patches), loaded.predict(patches)
    assert np.array_equal(before.image_scores, after.image_scores)
    assert np.array_equal(before.patch_scores, after.patch_scores)
    assert np.array_equal(before.maps, after.maps)


def test_patchcore_requires_fit():
    with pytest.raises(RuntimeError, match="fit"):
        PatchCore().predict(np.zeros((1, 2, 2, 4), np.float32))


# ---------------------------------------------------------------------------------------------
# anomaly maps and image scores


def test_single_hot_patch_becomes_a_blob_at_its_location():
    scores = np.zeros((3, 8, 8), np.float32)
    scores[0, 2, 5] = 1.0
    scores[1, 6, 1] = 2.0  # another location, another height
    maps = patch_scores_to_maps(scores, image_size=64, sigma=4.0)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    for index, (row, col) in ((0, (2, 5)), (1, (6, 1))):
        peak = np.unravel_index(np.argmax(maps[index]), (64, 64))
        # Patch (r, c) covers pixels [8r, 8r + 8): the smoothed peak lies inside it.
        assert 8 * row <= peak[0] < 8 * row + 8 and 8 * col <= peak[1] < 8 * col + 8, peak
        blob = maps[index]
        # Smoothed: lower than the raw patch score, spread beyond the patch, decaying with distance.
        assert 0 < blob.max() < scores[index].max()
        assert blob[peak[0], min(peak[1] + 10, 63)] > 0
        profile = blob[peak[0], peak[1] : min(peak[1] + 16, 64)]
        assert np.all(np.diff(profile) <= 1e-7)
    assert not maps[2].any()
    assert maps[1].max() > maps[0].max()
    # Without smoothing, the upsampled patch itself; chunking does not change the result.
    raw = patch_scores_to_maps(scores, image_size=64, sigma=0)
    # Bilinear, align_corners=False: pixel 8r + 4 samples the grid at r + 1/16 on each axis.
    assert raw[0, 8 * 2 + 4, 8 * 5 + 4] == pytest.approx((15 / 16) ** 2)
    assert raw[0].max() == pytest.approx((15 / 16) ** 2)
    assert raw[0, 40, 10] == 0
    np.testing.assert_array_equal(patch_scores_to_maps(scores, 64, 4.0, batch_size=1), maps)


@pytest.mark.parametrize("grid, image_size, sigma", [((14, 14), 224, 4.0), ((6, 9), 64, 2.0), ((28, 28), 392, 4.0)])
def test_maps_equal_upsampling_then_the_2d_gaussian_convolution(grid, image_size, sigma):
    """The separable operators give the maps of the direct computation (bilinear upsampling to
    S x S, then torchvision's 2-D Gaussian blur with reflect padding), to float rounding."""
    import torch
    import torch.nn.functional as F
    from torchvision.transforms.functional import gaussian_blur

    from raylab.tasks.anomaly.maps import gaussian_kernel_size

    scores = np.random.default_rng(0).random((5, *grid), dtype=np.float32)
    direct = F.interpolate(torch.from_numpy(scores)[:, None], size=(image_size, image_size), mode="bilinear")
    direct = gaussian_blur(direct, kernel_size=gaussian_kernel_size(sigma), sigma=sigma)[:, 0].numpy()
    np.testing.assert_allclose(patch_scores_to_maps(scores, image_size, sigma), direct, rtol=0, atol=1e-5)


def test_reduce_to_image_scores_hand_case():
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, 3, 3] = 5.0
    maps[1] = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_array_equal(reduce_to_image_scores(maps, "max"), [5.0, 99.0])
    # Top 3% of 100 pixels = 3 pixels.
    np.testing.assert_allclose(reduce_to_image_scores(maps, "top_fraction_mean", 0.03), [5.0 / 3, 98.0])
    # Top 1% of 100 pixels is the maximum; a tiny fraction still takes one pixel.
    np.testing.assert_allclose(reduce_to_image_scores(maps, "top_fraction_mean"), [5.0, 99.0])
    np.testing.assert_allclose(reduce_to_image_scores(maps, "top_fraction_mean", 1e-6), [5.0, 99.0])
    np.testing.assert_allclose(reduce_to_image_scores(maps, "top_fraction_mean", 1.0), [0.05, 49.5])
    with pytest.raises(ValueError, match="median"):
        reduce_to_image_scores(maps, "median")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the job: settings as Ray tasks, logged to MLflow


def _parent_run(client: mlflow.MlflowClient, name: str):
    experiment = client.get_experiment_by_name("raylab/patchcore_eval")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return parent


@pytest.mark.e2e
def test_setting_task_logs_nested_run(shared_data, ray_session, tmp_path):
    result = run(
        get_experiment("patchcore_eval"),
        [
            "--dataset",
            "magnetic_tile",
            "--data-root",
            str(shared_data),
            "--quick",
            "--set",
            "quick_images_per_group=10",
            "--set",
            "quick_coreset_ratio=0.05",
            "--set",
            f"patchcore.features.image_size={IMAGE_SIZE}",
            "--noise-ratios",
            "0.1",
            "--seeds",
            "1",
        ],
    )
    (row,) = result["rows"]
    assert (row["method"], row["dataset"], row["noise_ratio"], row["seed"]) == ("patchcore", "magnetic_tile", 0.1, 1)
    assert set(row["per_class"]) == {"magnetic_tile"}

    client = mlflow.MlflowClient(tracking_uri())
    parent_run = _parent_run(client, result["name"])
    assert parent_run.info.status == "FINISHED"
    children = client.search_runs(
        [parent_run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run.info.run_id}'"
    )
    assert len(children) == 1
    child = children[0]
    assert child.info.status == "FINISHED"
    tags = child.data.tags
    assert tags["raylab.method"] == "patchcore"
    assert tags["raylab.dataset"] == "magnetic_tile"
    assert tags["raylab.noise_ratio"] == "0.1"
    assert tags["raylab.seed"] == "1"
    assert child.data.params["patchcore.features.image_size"] == str(IMAGE_SIZE)
    assert child.data.params["patchcore.coreset_ratio"] == "0.05"
    for name in ("image_auroc", "image_ap", "pixel_auroc", "aupro"):
        assert child.data.metrics[name] == pytest.approx(row["metrics"][name]), name
        assert 0.0 <= child.data.metrics[name] <= 1.0

    run_id = child.info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"per_class_metrics.csv", "roc_image.png", "protocol_manifest.csv", "overlays_magnetic_tile.png"} <= top
    model_uri = json.loads(tags["raylab.models"])["magnetic_tile"]

    # The job's --quick corpus: the same stratified subsample, 10 per (split, label) group.
    tiny = subsample_corpus(load_corpus("magnetic_tile", shared_data), per_group=10)
    local = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    per_class = pd.read_csv(local / "per_class_metrics.csv")
    assert per_class["class_name"].tolist() == ["magnetic_tile"]
    assert per_class["image_auroc"].iloc[0] == pytest.approx(row["metrics"]["image_auroc"])
    manifest = pd.read_csv(local / "protocol_manifest.csv")
    assert manifest["count_before"].sum() == manifest["count_after"].sum() == tiny.num_rows
    assert manifest.loc[manifest["injected_noise"], "count_after"].sum() == 1  # round(0.1 x 10 good)
    assert (local / "roc_image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The logged MLflow model, loaded as any MLflow user would, reproduces the logged metric
    # from the setting's test images themselves (decoded and embedded inside the model).
    model = mlflow.pyfunc.load_model(model_uri)
    (view,) = class_splits(inject_noise(tiny, NoiseProtocol(0.1, seed=1)).table, IMAGE_SIZE)
    by_id = dict(zip(tiny.column("sample_id").to_pylist(), tiny.column("image").to_pylist(), strict=True))
    scored = model.predict(pd.DataFrame({"image": [by_id[base_sample_id(i)] for i in view.test_ids]}))
    assert anomaly_metrics(view.test_labels, scored["image_score"].to_numpy())["image_auroc"] == pytest.approx(
        row["metrics"]["image_auroc"]
    )


@pytest.mark.e2e
def test_patchcore_job_summary_contract(shared_data, corpus, features, ray_session, tmp_path):
    config = tmp_path / "quick.yaml"
    config.write_text(
        yaml.safe_dump({"quick_images_per_group": PER_GROUP, "patchcore": {"features": {"image_size": IMAGE_SIZE}}})
    )
    summary = tmp_path / "out" / "summary.json"
    result = run(
        get_experiment("patchcore_eval"),
        [
            "--dataset",
            "magnetic_tile",
            "--data-root",
            str(shared_data),
            "--quick",
            "--config",
            str(config),
            "--seeds",
            "0",
            "--noise-ratios",
            "0.05",
            "--injected-in-test",
            "both",
            "--summary-json",
            str(summary),
        ],
    )
    data = json.loads(summary.read_text())
    assert data["job"] == "patchcore_eval"
    assert data["sweep"] == result["name"] and data["axes"] == ["noise_ratio", "injected_in_test", "seed"]
    # Both test protocols, one row each, on the same training set but different test sets.
    by_protocol = {r["injected_in_test"]: r for r in data["rows"]}
    assert sorted(by_protocol) == ["kept", "removed"] and len(data["rows"]) == 2
    assert by_protocol["kept"]["metrics"] != by_protocol["removed"]["metrics"]
    assert set(result["table"]["injected_in_test"]) == {"kept", "removed"}
    row = by_protocol["removed"]
    assert (row["method"], row["dataset"], row["noise_ratio"], row["seed"]) == ("patchcore", "magnetic_tile", 0.05, 0)
    for name in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert isinstance(row["metrics"][name], float) and 0.0 <= row["metrics"][name] <= 1.0, name
    assert row["metrics"]["image_auroc"] > 0.6
    assert next(r for r in result["rows"] if r["injected_in_test"] == "removed")["metrics"] == row["metrics"]
    assert result["table"]["n_seeds"].tolist() == [1, 1]
    assert not list(summary.parent.glob(".*.tmp"))  # written atomically

    client = mlflow.MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("raylab/patchcore_eval")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.raylab.noise_ratio = '0.05' and tags.raylab.injected_in_test = 'removed'",
    )
    assert len(runs) == 1 and runs[0].data.params["quick_images_per_group"] == str(PER_GROUP)
    parent_id = runs[0].data.tags["mlflow.parentRunId"]
    assert parent_id == _parent_run(client, result["name"]).info.run_id
    assert {"results_table.txt", "results_table.csv", "config.yaml"} <= {
        a.path for a in client.list_artifacts(parent_id)
    }


def test_quick_reductions_are_the_readme_ones(capsys):
    """--quick: a 60-per-group subsample and a 1% coreset, nothing else changed."""
    quick = run(get_experiment("patchcore_eval"), ["--quick", "--print-config"])["config"]
    default = run(get_experiment("patchcore_eval"), ["--print-config"])["config"]
    capsys.readouterr()
    assert (default.images_per_group, default.patchcore.coreset_ratio) == (None, 0.1)
    assert (quick.images_per_group, quick.patchcore.coreset_ratio) == (60, 0.01)
    assert quick.patchcore.features == default.patchcore.features and quick.noise_ratios == default.noise_ratios


def test_bad_values_fail_before_ray_naming_the_key(monkeypatch, capsys):
    import raylab.experiment.session as session

    def refuse(**_):
        raise AssertionError("the runner started Ray before rejecting the input")

    monkeypatch.setattr(session, "init_ray", refuse)
    cases = {
        (
            "--set",
            "patchcore.coreset_ratio=notanumber",
        ): "--set: patchcore.coreset_ratio: expected float, got str 'notanumber'",
        ("--set", "patchcore.coreset_ratio=0"): "--set: patchcore.coreset_ratio: must lie in (0, 1], got 0.0",
        ("--set", "quick_images_per_group=0"): "--set: quick_images_per_group: must be >= 1, got 0",
        ("--noise-ratios", "0,x"): "--noise-ratios '0,x': 'x' is not a valid float",
        ("--noise-ratios", "0,,0.1"): "--noise-ratios '0,,0.1': expected comma-separated values",
        ("--noise-ratios", "1.5"): "--noise-ratios: noise ratios must lie in [0, 1), got [1.5]",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            run(get_experiment("patchcore_eval"), list(argv))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv
