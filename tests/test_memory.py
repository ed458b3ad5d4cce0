"""Tests for raylab.memory: exact faiss banks and PatchCore's greedy k-center coreset.

Brute-force numpy/scipy computations in float64 are the oracle throughout; all data are
small and synthetic, so the file runs in seconds and needs neither Ray nor a GPU.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from raylab.memory import MemoryBank, coverage_radius, gpu_available, greedy_coreset, nearest_neighbour_distances
from raylab.memory import bank as bank_module
from raylab.memory.bank import Metric
from raylab.memory.coreset import CoresetMethod, kcenter_greedy, kcenter_greedy_reference


def random_data(n: int, dim: int, seed: int, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(dtype)


def clustered_data(n: int, dim: int, n_clusters: int, seed: int, dtype: type = np.float32) -> np.ndarray:
    """Well-separated Gaussian blobs of unequal sizes, like patch features of a few textures."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)) * 10
    labels = rng.choice(n_clusters, size=n, p=rng.dirichlet(np.ones(n_clusters)))
    spreads = rng.uniform(0.3, 2.0, n_clusters)[labels, None]
    return (centres[labels] + rng.standard_normal((n, dim)) * spreads).astype(dtype)


def brute_force_knn(queries: np.ndarray, memory: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    q, m = queries.astype(np.float64), memory.astype(np.float64)
    if metric == "l2":
        scores = cdist(q, m, "sqeuclidean")
        order = np.argsort(scores, axis=1, kind="stable")
    else:
        scores = q @ m.T
        order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), order


def filled_bank(data: np.ndarray, metric: Metric = "l2") -> MemoryBank:
    bank = MemoryBank(data.shape[1], metric=metric, device="cpu")
    bank.add(data)
    return bank


# ----------------------------------------------------------------------------- MemoryBank


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("k", [1, 5])
def test_search_matches_brute_force(metric: Metric, k: int) -> None:
    memory, queries = random_data(400, 16, seed=1), random_data(60, 16, seed=2)
    distances, indices = filled_bank(memory, metric).search(queries, k=k)
    expected_distances, expected_indices = brute_force_knn(queries, memory, k + 1, metric)

    assert distances.shape == indices.shape == (60, k)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_allclose(distances, expected_distances[:, :k], rtol=1e-4, atol=1e-4)
    # Indices must agree wherever the ranking is not a near-tie.
    gaps = np.abs(np.diff(expected_distances, axis=1))
    for row in range(60):
        for rank in range(k):
            tied = gaps[row, rank] < 1e-4 or (rank > 0 and gaps[row, rank - 1] < 1e-4)
            if not tied:
                assert indices[row, rank] == expected_indices[row, rank]


def test_l2_distances_are_squared() -> None:
    bank = filled_bank(np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32))
    distances, indices = bank.search(np.array([[6.0, 8.0]]), k=2)
    np.testing.assert_allclose(distances, [[25.0, 100.0]])
    np.testing.assert_array_equal(indices, [[1, 0]])


def test_batched_search_equals_unbatched() -> None:
    bank = filled_bank(random_data(300, 8, seed=3))
    queries = random_data(101, 8, seed=4)
    full = bank.search(queries, k=3)
    batched = bank.search(queries, k=3, batch_size=7)
    np.testing.assert_array_equal(full[0], batched[0])
    np.testing.assert_array_equal(full[1], batched[1])


def test_add_converts_dtypes_and_keeps_vectors_in_order() -> None:
    first, second = random_data(10, 4, seed=5, dtype=np.float64), random_data(5, 4, seed=6, dtype=np.float16)
    bank = MemoryBank(4, device="cpu")
    bank.add(first)
    bank.add(torch.from_numpy(second))
    assert len(bank) == 15 and bank.dim == 4 and bank.metric == "l2"
    np.testing.assert_array_equal(bank.vectors, np.concatenate([first, second]).astype(np.float32))
    np.testing.assert_array_equal(bank.reconstruct([14, 0]), bank.vectors[[14, 0]])
    with pytest.raises(IndexError, match="indices must lie in"):
        bank.reconstruct([15])


def test_bank_owns_its_copy_of_the_vectors() -> None:
    data = random_data(20, 4, seed=7)
    bank = filled_bank(data)
    data[:] = 0
    assert np.abs(bank.vectors).sum() > 0
    with pytest.raises(ValueError):
        bank.vectors[0, 0] = 1.0


def test_nearest_neighbour_distances_matches_bank() -> None:
    memory, queries = random_data(200, 8, seed=8), random_data(30, 8, seed=9)
    metrics: tuple[Metric, ...] = ("l2", "ip")
    for metric in metrics:
        expected, _ = filled_bank(memory, metric).search(queries, k=4)
        np.testing.assert_array_equal(nearest_neighbour_distances(queries, memory, k=4, metric=metric), expected)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_save_load_round_trip(tmp_path: Path, metric: Metric) -> None:
    bank = filled_bank(random_data(250, 12, seed=10), metric)
    queries = random_data(40, 12, seed=11)
    path = tmp_path / "banks" / "bank.rlmb"
    bank.save(path)
    loaded = MemoryBank.load(path, device="cpu")

    assert (loaded.dim, loaded.metric, len(loaded)) == (12, metric, 250)
    np.testing.assert_array_equal(loaded.vectors, bank.vectors)
    for expected, actual in zip(bank.search(queries, k=5), loaded.search(queries, k=5), strict=True):
        np.testing.assert_array_equal(actual, expected)
    assert sorted(p.name for p in path.parent.iterdir()) == ["bank.rlmb"], "a temporary file was left behind"


def test_failed_save_keeps_the_previous_bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bank.rlmb"
    old = filled_bank(random_data(50, 6, seed=12))
    old.save(path)

    def disk_failure(fd: int) -> None:
        raise OSError("simulated disk failure while writing")

    monkeypatch.setattr(bank_module.os, "fsync", disk_failure)
    with pytest.raises(OSError, match="simulated"):
        filled_bank(random_data(80, 6, seed=13)).save(path)
    monkeypatch.undo()

    survivor = MemoryBank.load(path)
    assert len(survivor) == 50
    np.testing.assert_array_equal(survivor.vectors, old.vectors)
    assert os.listdir(tmp_path) == ["bank.rlmb"]


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "not_a_bank.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a raylab memory bank"):
        MemoryBank.load(path)


def test_bad_inputs_raise_clear_errors() -> None:
    bank = MemoryBank(8, device="cpu")
    with pytest.raises(ValueError, match="empty memory bank"):
        bank.search(random_data(2, 8, seed=0))
    with pytest.raises(ValueError, match=r"shape \(n, 8\), got shape \(5, 7\)"):
        bank.add(random_data(5, 7, seed=0))
    with pytest.raises(ValueError, match=r"2-D array .* got shape \(8,\)"):
        bank.add(np.zeros(8, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        bank.add(np.full((2, 8), np.nan))
    bank.add(random_data(3, 8, seed=0))
    with pytest.raises(ValueError, match="k=4 exceeds the number of vectors in the memory bank \\(3\\)"):
        bank.search(random_data(2, 8, seed=0), k=4)
    with pytest.raises(ValueError, match=r"queries must have shape \(n, 8\), got shape \(2, 9\)"):
        bank.search(random_data(2, 9, seed=0))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        bank.search(random_data(2, 8, seed=0), k=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        MemoryBank(8, metric="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        MemoryBank(0)


@pytest.mark.skipif(gpu_available(), reason="a faiss GPU is available here")
def test_gpu_request_without_gpu_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="device='gpu'"):
        MemoryBank(4, device="gpu")
    assert MemoryBank(4, device="auto").device == "cpu"


# ----------------------------------------------------------------------------- coreset


def min_distance_to(points: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    return cdist(points.astype(np.float64), points[chosen].astype(np.float64)).min(axis=1)


def assert_same_greedy_order(points: np.ndarray, fast: np.ndarray, reference: np.ndarray, rtol: float) -> None:
    """Equal selections, except that they may part ways at a float32 near-tie.

    At the first step where they differ, both picks must be (within ``rtol``) equally far
    from the centres chosen so far, i.e. both are valid argmaxes of the same greedy step.
    """
    assert len(fast) == len(reference)
    differing = np.flatnonzero(fast != reference)
    if differing.size == 0:
        return
    step = int(differing[0])
    gaps = min_distance_to(points, reference[:step])[[fast[step], reference[step]]]
    assert gaps[0] == pytest.approx(gaps[1], rel=rtol), f"selections differ at step {step} without a tie"


@pytest.mark.parametrize("make", ["random", "clustered"])
@pytest.mark.parametrize("with_estimate", [False, True])
def test_batched_greedy_equals_reference(make: str, with_estimate: bool) -> None:
    data = (
        random_data(2500, 12, seed=20, dtype=np.float64)
        if make == "random"
        else clustered_data(2500, 12, 15, seed=21, dtype=np.float64)
    )
    estimate = np.random.default_rng(22).uniform(5, 50, len(data)) if with_estimate else None
    first = int(np.argmax(estimate)) if estimate is not None else 17
    fast = kcenter_greedy(data, 600, first, estimate)
    reference = kcenter_greedy_reference(data, 600, first, estimate)
    np.testing.assert_array_equal(fast, reference)


@pytest.mark.parametrize("make", ["random", "clustered"])
def test_batched_greedy_equals_reference_in_float32(make: str) -> None:
    data = random_data(3000, 24, seed=23) if make == "random" else clustered_data(3000, 24, 10, seed=24)
    data -= data.mean(axis=0)
    fast = kcenter_greedy(torch.from_numpy(data), 400, 0)
    assert_same_greedy_order(data, fast, kcenter_greedy_reference(data, 400, 0), rtol=1e-4)


def test_each_pick_is_the_farthest_point() -> None:
    data = clustered_data(600, 5, 6, seed=25)
    chosen = greedy_coreset(data, n_select=60, method="exact", projection_dim=None, seed=3)
    for step in range(1, len(chosen)):
        gaps = min_distance_to(data, chosen[:step])
        assert gaps[chosen[step]] == pytest.approx(gaps.max(), rel=1e-4)


def test_greedy_is_within_twice_the_optimal_radius() -> None:
    data = clustered_data(14, 2, 4, seed=26)
    k = 3
    optimum = min(min_distance_to(data, np.array(subset)).max() for subset in itertools.combinations(range(14), k))
    for seed in range(5):
        chosen = greedy_coreset(data, n_select=k, method="exact", projection_dim=None, seed=seed)
        assert coverage_radius(data, chosen) <= 2 * optimum + 1e-5


def test_coverage_radius_matches_brute_force() -> None:
    data = random_data(500, 10, seed=27)
    chosen = np.array([3, 99, 250, 400])
    assert coverage_radius(data, chosen) == pytest.approx(min_distance_to(data, chosen).max(), rel=1e-4)


@pytest.mark.parametrize("method", ["exact", "approximate"])
def test_selection_size_uniqueness_and_seed(method: CoresetMethod) -> None:
    data = clustered_data(3000, 40, 12, seed=28)
    chosen = greedy_coreset(data, ratio=0.1, method=method, projection_dim=16, seed=5)
    assert chosen.dtype == np.int64 and len(chosen) == 300 and len(np.unique(chosen)) == 300
    np.testing.assert_array_equal(
        chosen, greedy_coreset(torch.from_numpy(data), n_select=300, method=method, projection_dim=16, seed=5)
    )
    assert not np.array_equal(chosen, greedy_coreset(data, ratio=0.1, method=method, projection_dim=16, seed=6))


def test_approximate_coverage_is_close_to_exact() -> None:
    data = clustered_data(4000, 32, 20, seed=29)
    exact = coverage_radius(data, greedy_coreset(data, ratio=0.05, method="exact", seed=1))
    approximate = coverage_radius(data, greedy_coreset(data, ratio=0.05, method="approximate", seed=1))
    assert approximate <= 1.5 * exact


def test_selecting_everything_returns_each_row_once_even_with_duplicates() -> None:
    base = random_data(50, 3, seed=30)
    data = np.concatenate([base, base, base[:10]])
    chosen = greedy_coreset(data, n_select=len(data), method="exact", projection_dim=None)
    np.testing.assert_array_equal(np.sort(chosen), np.arange(len(data)))


def test_coreset_validation_messages() -> None:
    data = random_data(100, 8, seed=31)
    with pytest.raises(ValueError, match="exactly one of n_select or ratio"):
        greedy_coreset(data)
    with pytest.raises(ValueError, match="exactly one of n_select or ratio"):
        greedy_coreset(data, n_select=10, ratio=0.1)
    for bad_ratio in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"ratio must be a number in \(0, 1\]"):
            greedy_coreset(data, ratio=bad_ratio)
    for bad_count in (0, 101):
        with pytest.raises(ValueError, match=r"n_select must be between 1 and the number of features \(100\)"):
            greedy_coreset(data, n_select=bad_count)
    with pytest.raises(ValueError, match="method must be"):
        greedy_coreset(data, ratio=0.1, method="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"2-D \(N, D\) array"):
        greedy_coreset(data[0], ratio=0.1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        greedy_coreset(np.full((4, 2), np.inf), n_select=2)
    with pytest.raises(ValueError, match="projection_dim must be"):
        greedy_coreset(data, ratio=0.1, projection_dim=0)
    assert len(greedy_coreset(data, ratio=0.001)) == 1


@pytest.mark.parametrize("damage", ["truncated", "flipped-bit"])
def test_a_damaged_bank_file_is_named_not_loaded(tmp_path: Path, damage: str) -> None:
    from raylab.artefacts import CorruptArtefactError

    path = tmp_path / "bank.rlmb"
    filled_bank(random_data(200, 16, seed=14)).save(path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10  # inside the serialised index
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtefactError, match=f"{path}: "):
        MemoryBank.load(path)
