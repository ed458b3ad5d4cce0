"""The anomaly family's detector contract, over every registered detector, on real features.

Parametrised over the registry (as anomalib's and timm's model tests are), so a detector
registered with one ``@register_detector`` line gets these checks without this file changing.
The features are the magnetic-tile subset test_patchcore uses (40 images per group, 112 px,
from the session's feature cache); the detectors run at their registered defaults. A detector
from outside raylab (``tests/anomaly_plugin.py``, a user's plug-in module) gets the same
checks and runs through the ``patchcore_eval`` job beside PatchCore, no other file touched.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from raylab.data import load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.features import FeatureSpec
from raylab.features.cache import cached_patch_features
from raylab.tasks.anomaly.benchmark import class_splits
from raylab.tasks.anomaly.detectors import (
    DETECTOR_MODULES,
    DetectorEntry,
    anomaly_detectors,
    load_plugins,
    register_detector,
    saved_format,
)
from raylab.tasks.anomaly.scorer import AnomalyScorer
from raylab.testing.detector_contract import (
    check_detector_contract,
    check_reads_back,
    check_save_load_scores_identically,
    check_sees_no_labels,
)

IMAGE_SIZE = 112
PLUGIN = "tests.anomaly_plugin"
plugin = importlib.import_module(PLUGIN)  # registers its detector, as a plug-in does
NearestTrainingPatch, NAME = plugin.NearestTrainingPatch, plugin.NAME
FITTED_FROM_PATCHES = [name for name in anomaly_detectors() if anomaly_detectors().get(name).build is not None]


@pytest.fixture(scope="module")
def patches(shared_data: Path, ray_session) -> tuple[np.ndarray, np.ndarray]:
    """20 training grids and 12 test grids (6 good, 6 defective) of real magnetic tiles."""
    corpus = subsample_corpus(load_corpus("magnetic_tile", shared_data), 40)
    features = cached_patch_features(corpus, FeatureSpec(image_size=IMAGE_SIZE))
    (split,) = class_splits(corpus, IMAGE_SIZE)
    test_ids = [i for i, label in zip(split.test_ids, split.test_labels, strict=True) if label == 0][:6]
    test_ids += [i for i, label in zip(split.test_ids, split.test_labels, strict=True) if label == 1][:6]
    return features.take(split.train_ids[:20]), features.take(test_ids)


def test_the_family_registers_its_detectors():
    registry = anomaly_detectors()
    own = {name for name in registry if registry.get(name).detector_type.__module__ in DETECTOR_MODULES}
    assert own == {"patchcore", "softpatch", "tailedcore", "partial_memory", "reconstruction"}
    assert set(FITTED_FROM_PATCHES) == {"patchcore", "softpatch", "tailedcore", "partial_memory", NAME}


@pytest.mark.parametrize("name", FITTED_FROM_PATCHES)
def test_registered_detector_keeps_the_contract(name: str, patches, tmp_path: Path):
    train, test = patches
    check_detector_contract(name, anomaly_detectors().get(name), train, test, IMAGE_SIZE, tmp_path)


def test_the_reconstruction_detector_reads_back_as_it_scored(patches, tmp_path: Path):
    """MeDS trains it instead of fitting it from patches, so it is built here from a seeded
    random network of the CPU size; its folder reads back through the registry, as deploy
    reads it, and scores identically."""
    import torch

    from raylab.methods.meds.config import cpu_config
    from raylab.methods.meds.method import ReconstructionDetector, network_kwargs
    from raylab.methods.meds.training import build_network

    train, test = patches
    config = cpu_config()
    kwargs = network_kwargs(config, train.shape[-1])
    torch.manual_seed(0)
    state = build_network(kwargs).state_dict()
    detector = ReconstructionDetector(
        kwargs, state, config.token_grid, IMAGE_SIZE, config.blur_sigma, config.top_fraction
    )
    assert saved_format(detector) == "reconstruction"
    check_reads_back("reconstruction", anomaly_detectors().get("reconstruction"), detector, test, tmp_path / "net")


class PeeksAtLabels(NearestTrainingPatch):
    """Broken on purpose: its fit could be handed the training labels."""

    def fit(self, train_patches: np.ndarray, train_labels: np.ndarray | None = None) -> PeeksAtLabels:
        return super().fit(train_patches)


class ForgetsItsMemory(NearestTrainingPatch):
    """Broken on purpose: reads back only half of what it saved."""

    @classmethod
    def load(cls, directory: str | Path) -> ForgetsItsMemory:
        detector = super().load(directory)
        detector.memory = detector.memory[::2]
        return detector


@pytest.fixture
def added_detectors():
    """The plug-in's detector (registered for good: its module stays imported) and a broken one
    registered by this test alone."""
    registry = load_plugins([PLUGIN])
    register_detector("forgets_its_memory")(ForgetsItsMemory)
    yield registry
    registry.unregister("forgets_its_memory")


def test_a_plugin_is_deployable_and_the_contract_catches_broken_detectors(added_detectors, patches, tmp_path: Path):
    """The plug-in's own contract run is a case of the parametrised test above."""
    train, test = patches[0][:4], patches[1][:3]
    entry = added_detectors.get("nearest_training_patch")
    assert "nearest_training_patch" in FITTED_FROM_PATCHES
    assert saved_format(entry.build(0, IMAGE_SIZE)) == "nearest_training_patch"
    # The contract can fail: a detector that loses state on reload is caught, by name.
    broken = added_detectors.get("forgets_its_memory")
    with pytest.raises(AssertionError, match="forgets_its_memory: image_scores changed on reload"):
        check_save_load_scores_identically("forgets_its_memory", broken, train, test, IMAGE_SIZE, tmp_path / "broken")
    peeking = DetectorEntry(PeeksAtLabels, PeeksAtLabels)
    with pytest.raises(AssertionError, match=r"could carry labels or noise flags: \['train_labels'\]"):
        check_sees_no_labels("peeks_at_labels", peeking)


def _eval_argv(shared_data: Path, *sets: str) -> list[str]:
    options = ["quick_images_per_group=10", "quick_coreset_ratio=0.05", f"patchcore.features.image_size={IMAGE_SIZE}"]
    argv = ["--dataset", "magnetic_tile", "--data-root", str(shared_data), "--quick", "--noise-ratios", "0"]
    return argv + [arg for option in (*options, *sets) for arg in ("--set", option)]


@pytest.mark.e2e
def test_a_plugin_detector_runs_through_the_job_beside_patchcore(shared_data, ray_session, tmp_path: Path):
    """The comparison is a list of registry names; the plug-in is imported where each trial runs
    (a Ray worker), its row is the detector's own scores, and its logged model loads elsewhere."""
    import mlflow

    from raylab.eval import anomaly_metrics
    from raylab.experiment import get_experiment, run
    from raylab.tracking import tracking_uri

    argv = _eval_argv(shared_data, "detectors=[patchcore,nearest_training_patch]", f"plugins=[{PLUGIN}]")
    result = run(get_experiment("patchcore_eval"), argv)
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"patchcore", "nearest_training_patch"}

    corpus = subsample_corpus(load_corpus("magnetic_tile", shared_data), 10)  # the job's --quick corpus
    features = cached_patch_features(corpus, FeatureSpec(image_size=IMAGE_SIZE))
    (split,) = class_splits(corpus, IMAGE_SIZE)
    detector = NearestTrainingPatch(image_size=IMAGE_SIZE).fit(features.take(split.train_ids))
    scores = detector.predict(features.take(split.test_ids), with_maps=False).image_scores
    expected = anomaly_metrics(split.test_labels, scores)["image_auroc"]
    assert rows["nearest_training_patch"]["metrics"]["image_auroc"] == pytest.approx(expected)
    assert 0.5 < expected <= 1.0  # a real detector on real defects, not a constant

    client = mlflow.MlflowClient(tracking_uri())
    (child,) = client.search_runs(
        [client.get_experiment_by_name("raylab/patchcore_eval").experiment_id],
        filter_string="tags.`raylab.method` = 'nearest_training_patch'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    uri = json.loads(child.data.tags["raylab.models"])["magnetic_tile"]
    (scorer_json,) = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path))).rglob("scorer.json")
    folder = scorer_json.parent
    assert json.loads((folder / "scorer.json").read_text())["plugins"] == [PLUGIN]
    assert isinstance(AnomalyScorer(folder).detector, NearestTrainingPatch)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["detectors=[patchcore,no_such_detector]"], "unknown anomaly detector 'no_such_detector'; known: "),
        (["detectors=[nearest_training_patch]", "plugins=[tests.no_such_plugin]"], "'tests.no_such_plugin' cannot be"),
        (["detectors=[reconstruction]"], "'reconstruction' is not fitted from patch features"),
    ],
)
def test_a_comparison_naming_what_is_not_there_fails_before_ray(shared_data, sets, message, monkeypatch, capsys):
    import raylab.experiment.session as session
    from raylab.experiment import get_experiment, run

    def refuse(**_):
        raise AssertionError("the runner started Ray before rejecting the comparison")

    monkeypatch.setattr(session, "init_ray", refuse)
    with pytest.raises(SystemExit) as exit_info:
        run(get_experiment("patchcore_eval"), _eval_argv(shared_data, *sets))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
