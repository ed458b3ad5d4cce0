"""MeDS stage 1 (bootstrapped partial memories): math, determinism under chunking, premise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raylab.methods.meds.partial_memory import (
    PartialMemoryConfig,
    PartialMemoryDetector,
    bootstrap_draws,
    bootstrap_memory_scores,
    l2_normalise,
    memory_score_maps,
    partial_memory_scores_chunk,
)
from raylab.tasks.anomaly.maps import AnomalyPrediction


def _random_features(n: int, p: int, d: int, seed: int = 0) -> np.ndarray:
    return l2_normalise(np.random.default_rng(seed).standard_normal((n, p, d)))


def _brute_force(memory: np.ndarray, queries: np.ndarray, draws: list[np.ndarray]) -> np.ndarray:
    """The paper's definition, literally: explicit cosine distances, min over M_b, mean over b."""
    flat_queries = queries.reshape(-1, queries.shape[-1]).astype(np.float64)
    per_bootstrap = []
    for draw in draws:
        bank = memory[draw].reshape(-1, memory.shape[-1]).astype(np.float64)  # duplicates kept
        distances = 1.0 - flat_queries @ bank.T
        per_bootstrap.append(distances.min(axis=1))
    return np.mean(per_bootstrap, axis=0).reshape(queries.shape[:-1])


def test_scores_equal_brute_force() -> None:
    features = _random_features(12, 9, 8)
    draws = bootstrap_draws(12, 5, 0.25, seed=3)
    assert all(len(d) == math.ceil(0.25 * 12) for d in draws)
    expected = _brute_force(features, features, draws)
    scores = bootstrap_memory_scores(features, bootstraps=5, rho=0.25, seed=3, use_ray=False)
    assert scores.shape == (12, 9) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    chunk_sum = partial_memory_scores_chunk(features, draws)
    np.testing.assert_allclose(chunk_sum / 5, expected, atol=1e-6)


def test_test_queries_equal_brute_force() -> None:
    memory = _random_features(12, 9, 8, seed=1)
    queries = _random_features(5, 9, 8, seed=2)
    draws = bootstrap_draws(12, 5, 0.25, seed=0)
    scores = bootstrap_memory_scores(memory, bootstraps=5, rho=0.25, seed=0, use_ray=False, queries=queries)
    np.testing.assert_allclose(scores, _brute_force(memory, queries, draws), atol=1e-6)


def test_self_matches_are_kept() -> None:
    """Official-code behaviour: a patch of a drawn image is at distance 0 from itself."""
    features = _random_features(12, 9, 8)
    draw = bootstrap_draws(12, 1, 0.25, seed=0)[0]
    s = partial_memory_scores_chunk(features, [draw])
    assert np.all(s[np.unique(draw)] < 1e-6)


def test_draws_independent_of_bootstrap_count() -> None:
    long = bootstrap_draws(50, 10, 0.1, seed=7)
    short = bootstrap_draws(50, 5, 0.1, seed=7)
    for a, b in zip(long[:5], short, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(long[0], bootstrap_draws(50, 1, 0.1, seed=8)[0])


def test_identical_maps_for_any_number_of_ray_tasks(ray_session) -> None:
    features = _random_features(20, 16, 12, seed=4)
    maps = [bootstrap_memory_scores(features, bootstraps=8, rho=0.2, seed=1, num_tasks=t) for t in (1, 2, 4)]
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])
    # In-process (a served detector) to the bit as well: one faiss thread on both paths.
    in_process = bootstrap_memory_scores(features, bootstraps=8, rho=0.2, seed=1, use_ray=False)
    np.testing.assert_array_equal(maps[0], in_process)


def _normal_and_defect_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """40 normal images around one mode, 4 with a 2x2 patch block from a distinct cluster."""
    rng = np.random.default_rng(seed)
    d, h, w = 32, 4, 4
    normal_mode = l2_normalise(rng.standard_normal(d))
    defect_mode = l2_normalise(rng.standard_normal(d))
    patches = normal_mode + 0.15 * rng.standard_normal((44, h, w, d)) / np.sqrt(d)
    is_defect = np.zeros((44, h, w), dtype=bool)
    is_defect[40:, 1:3, 1:3] = True
    patches[is_defect] = defect_mode + 0.15 * rng.standard_normal((int(is_defect.sum()), d)) / np.sqrt(d)
    return patches.astype(np.float32), is_defect


def test_defect_patches_score_higher_than_normal_ones() -> None:
    """The paper's premise: sparse memories rarely contain the rare defects."""
    patches, is_defect = _normal_and_defect_images()
    maps = memory_score_maps(patches, PartialMemoryConfig(bootstraps=30, rho=0.1, seed=0), use_ray=False)
    defect, normal = maps[is_defect], maps[~is_defect]
    assert defect.mean() > 5 * normal.mean()
    assert np.quantile(defect, 0.1) > normal.max()


def test_pooled_maps_come_back_on_the_original_grid() -> None:
    patches = np.random.default_rng(0).standard_normal((10, 8, 6, 16)).astype(np.float32)
    maps = memory_score_maps(patches, PartialMemoryConfig(bootstraps=3, rho=0.3, pool_grid=4), use_ray=False)
    assert maps.shape == (10, 8, 6)
    assert np.isfinite(maps).all() and (maps >= 0).all()


def test_cpu_config_is_the_documented_reduction() -> None:
    from raylab.methods.meds.config import cpu_config

    config = cpu_config()
    assert (config.stage1.bootstraps, config.stage1.rho, config.token_grid) == (10, 0.1, 14)
    with pytest.raises(ValueError, match=r"rho: must lie in \(0, 1\]"):
        PartialMemoryConfig(rho=0.0)


def test_detector_flags_defective_test_images_and_round_trips(tmp_path) -> None:
    patches, is_defect = _normal_and_defect_images(seed=1)
    train = patches[:40]  # normal only; the test set mixes normal and defective images
    test, _ = _normal_and_defect_images(seed=2)
    test = test[36:]  # 4 normal + 4 defective
    config = PartialMemoryConfig(bootstraps=6, rho=0.1, pool_grid=2, seed=0)
    detector = PartialMemoryDetector(config, image_size=32, use_ray=False).fit(train)
    prediction = detector.predict(test)
    assert isinstance(prediction, AnomalyPrediction)
    assert prediction.patch_scores.shape == (8, 4, 4) and prediction.maps is not None
    assert prediction.maps.shape == (8, 32, 32)
    assert prediction.image_scores[4:].min() > prediction.image_scores[:4].max()
    assert detector.predict(test, with_maps=False).maps is None
    loaded = PartialMemoryDetector.load(detector.save(tmp_path / "pm"), use_ray=False)
    np.testing.assert_array_equal(loaded.predict(test).image_scores, prediction.image_scores)
    assert detector.train_scores().shape == (40, 2, 2)
