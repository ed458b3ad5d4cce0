"""Deterministic train/test splits for datasets that ship without one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def seeded_partition(ids: Sequence[str], first_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Split ``ids`` into (first, rest) with ``floor(first_fraction * n)`` ids in ``first``.

    The ids are sorted before the seeded permutation, so the split depends only on the set
    of ids and the seed, never on file-system listing order.
    """
    if not 0.0 < first_fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {first_fraction}")
    ordered = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    cut = int(np.floor(first_fraction * len(ordered)))
    first = {ordered[i] for i in order[:cut]}
    return first, set(ordered) - first


def validation_rows(
    n: int, fraction: float, seed: tuple[int, ...] | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) row indices of ``n`` training images, both non-empty and sorted; the
    validation rows are the first ``round(fraction * n)`` of a seeded permutation (a generator
    passed as ``seed`` is drawn from and goes on from there)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"{n} training images cannot give a validation share of {fraction:g} and a non-empty fit set")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def identity_folds(identities: Sequence[str], n_folds: int, seed: int) -> list[tuple[str, ...]]:
    """Partition identities into ``n_folds`` disjoint folds of near-equal size (sizes differ by <= 1).

    A pure function of the *set* of identities, ``n_folds`` and ``seed`` (sorted before the
    seeded permutation), so fold ``k`` of a dataset is the same on every machine; each fold
    is the test identities of one identity-disjoint train/test split.
    """
    ordered = sorted(set(identities))
    if len(ordered) != len(identities):
        raise ValueError("identities must be unique")
    if not 2 <= n_folds <= len(ordered):
        raise ValueError(f"need 2 <= n_folds <= {len(ordered)} identities, got n_folds={n_folds}")
    order = np.random.default_rng(seed).permutation(len(ordered))
    return [tuple(sorted(ordered[i] for i in order[k::n_folds])) for k in range(n_folds)]
