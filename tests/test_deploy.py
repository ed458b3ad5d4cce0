"""Deploying fitted detectors: scorer folders, MLflow models, batch scoring, promotion.

Everything runs on real magnetic-tile images with the real backbone; the MLflow store is
the session's SQLite file and models are read back through ``mlflow.pyfunc.load_model``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import requests
import torch

from raylab.artefacts import CorruptArtefactError
from raylab.data import load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.deploy.batch import PredictOptions, predict
from raylab.deploy.load_test import run_load
from raylab.deploy.logged_models import MODELS_TAG
from raylab.deploy.promote import Promotion, parse_filters, promote
from raylab.deploy.serving import ServeOptions, start
from raylab.features import FeatureSpec
from raylab.features.extract import PatchFeatureExtractor, warm_backbone_state
from raylab.tasks.anomaly.artifacts import images_of
from raylab.tasks.anomaly.benchmark import class_splits, evaluate_fitted
from raylab.tasks.anomaly.patchcore import PatchCoreConfig
from raylab.tasks.anomaly.patchcore.model import PatchCore
from raylab.tasks.anomaly.scorer import AnomalyScorer, log_anomaly_model, save_scorer
from raylab.tracking import tracked_run

IMAGE_SIZE = 112
SPEC = FeatureSpec(image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> pa.Table:
    return subsample_corpus(load_corpus("magnetic_tile", shared_data), 12)


@pytest.fixture(scope="module")
def extractor() -> PatchFeatureExtractor:
    return PatchFeatureExtractor(SPEC, threads=2)


class _InProcessFeatures:
    """Features of the corpus by sample id, extracted in this process (no Ray needed here)."""

    def __init__(self, corpus: pa.Table, extractor: PatchFeatureExtractor) -> None:
        self.corpus, self.extractor = corpus, extractor

    def take(self, sample_ids) -> np.ndarray:
        ids = list(sample_ids)
        return self.extractor(
            {"image": np.asarray(images_of(self.corpus, ids), dtype=object), "sample_id": np.asarray(ids)}
        )["patches"]


@pytest.fixture(scope="module")
def evaluation(corpus, extractor):
    (split,) = class_splits(corpus, IMAGE_SIZE)
    features = _InProcessFeatures(corpus, extractor)
    detector = PatchCore(PatchCoreConfig(features=SPEC, coreset_ratio=0.1), seed=0).fit(features.take(split.train_ids))
    return evaluate_fitted(detector, split, features)


def test_scorer_scores_exactly_as_the_fitted_detector(evaluation, corpus, tmp_path):
    folder = save_scorer(
        tmp_path / "scorer",
        evaluation.detector,
        SPEC,
        image_threshold=0.5,
        class_name="magnetic_tile",
        metrics=evaluation.metrics,
    )
    scorer = AnomalyScorer(folder, threads=2)
    prediction = scorer.score(images_of(corpus, evaluation.test_ids), evaluation.test_ids, with_maps=True)
    np.testing.assert_array_equal(prediction.image_scores, evaluation.prediction.image_scores)
    np.testing.assert_array_equal(prediction.maps, evaluation.prediction.maps)
    table = scorer.frame(prediction)
    assert table["is_anomalous"].tolist() == (prediction.image_scores >= 0.5).tolist()
    assert scorer.info["kind"] == "patchcore" and scorer.image_size == IMAGE_SIZE


def test_backbone_weights_are_built_once_per_spec_and_again_for_a_rewritten_file(tmp_path):
    """Every model a sweep logs on one backbone saves the same weights; a rewritten file is read anew."""
    from raylab.features.backbones import load_state_dict_file, resolve_weights_path

    source = load_state_dict_file(resolve_weights_path(SPEC.backbone.weights))
    path = tmp_path / "lite0.pth"
    torch.save(source, path)
    spec = dataclasses.replace(SPEC, backbone=dataclasses.replace(SPEC.backbone, weights=str(path)))
    first = warm_backbone_state(spec)
    assert warm_backbone_state(spec) is first
    stem = next(k for k in source if k.endswith("conv_stem.weight"))
    torch.save({**source, stem: source[stem] + 1.0}, path)
    rewritten = warm_backbone_state(spec)
    changed = [k for k in first if not torch.equal(first[k], rewritten[k])]
    assert rewritten is not first and [k.rpartition(".")[0].endswith("conv_stem") for k in changed] == [True]


def test_scorer_refuses_a_changed_or_missing_file(evaluation, tmp_path):
    folder = save_scorer(
        tmp_path / "scorer", evaluation.detector, SPEC, image_threshold=0.5, class_name="magnetic_tile", metrics={}
    )
    weights = folder / "backbone.safetensors"
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CorruptArtefactError, match=r"backbone\.safetensors: checksum differs"):
        AnomalyScorer(folder)
    weights.write_bytes(original)
    bank = next((folder / "detector").iterdir())
    bank.unlink()
    with pytest.raises(CorruptArtefactError, match=rf"{bank.name}: missing"):
        AnomalyScorer(folder)


def test_scorer_names_an_image_it_cannot_decode(evaluation, tmp_path):
    folder = save_scorer(
        tmp_path / "scorer", evaluation.detector, SPEC, image_threshold=0.5, class_name="magnetic_tile", metrics={}
    )
    with pytest.raises(ValueError, match="upload-7: cannot decode image"):
        AnomalyScorer(folder).score([b"not an image"], ["upload-7"])


def test_logged_model_loads_through_mlflow_and_scores_the_same(evaluation, corpus, tmp_path):
    images = images_of(corpus, evaluation.test_ids)
    with tracked_run("deploy_test", "patchcore-magnetic_tile", tags={"method": "patchcore"}) as run:
        uri = log_anomaly_model(run, evaluation, SPEC, images[0], tmp_path)
    finished = mlflow.MlflowClient().get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[finished.info.experiment_id],
        filter_string=f"source_run_id = '{run.run_id}'",
        output_format="list",
    )
    assert logged.name == "model-magnetic_tile"
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(pd.DataFrame({"image": images}))
    np.testing.assert_array_equal(out["image_score"].to_numpy(), evaluation.prediction.image_scores)
    # The stored threshold is the test split's F1-optimal one: it separates as well as F1 max says.
    threshold = model.unwrap_python_model().scorer.threshold
    predicted = out["is_anomalous"].to_numpy()
    true_positive = int((predicted & (evaluation.labels == 1)).sum())
    f1 = 2 * true_positive / (predicted.sum() + (evaluation.labels == 1).sum())
    assert f1 == pytest.approx(evaluation.metrics["image_f1_max"]) and np.isfinite(threshold)
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
    assert "torch==" in requirements and "timm==" in requirements


@pytest.fixture(scope="module")
def logged_model(evaluation, corpus, tmp_path_factory) -> str:
    with tracked_run("deploy_test", "patchcore-for-serving", tags={"method": "patchcore"}) as run:
        return log_anomaly_model(
            run, evaluation, SPEC, images_of(corpus, evaluation.test_ids[:1])[0], tmp_path_factory.mktemp("model")
        )


# The whole `raylab predict` job on Ray Data: the e2e tier.
@pytest.mark.e2e
def test_batch_predict_scores_a_folder_as_in_process_and_resumes(
    logged_model, evaluation, corpus, ray_session, tmp_path
):
    folder = tmp_path / "incoming"
    folder.mkdir()
    images = images_of(corpus, evaluation.test_ids)
    for sample_id, image in zip(evaluation.test_ids, images, strict=True):
        (folder / f"{sample_id.replace('/', '_')}.png").write_bytes(image)
    out = tmp_path / "scored"
    options = PredictOptions(actors=1, chunk_size=5)
    first = predict(logged_model, folder, out, options)
    assert first["scored"] == first["images"] == len(images) and first["skipped"] == 0
    results = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))]).set_index("sample_id")
    expected = dict(
        zip(
            [f"{s.replace('/', '_')}.png" for s in evaluation.test_ids], evaluation.prediction.image_scores, strict=True
        )
    )
    assert set(results.index) == set(expected)
    np.testing.assert_allclose(results["image_score"].to_numpy(), [expected[i] for i in results.index], rtol=1e-5)
    scorer_threshold = mlflow.pyfunc.load_model(logged_model).unwrap_python_model().scorer.threshold
    assert results["is_anomalous"].tolist() == (results["image_score"] >= scorer_threshold).tolist()
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == int(results["is_anomalous"].sum()) and overlays[0].read_bytes()[:4] == b"\x89PNG"

    again = predict(logged_model, folder, out, options)
    assert (again["scored"], again["skipped"]) == (0, len(images))  # nothing redone
    lost = sorted(out.glob("part-*.parquet"))[0]
    rows_lost = len(pd.read_parquet(lost))
    lost.unlink()
    third = predict(logged_model, folder, out, options)
    assert third["scored"] == rows_lost and lost.is_file()  # only the missing chunk


def test_batch_predict_rejects_bad_inputs_before_ray(logged_model, tmp_path, no_ray):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: no images"):
        predict(logged_model, empty, tmp_path / "out", PredictOptions())
    (empty / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="models:/m-doesnotexist: no MLflow model there"):
        predict("models:/m-doesnotexist", empty, tmp_path / "out", PredictOptions())
    with pytest.raises(ValueError, match="--overlays must be one of"):
        PredictOptions(overlays="some")


@pytest.fixture(scope="module")
def promoted(logged_model) -> Promotion:
    """Two finished runs of one job share the model; the better one by AUROC at noise 0.1 is promoted."""
    for value, ratio in ((0.71, "0.1"), (0.93, "0.1"), (0.99, "0.2")):
        with tracked_run(
            "deploy_promote_test", f"patchcore-{value}", tags={"method": "patchcore", "noise_ratio": ratio}
        ) as run:
            run.log_metrics({"image_auroc": value})
            run.client.set_tag(run.run_id, MODELS_TAG, json.dumps({"magnetic_tile": logged_model}))
            if value == 0.93:
                best_run_id = run.run_id
    done = promote("deploy_promote_test", "image_auroc", name="magnetic-tile-test", where={"noise_ratio": "0.1"})
    assert done.run_id == best_run_id and done.value == pytest.approx(0.93)
    return done


def test_promote_registers_the_best_run_under_an_alias(promoted):
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("magnetic-tile-test", "champion")
    assert str(version.version) == promoted.version
    assert version.tags["raylab.metric"] == "image_auroc" and version.tags["raylab.setting.noise_ratio"] == "0.1"
    assert version.tags["raylab.run_id"] == promoted.run_id
    with pytest.raises(LookupError, match="no finished run with models and metric 'pixel_auroc'"):
        promote("deploy_promote_test", "pixel_auroc", name="magnetic-tile-test")
    with pytest.raises(ValueError, match="--where 'noise_ratio': expected KEY=VALUE"):
        parse_filters(["noise_ratio"])


@pytest.fixture(scope="module")
def service(promoted, ray_session):
    """The promoted model served from the registry alias, on loopback, for this module's tests."""
    from ray import serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = start(
        promoted.registry_uri(), ServeOptions(port=port, cpus_per_replica=0.5, max_batch_size=4), app_name="deploy-test"
    )
    _wait_healthy(url)
    yield url
    serve.delete("deploy-test")
    serve.shutdown()


def _wait_healthy(url: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy in {seconds} s")
        time.sleep(0.5)


@pytest.mark.ops
def test_served_scores_equal_offline_scores(service, evaluation, corpus, promoted):
    images = images_of(corpus, evaluation.test_ids)
    served = [requests.post(f"{service}/predict", data=image, timeout=60).json() for image in images]
    np.testing.assert_allclose([s["image_score"] for s in served], evaluation.prediction.image_scores, rtol=1e-5)
    with_map = requests.post(f"{service}/predict?heatmap=true", data=images[0], timeout=60).json()
    assert base64.b64decode(with_map["heatmap_png_base64"])[:4] == b"\x89PNG"
    described = requests.get(f"{service}/model", timeout=10).json()
    assert described["alias"] == "champion" and str(described["version"]) == promoted.version
    assert described["tags"]["raylab.run_id"] == promoted.run_id


@pytest.mark.ops
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_service_keeps_serving(service, corpus, evaluation):
    import io

    from PIL import Image

    def png(mode: str) -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, (32, 32)).save(buffer, format="PNG")
        return buffer.getvalue()

    cases = {
        b"": (400, "empty body"),
        b"definitely not an image": (415, "not an image"),
        png("RGBA"): (422, "RGBA (4 channels)"),
        png("LA"): (422, "LA (2 channels)"),
        b"\x00" * (20 * 1024 * 1024 + 1): (413, "exceeds the limit"),
    }
    for body, (status, message) in cases.items():
        answer = requests.post(f"{service}/predict", data=body, timeout=60)
        assert answer.status_code == status and message in answer.json()["error"], (status, answer.text[:200])
    assert requests.get(f"{service}/nowhere", timeout=10).status_code == 404
    good = requests.post(f"{service}/predict", data=images_of(corpus, evaluation.test_ids[:1])[0], timeout=60)
    assert good.status_code == 200 and np.isfinite(good.json()["image_score"])


@pytest.mark.ops
def test_bounded_load_on_loopback(service, corpus, evaluation):
    """A fixed number of requests at a fixed concurrency: every one answered, latency reported."""
    image = images_of(corpus, evaluation.test_ids[:1])[0]
    result = run_load(f"{service}/predict", image, requests_total=40, concurrency=4)
    print(f"\nload test: {result}")
    assert result["errors"] == 0 and result["requests"] == 40 and result["p99_ms"] >= result["p50_ms"] > 0
