"""NNGuide and its baselines: detectors against brute force, real weights, Ray Data, Ray Train, the job."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from raylab.tasks.ood.config import EnergyConfig, KNNConfig, MaxLogitConfig, MSPConfig, NNGuideConfig
from raylab.tasks.ood.detectors import (
    LinearHead,
    ModelOutputs,
    NNGuideDetector,
    fit_detector,
    sample_bank,
)

# ---------------------------------------------------------------------------- helpers


def _outputs(n: int, d: int = 8, c: int = 4, seed: int = 0, shift: float = 0.0) -> tuple[ModelOutputs, LinearHead]:
    """Non-negative (post-ReLU-like) features and logits that are exactly ``head(features)``."""
    rng = np.random.default_rng(seed)
    head = LinearHead(rng.normal(size=(c, d)).astype(np.float32), rng.normal(size=c).astype(np.float32) + shift)
    features = np.maximum(rng.normal(size=(n, d)), 0).astype(np.float32) + 0.01
    return ModelOutputs(features, head(features)), head


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _lse(logits: np.ndarray) -> np.ndarray:
    return np.log(np.sum(np.exp(logits.astype(np.float64)), axis=1))


# ---------------------------------------------------------------------------- detectors


def test_logit_detectors_match_their_formulas():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-5.0, 10.0, -1.0]], dtype=np.float32)
    outputs = ModelOutputs(np.ones((3, 2), np.float32), logits)
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.allclose(fit_detector(MSPConfig(), outputs).confidence(outputs), softmax.max(1))
    assert np.allclose(fit_detector(MaxLogitConfig(), outputs).confidence(outputs), [3.0, 0.0, 10.0])
    # energy by hand: log(e^1 + e^2 + e^3) = 3.40760596, log 3, ...
    energy = fit_detector(EnergyConfig(), outputs).confidence(outputs)
    assert np.allclose(energy, [3.40760596444438, math.log(3.0), _lse(logits[2:])[0]])
    tempered = fit_detector(EnergyConfig(temperature=2.0), outputs).confidence(outputs)
    assert np.allclose(tempered, 2.0 * _lse(logits / 2.0))


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_knn_is_the_kth_normalised_distance(ratio):
    source, _ = _outputs(60, seed=1)
    queries, _ = _outputs(9, seed=2)
    detector = fit_detector(KNNConfig(k=3, bank_ratio=ratio, bank_seed=4), source)
    rows = np.arange(60) if ratio == 1.0 else np.sort(np.random.default_rng(4).choice(60, 30, replace=False))
    assert np.array_equal(detector.bank_rows, rows)
    distances = np.linalg.norm(_normalise(queries.features)[:, None] - _normalise(source.features[rows])[None], axis=2)
    expected = -np.sort(distances, axis=1)[:, 2]
    assert np.allclose(detector.confidence(queries), expected, atol=1e-5)


def test_nnguide_hand_computed_case():
    # Bank: two orthogonal unit features with energies 2 and 1 (one class: energy = the logit).
    source = ModelOutputs(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([[2.0], [1.0]], np.float32))
    query = ModelOutputs(np.array([[1.0, 1.0]], np.float32), np.array([[3.0]], np.float32))
    detector = fit_detector(NNGuideConfig(k=2, bank_ratio=1.0), source)
    # G = mean(2 / sqrt 2, 1 / sqrt 2) = 1.5 / sqrt 2; score = 3 * G = 4.5 / sqrt 2.
    assert detector.confidence(query)[0] == pytest.approx(4.5 / math.sqrt(2), rel=1e-6)


@pytest.mark.parametrize("base", ["energy", "msp", "maxlogit"])
def test_nnguide_matches_numpy_topk_of_scaled_inner_products(base):
    source, _ = _outputs(200, shift=3.0, seed=5)
    queries, _ = _outputs(15, shift=3.0, seed=6)
    config = NNGuideConfig(k=5, bank_ratio=0.25, base_score=base, bank_seed=1)
    detector = fit_detector(config, source)
    rows = np.sort(np.random.default_rng(1).choice(200, 50, replace=False))
    assert np.array_equal(detector.bank_rows, rows)

    def confidence(logits):
        if base == "energy":
            return _lse(logits)
        if base == "msp":
            return np.exp(logits.max(1)) / np.exp(logits.astype(np.float64)).sum(1)
        return logits.max(1).astype(np.float64)

    bank_confidence = confidence(source.logits[rows])
    assert (bank_confidence > 0).all()  # the sign guard is a no-op here: official formula
    scaled = _normalise(source.features[rows]) * bank_confidence[:, None]
    similarities = _normalise(queries.features) @ scaled.T
    guidance = np.sort(similarities, axis=1)[:, ::-1][:, :5].mean(1)
    parts = detector.components(queries)
    assert np.allclose(parts["guidance"], guidance, rtol=1e-5)
    assert np.allclose(detector.confidence(queries), guidance * confidence(queries.logits), rtol=1e-5)


def test_react_clips_at_the_percentile_of_fit_activations_and_recomputes_logits():
    source, head = _outputs(100, seed=7)
    queries, _ = _outputs(20, seed=8)
    detector = fit_detector(EnergyConfig(react_percentile=90.0), source, head)
    threshold = np.percentile(source.features, 90.0)
    assert detector.react.threshold == pytest.approx(threshold)
    prepared = detector.prepare(queries)
    assert prepared.features.max() <= threshold + 1e-6
    assert (queries.features > threshold).any()  # something was clipped
    clipped = np.minimum(queries.features, threshold)
    assert np.allclose(prepared.logits, clipped.astype(np.float64) @ head.weight.T + head.bias, atol=1e-5)
    assert np.allclose(detector.confidence(queries), _lse(prepared.logits), atol=1e-5)
    assert not np.allclose(detector.confidence(queries), fit_detector(EnergyConfig(), source).confidence(queries))
    with pytest.raises(ValueError, match="linear head"):
        fit_detector(EnergyConfig(react_percentile=90.0), source)


def test_sign_guard_with_negative_energy():
    # Logits all below -10: every energy (logsumexp) is negative, bank and queries.
    bank = ModelOutputs(
        np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([[-11.0, -14.0], [-12.0, -13.0]], np.float32)
    )
    near = np.array([[1.0, 0.0]], np.float32)  # on top of a bank entry: strong guidance
    far = np.array([[0.6, 0.8]], np.float32)  # between them: weaker top-1 guidance
    same_logits = np.array([[-11.5, -13.0]], np.float32)
    queries = ModelOutputs(np.concatenate([near, far]), np.concatenate([same_logits, same_logits]))
    energy = _lse(bank.logits)
    assert (energy < 0).all() and (_lse(queries.logits) < 0).all()

    # Official formula: negative confidences flip the ranking (the near query scores lower).
    off = fit_detector(NNGuideConfig(k=1, bank_ratio=1.0, sign_guard="off"), bank)
    raw = off.confidence(queries)
    assert raw[0] < raw[1]

    with pytest.raises(ValueError, match="negative energy"):
        fit_detector(NNGuideConfig(k=1, bank_ratio=1.0, sign_guard="error"), bank)

    guarded = fit_detector(NNGuideConfig(k=1, bank_ratio=1.0), bank)
    assert isinstance(guarded, NNGuideDetector)
    assert guarded.offset == pytest.approx(energy.min())  # shift so the least confident bank entry scales by 0
    parts = guarded.components(queries)
    shifted = parts["base"] - guarded.offset
    assert (shifted > 0).all()
    assert parts["confidence"][0] > parts["confidence"][1]  # stronger guidance ranks higher again
    assert np.allclose(parts["confidence"], np.maximum(parts["guidance"], 0) * shifted)
    # A query less confident than every bank entry scores its (negative) shifted confidence,
    # below every guided score, and stays ordered by confidence.
    hopeless = ModelOutputs(
        np.array([[1.0, 0.0], [1.0, 0.0]], np.float32), np.array([[-20.0, -20.0], [-30.0, -30.0]], np.float32)
    )
    low = guarded.confidence(hopeless)
    assert np.allclose(low, _lse(hopeless.logits) - guarded.offset)
    assert low[1] < low[0] < 0 < parts["confidence"].min()


def test_images_fingerprint_counts_a_slices_own_images_only():
    """A slice shares its parent's buffers; its outputs' cache key must still be its own."""
    import pyarrow as pa

    from raylab.tasks.ood.outputs import images_fingerprint

    table = pa.table({"sample_id": [f"s{i}" for i in range(10)], "image": [bytes([i]) * 5 for i in range(10)]})
    first, second = table.slice(0, 5), table.slice(5, 5)
    assert images_fingerprint(first) != images_fingerprint(second)
    assert images_fingerprint(first) == images_fingerprint(table.take(pa.array(range(5))))


def test_refitting_with_new_hyperparameters_is_never_stale():
    source, head = _outputs(300, shift=3.0, seed=9)
    queries, _ = _outputs(25, shift=3.0, seed=10)
    first = fit_detector(NNGuideConfig(k=1, bank_ratio=0.5), source).confidence(queries)
    changed = fit_detector(NNGuideConfig(k=20, bank_ratio=0.5), source).confidence(queries)
    again = fit_detector(NNGuideConfig(k=1, bank_ratio=0.5), source).confidence(queries)
    assert not np.allclose(first, changed)
    assert np.array_equal(first, again)
    knn_1 = fit_detector(KNNConfig(k=1), source).confidence(queries)
    knn_9 = fit_detector(KNNConfig(k=9), source).confidence(queries)
    assert (knn_9 <= knn_1 + 1e-7).all() and not np.allclose(knn_1, knn_9)
    # A bank too small for k is an error, not a silently enlarged bank.
    with pytest.raises(ValueError, match="fewer than k=10"):
        sample_bank(300, 0.01, 0, at_least=10)


def test_boundary_negates_once_and_metrics_have_the_contract_keys():
    from raylab.tasks.ood.benchmark import evaluate_detector, flat_metrics, ood_scores

    id_test = ModelOutputs(np.ones((4, 2), np.float32), np.array([[9.0, 0.0]] * 4, np.float32))
    ood = ModelOutputs(np.ones((4, 2), np.float32), np.array([[0.0, 0.1]] * 4, np.float32))
    detector = fit_detector(MaxLogitConfig(), id_test)
    assert np.array_equal(ood_scores(detector, ood), -detector.confidence(ood))
    per_set = evaluate_detector(detector, id_test, {"a": ood, "b": ood})
    assert list(per_set) == ["a", "b", "average"]
    assert per_set["average"]["auroc"] == per_set["a"]["auroc"] == 1.0 and per_set["b"]["fpr95"] == 0.0
    assert {"auroc", "fpr95", "aupr_in", "aupr_out"} <= set(per_set["a"])
    flat = flat_metrics(per_set)
    assert flat["auroc"] == per_set["average"]["auroc"] and flat["aupr_out/b"] == per_set["b"]["aupr_out"]


# ---------------------------------------------------------------------------- classifiers and data


@pytest.fixture(scope="module")
def cifar_corpus(shared_data: Path):
    """The CIFAR-10 protocol corpus (500 train + 500 test per class, split seed 0), loaded once."""
    from raylab.data import load_corpus

    return load_corpus("cifar10_test", shared_data)


@pytest.fixture(scope="module")
def cifar_subset(cifar_corpus):
    """500 ID test images: the first 50 of each class's test split."""
    test = cifar_corpus.filter(pc.equal(cifar_corpus.column("split"), "test"))
    labels = np.asarray(test.column("label").to_pylist())
    rows = np.concatenate([np.flatnonzero(labels == c)[:50] for c in range(10)])
    return test.take(rows)


def _resnet_config(shared_weights: Path, arch: str):
    from raylab.data.images import IMAGENET_MEAN, IMAGENET_STD
    from raylab.tasks.ood.config import ClassifierConfig

    return ClassifierConfig(
        kind="cifar_resnet",
        arch=arch,
        num_classes=10,
        weights=str(shared_weights / f"cifar10_{arch}.th"),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


def test_cifar_resnets_load_strict_and_resnet20_classifies_the_jpeg_copy(shared_weights, cifar_subset):
    from raylab.tasks.ood.classifiers import build_classifier
    from raylab.tasks.ood.outputs import extract_outputs_local

    for arch in ("resnet20", "resnet56"):
        config = _resnet_config(shared_weights, arch)
        checkpoint = torch.load(config.weights, map_location="cpu", weights_only=True)["state_dict"]
        model = build_classifier(config)  # load_state_dict(strict=True) inside
        expected = {k.removeprefix("module.") for k in checkpoint}
        assert expected == {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert cifar_subset.num_rows == 500
    outputs = extract_outputs_local(cifar_subset, _resnet_config(shared_weights, "resnet20"))
    labels = dict(
        zip(cifar_subset.column("sample_id").to_pylist(), cifar_subset.column("label").to_pylist(), strict=True)
    )
    truth = np.array([labels[s] for s in outputs.sample_ids])
    assert outputs.features.shape == (500, 64) and outputs.features.min() >= 0  # post-ReLU pooled features
    assert np.mean(outputs.logits.argmax(1) == truth) >= 0.78


def test_timm_classifier_from_a_weight_file(tmp_path):
    import timm

    from raylab.tasks.ood.classifiers import build_classifier
    from raylab.tasks.ood.config import ClassifierConfig

    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    path = tmp_path / "test_resnet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    model = build_classifier(ClassifierConfig(kind="timm", arch="test_resnet", num_classes=10, weights=str(path)))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model.head(model.features(pixels)), reference(pixels), atol=1e-5)
    wrong = ClassifierConfig(kind="timm", arch="test_resnet", num_classes=7, weights=str(path))
    with pytest.raises((RuntimeError, ValueError)):
        build_classifier(wrong)  # strict: a checkpoint of another head never half-loads


def test_ood_adapters_follow_the_protocol(shared_data, cifar_corpus):
    from raylab.data import load_corpus

    splits = np.asarray(cifar_corpus.column("split").to_pylist())
    labels = np.asarray(cifar_corpus.column("label").to_pylist())
    for label in range(10):
        assert np.sum((labels == label) & (splits == "train")) == np.sum((labels == label) & (splits == "test")) == 500
    assert load_corpus("dtd_subset", shared_data).num_rows == 400
    assert load_corpus("tiny_imagenet_val", shared_data).num_rows == 2000
    mnist = load_corpus("mnist_t10k", shared_data)
    assert mnist.num_rows == 2000 and mnist.column("label").to_pylist()[:3] == [7, 2, 1]
    open_set = load_corpus("mnist_open_set")
    unknown = open_set.filter(pc.greater_equal(open_set.column("label"), 6))
    assert unknown.num_rows == 2000 and set(unknown.column("split").to_pylist()) == {"test"}
    assert open_set.column("split").equals(load_corpus("mnist_open_set").column("split"))  # seeded
    assert not open_set.column("split").equals(load_corpus("mnist_open_set", split_seed=1).column("split"))


def test_ray_data_extraction_equals_in_process(ray_session, shared_weights, cifar_subset):
    from raylab.tasks.ood.outputs import extract_outputs, extract_outputs_local, outputs_cache_directory

    table = cifar_subset.slice(0, 96)
    config = _resnet_config(shared_weights, "resnet20")
    local = extract_outputs_local(table, config)
    distributed = extract_outputs(table, config, batch_size=32)
    assert np.array_equal(local.sample_ids, distributed.sample_ids)
    assert np.allclose(local.features, distributed.features, atol=1e-4)
    assert np.allclose(local.logits, distributed.logits, atol=1e-4)
    cached = extract_outputs(table, config, batch_size=32)  # second call: from the cache
    assert np.array_equal(cached.logits, distributed.logits)
    # A damaged entry is never read: the warning names the file, the outputs are extracted again.
    entry = outputs_cache_directory(table, config, None)
    data = bytearray((entry / "logits.npy").read_bytes())
    data[len(data) // 2] ^= 0x01
    (entry / "logits.npy").write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="logits.npy: checksum differs"):
        rebuilt = extract_outputs(table, config, batch_size=32)
    assert np.allclose(rebuilt.logits, distributed.logits, atol=1e-4)


# ---------------------------------------------------------------------------- Ray Train and the job


def _job(argv: list[str]) -> dict:
    from raylab.experiment import get_experiment, run

    return run(get_experiment("nnguide_eval"), argv)


def _quick_job_config():
    """The config ``--quick`` resolves to (the quick reductions applied)."""
    return _job(["--quick", "--print-config"])["config"]


def test_ray_train_classifier_two_workers_with_checkpoints(ray_session):
    """Trains exactly what ``--quick`` trains (same data, config, seed), so the job test reuses it."""
    from raylab.methods.nnguide.experiment import training_data
    from raylab.methods.nnguide.training import FINAL_STATE, train_classifier
    from raylab.tasks.ood.benchmark import build_benchmark
    from raylab.tasks.ood.classifiers import build_classifier

    config = _quick_job_config()
    assert config.max_test_images_per_role == config.quick.max_test_images_per_role
    bench = build_benchmark(config.benchmark, None, 0, max_per_role=config.max_test_images_per_role)
    pixels, labels = training_data(bench, config)
    train = config.train
    assert train.epochs == config.quick.epochs and train.num_workers == 2
    trained = train_classifier(pixels, labels, config.classifier, train, seed=0)
    assert trained.metrics["epoch"] == train.epochs - 1
    run = Path(trained.run_path)
    checkpoints = sorted(run.glob("checkpoint_*/state.pt"))
    assert 1 <= len(checkpoints) <= train.checkpoints_to_keep
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "epoch"} <= set(state)
    assert (run / FINAL_STATE).is_file()
    model = build_classifier(config.classifier, trained.state_dict)
    with torch.inference_mode():
        predictions = model(torch.from_numpy(pixels[:300])).argmax(1).numpy()
    assert np.mean(predictions == labels[:300]) > 0.6  # well above chance (1/6) after a few epochs


@pytest.mark.e2e
def test_job_quick_end_to_end_summary_contract(ray_session, tmp_path):
    summary = tmp_path / "summary.json"
    result = _job(["--quick", "--summary-json", str(summary)])
    data = json.loads(summary.read_text())
    assert data["job"] == "nnguide_eval" and data["classifier"] == "small_cnn" and data["axes"] == ["seed"]
    assert data["rows"] == json.loads(json.dumps(result["rows"], default=str))
    methods = list(dict.fromkeys(row["method"] for row in data["rows"]))
    assert set(_quick_job_config().detectors) | {"nnguide_tuned"} == set(methods)
    for method in methods:
        rows = {row["ood_set"]: row for row in data["rows"] if row["method"] == method}
        sets = ["digits_6_9", "average"] if method == "nnguide_tuned" else ["digits_6_9", "textures", "average"]
        assert sorted(rows) == sorted(sets)  # the tuned detector is never reported on its validation-OOD set
        for row in rows.values():
            assert row["dataset"] == "mnist_open_set" and "noise_ratio" not in row and row["seed"] == 0
            assert 0.5 < row["id_accuracy"] <= 1.0
            for key in ("auroc", "fpr95", "aupr_in", "aupr_out"):
                assert 0.0 <= row["metrics"][key] <= 1.0
        for key in ("auroc", "fpr95"):
            reported = [rows[name]["metrics"][key] for name in sets if name != "average"]
            assert rows["average"]["metrics"][key] == pytest.approx(np.mean(reported))
    tuned = next(row for row in data["rows"] if row["method"] == "nnguide_tuned")
    assert tuned["validation_ood"] == "textures" and tuned["trials"] == _quick_job_config().quick.sweep_samples
    assert result["text"].startswith("mnist_open_set / small_cnn: ID test accuracy seed 0: ")

    import mlflow

    from raylab.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("raylab/nnguide_eval")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 1 + 1 + len(methods)  # parent, classifier, one per detector
    assert parents[0].info.run_name == result["name"]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"results_table.txt", "results_table.csv", "auroc_fpr95.png", "config.yaml"} <= artifacts

    # NNGuide with its classifier is an MLflow model: loaded from the store and fed the
    # benchmark's own ID-test and OOD images as encoded files, it reproduces the logged AUROC.
    import pandas as pd

    from raylab.eval.anomaly import image_metrics
    from raylab.tasks.ood.benchmark import build_benchmark

    config = _quick_job_config()
    bench = build_benchmark(config.benchmark, None, 0, max_per_role=config.max_test_images_per_role)
    nnguide = next(name for name in config.detectors if name.startswith("nnguide"))
    nnguide_run = next(r for r in runs if r.data.tags.get("raylab.method") == nnguide)
    model = mlflow.pyfunc.load_model(json.loads(nnguide_run.data.tags["raylab.models"])["id"])
    ids = [*bench.roles["id_test"], *bench.roles["ood/digits_6_9"]]
    by_id = dict(
        zip(bench.corpus.column("sample_id").to_pylist(), bench.corpus.column("image").to_pylist(), strict=True)
    )
    scored = model.predict(pd.DataFrame({"image": [by_id[i] for i in ids]}))
    is_ood = np.r_[np.zeros(len(bench.roles["id_test"])), np.ones(len(bench.roles["ood/digits_6_9"]))]
    assert image_metrics(is_ood, scored["ood_score"].to_numpy())["image_auroc"] == pytest.approx(
        nnguide_run.data.metrics["auroc/digits_6_9"], abs=1e-6
    )
    assert set(scored["predicted_class"]) <= set(bench.id_classes)


def _refused(capsys, argv: list[str]) -> str:
    """The runner's exit for a bad input (code 2, before Ray starts); returns its message.

    Config errors are checked with ``--print-config`` (were one missed, nothing would run);
    settings and input checks come after it, so those calls leave it out.
    """
    with pytest.raises(SystemExit) as exit_info:
        _job(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_cli_picks_the_network_config_and_overrides_weights(shared_weights: Path, tmp_path, capsys):
    weights = shared_weights / "cifar10_resnet20.th"
    config = _job(["--dataset", "cifar10", "--network", "resnet20", "--weights", str(weights), "--print-config"])[
        "config"
    ]
    assert config.benchmark.id_dataset == "cifar10_test" and config.classifier.arch == "resnet20"
    assert config.classifier.weights == str(weights)
    default = _job(["--dataset", "cifar10", "--print-config"])["config"]
    assert default.classifier.arch == "resnet56" and default.benchmark.ood_sets.keys() == {
        "dtd",
        "tiny_imagenet",
        "mnist",
    }
    # The (dataset, network) config sits under --set, as a dataset overlay does.
    config = _job(
        [
            "--dataset",
            "cifar10",
            "--set",
            "classifier.weights=other.th",
            "--set",
            "sweep.num_samples=7",
            "--print-config",
        ]
    )["config"]
    assert (
        config.classifier.arch == "resnet56"
        and config.classifier.weights == "other.th"
        and config.sweep.num_samples == 7
    )
    assert not _job(["--no-sweep", "--print-config"])["config"].sweep.enabled
    assert "no default config for cifar10" in _refused(
        capsys, ["--dataset", "cifar10", "--network", "resnet18", "--print-config"]
    )
    assert "no such file" in _refused(
        capsys, ["--dataset", "cifar10", "--weights", str(tmp_path / "missing.th"), "--print-config"]
    )
    # A packaged config named by its old path still resolves, and contradicts --network here.
    mismatch = [
        "--dataset",
        "cifar10",
        "--network",
        "resnet20",
        "--config",
        "configs/nnguide/cifar10_resnet56.yaml",
        "--print-config",
    ]
    assert "classifier.arch is resnet56" in _refused(capsys, mismatch)
    same = _job(
        [
            "--dataset",
            "cifar10",
            "--network",
            "resnet56",
            "--config",
            "configs/nnguide/cifar10_resnet56.yaml",
            "--print-config",
        ]
    )["config"]
    assert same == default
    assert "benchmark.id_dataset is cifar10_test" in _refused(
        capsys, ["--dataset", "mnist_open_set", "--config", "nnguide/cifar10_resnet20", "--print-config"]
    )


def test_bad_values_fail_before_ray_naming_the_key(capsys):
    config_error = ["--print-config", "--set"]
    assert "sweep.num_samples: expected int, got str 'notanumber'" in _refused(
        capsys, [*config_error, "sweep.num_samples=notanumber"]
    )
    assert "sweep.num_samples: must be >= 1" in _refused(capsys, [*config_error, "sweep.num_samples=0"])
    assert "benchmark.validation_fraction: must be in (0, 1)" in _refused(
        capsys, [*config_error, "benchmark.validation_fraction=1.5"]
    )
    assert "--seeds '0,x': 'x' is not a valid int" in _refused(capsys, ["--seeds", "0,x"])
    assert "--seeds '0,,1'" in _refused(capsys, ["--seeds", "0,,1"])
    assert "unknown detector kind 'nope'" in _refused(capsys, ["--seeds", "0", "--set", "detectors.x.kind=nope"])
