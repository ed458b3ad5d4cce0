"""What every registered anomaly detector must do, as checks a test runs on real patch features.

The anomaly family's comparisons, sweeps and deploy treat detectors interchangeably through
the registry (:mod:`raylab.tasks.anomaly.detectors`); these are the promises that makes safe.
``tests/test_anomaly_detectors.py`` runs them over every registered name, so a detector added
with one ``@register_detector`` line is checked without any other file changing. Each check
raises ``AssertionError`` naming the detector and the promise it broke.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np

from raylab.tasks.anomaly.detectors import DetectorEntry

# Words a parameter of ``fit`` must not contain: a detector sees patch features alone, never
# the labels of training images nor which of them the noise protocol contaminated.
FORBIDDEN_FIT_INPUTS = ("label", "injected", "noise", "anomal", "defect", "mask")


def check_sees_no_labels(name: str, entry: DetectorEntry) -> None:
    """``fit`` needs the training patches alone; anything else it accepts is optional and
    none of it can carry labels or noise flags (by name)."""
    parameters = list(inspect.signature(entry.detector_type.fit).parameters.values())[1:]
    assert parameters and parameters[0].name == "train_patches", f"{name}: fit's first input must be train_patches"
    required = [p.name for p in parameters[1:] if p.default is inspect.Parameter.empty]
    assert not required, f"{name}: fit requires more than the training patches: {required}"
    leaks = [p.name for p in parameters if any(word in p.name.lower() for word in FORBIDDEN_FIT_INPUTS)]
    assert not leaks, f"{name}: fit accepts inputs that could carry labels or noise flags: {leaks}"


def check_refuses_before_fit(name: str, entry: DetectorEntry, test_patches: np.ndarray, image_size: int) -> None:
    detector = entry.build(0, image_size)
    try:
        detector.predict(test_patches)
    except RuntimeError:
        return
    raise AssertionError(f"{name}: an unfitted detector scored instead of raising RuntimeError")


def check_shapes(
    name: str, entry: DetectorEntry, train_patches: np.ndarray, test_patches: np.ndarray, image_size: int
) -> None:
    """``fit`` returns the detector; ``predict`` gives one finite score per image, a score per
    patch on the input grid, and maps at the image size it was built for only when asked for."""
    detector = entry.build(0, image_size)
    assert detector.fit(train_patches) is detector, f"{name}: fit must return the detector"
    m, h, w, _ = test_patches.shape
    prediction = detector.predict(test_patches)
    assert prediction.image_scores.shape == (m,), f"{name}: image scores {prediction.image_scores.shape}"
    assert np.isfinite(prediction.image_scores).all(), f"{name}: non-finite image scores"
    assert prediction.patch_scores.shape == (m, h, w), f"{name}: patch scores {prediction.patch_scores.shape}"
    assert prediction.maps is not None and prediction.maps.ndim == 3, f"{name}: maps missing with with_maps=True"
    assert prediction.maps.shape == (m, image_size, image_size), (
        f"{name}: maps {prediction.maps.shape}, expected one {image_size} px map per image"
    )
    assert detector.predict(test_patches, with_maps=False).maps is None, f"{name}: maps computed when not asked for"


def check_same_seed_same_scores(
    name: str, entry: DetectorEntry, train_patches: np.ndarray, test_patches: np.ndarray, image_size: int
) -> None:
    first = entry.build(3, image_size).fit(train_patches).predict(test_patches, with_maps=False)
    again = entry.build(3, image_size).fit(train_patches).predict(test_patches, with_maps=False)
    assert np.array_equal(first.image_scores, again.image_scores), f"{name}: one seed gave two results"


def check_save_load_scores_identically(
    name: str, entry: DetectorEntry, train_patches: np.ndarray, test_patches: np.ndarray, image_size: int, folder: Path
) -> None:
    check_reads_back(name, entry, entry.build(0, image_size).fit(train_patches), test_patches, folder)


def check_reads_back(name: str, entry: DetectorEntry, detector, test_patches: np.ndarray, folder: Path) -> None:
    """A fitted detector, saved and read back through the registry (as deploy reads it),
    scores exactly as it did."""
    detector.save(folder)
    loaded = entry.load(folder)
    before, after = detector.predict(test_patches), loaded.predict(test_patches)
    for field in ("image_scores", "patch_scores", "maps"):
        assert np.array_equal(getattr(before, field), getattr(after, field)), f"{name}: {field} changed on reload"


def check_detector_contract(
    name: str, entry: DetectorEntry, train_patches: np.ndarray, test_patches: np.ndarray, image_size: int, scratch: Path
) -> None:
    """Every check, for a detector fitted from patches (``entry.build`` is not None) of images
    ``image_size`` px wide."""
    assert entry.build is not None, f"{name} is not fitted from patches"
    check_sees_no_labels(name, entry)
    check_refuses_before_fit(name, entry, test_patches, image_size)
    check_shapes(name, entry, train_patches, test_patches, image_size)
    check_same_seed_same_scores(name, entry, train_patches, test_patches, image_size)
    check_save_load_scores_identically(name, entry, train_patches, test_patches, image_size, scratch / name)
