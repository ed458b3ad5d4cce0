"""The anomaly family's detector contract, over every registered detector, on real features.

Parametrised over the registry (as anomalib's and timm's model tests are), so a detector
registered with one ``@register_detector`` line gets these checks without this file changing.
The features are the magnetic-tile subset test_patchcore uses (40 images per group, 112 px,
from the session's feature cache); the detectors run at their registered defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raylab.data import load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.features import FeatureSpec
from raylab.features.cache import cached_patch_features
from raylab.tasks.anomaly.benchmark import class_splits
from raylab.tasks.anomaly.detectors import DetectorEntry, anomaly_detectors, register_detector, saved_format
from raylab.tasks.anomaly.maps import AnomalyPrediction, max_score_prediction
from raylab.testing.detector_contract import (
    check_detector_contract,
    check_reads_back,
    check_save_load_scores_identically,
    check_sees_no_labels,
)

IMAGE_SIZE = 112
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
    assert set(anomaly_detectors()) == {"patchcore", "softpatch", "tailedcore", "partial_memory", "reconstruction"}
    assert set(FITTED_FROM_PATCHES) == {"patchcore", "softpatch", "tailedcore", "partial_memory"}


@pytest.mark.parametrize("name", FITTED_FROM_PATCHES)
def test_registered_detector_keeps_the_contract(name: str, patches, tmp_path: Path):
    train, test = patches
    check_detector_contract(name, anomaly_detectors().get(name), train, test, tmp_path)


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


class NearestTrainingPatch:
    """The smallest honest detector: a test patch's score is its distance to the nearest
    training patch (PatchCore without a coreset), saved as one ``.npy`` file."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.memory: np.ndarray | None = None

    def fit(self, train_patches: np.ndarray) -> NearestTrainingPatch:
        self.memory = np.asarray(train_patches, np.float32).reshape(-1, train_patches.shape[-1])
        return self

    def predict(self, patches: np.ndarray, with_maps: bool = True) -> AnomalyPrediction:
        if self.memory is None:
            raise RuntimeError("fit first")
        m, h, w, d = patches.shape
        flat = np.asarray(patches, np.float32).reshape(-1, d)
        nearest = np.stack([((self.memory - row) ** 2).sum(1).min() for row in flat]).reshape(m, h, w)
        return max_score_prediction(nearest, IMAGE_SIZE, 4.0, with_maps)

    def save(self, directory: str | Path) -> Path:
        Path(directory).mkdir(parents=True, exist_ok=True)
        np.save(Path(directory) / "memory.npy", self.memory)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> NearestTrainingPatch:
        detector = cls()
        detector.memory = np.load(Path(directory) / "memory.npy")
        return detector


class PeeksAtLabels(NearestTrainingPatch):
    """Broken on purpose: its fit could be handed the training labels."""

    def fit(self, train_patches: np.ndarray, train_labels: np.ndarray | None = None) -> PeeksAtLabels:
        return super().fit(train_patches)


class ForgetsItsMemory(NearestTrainingPatch):
    """Broken on purpose: reads back only half of what it saved."""

    @classmethod
    def load(cls, directory: str | Path) -> ForgetsItsMemory:
        detector = cls()
        detector.memory = np.load(Path(directory) / "memory.npy")[::2]
        return detector


@pytest.fixture
def added_detectors():
    """Two detectors registered by a test alone, as a new method's module would register them."""
    registry = anomaly_detectors()
    register_detector("nearest_training_patch")(NearestTrainingPatch)
    register_detector("forgets_its_memory")(ForgetsItsMemory)
    yield registry
    registry.unregister("nearest_training_patch")
    registry.unregister("forgets_its_memory")


def test_a_detector_added_in_one_line_is_checked_and_deployable(added_detectors, patches, tmp_path: Path):
    train, test = patches[0][:4], patches[1][:3]  # the toy detector's search is brute force
    entry = added_detectors.get("nearest_training_patch")
    check_detector_contract("nearest_training_patch", entry, train, test, tmp_path)
    assert saved_format(entry.build(0)) == "nearest_training_patch"
    # The contract can fail: a detector that loses state on reload is caught, by name.
    broken = added_detectors.get("forgets_its_memory")
    with pytest.raises(AssertionError, match="forgets_its_memory: image_scores changed on reload"):
        check_save_load_scores_identically("forgets_its_memory", broken, train, test, tmp_path / "broken")
    peeking = DetectorEntry(PeeksAtLabels, PeeksAtLabels)
    with pytest.raises(AssertionError, match=r"could carry labels or noise flags: \['train_labels'\]"):
        check_sees_no_labels("peeks_at_labels", peeking)
