"""The choices around the metrics that make two face results comparable.

Identification enrols a few images per identity and probes with the rest; which images are
enrolled moves rank-1 by several points on small sets, so results are averaged over seeded
gallery draws that every method shares. Verification accepts a pair above a threshold read
off the impostor pairs at a false-accept rate, or the one with the best balanced accuracy
(all-pairs sets hold far more impostor than genuine pairs, so plain accuracy would reward
rejecting everything); each threshold has one name in every summary.
"""

from __future__ import annotations

import numpy as np


def gallery_draws(
    identities: np.ndarray, per_identity: int, draws: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``draws`` seeded (gallery rows, probe rows) splits with ``per_identity`` gallery images each."""
    names = sorted(set(identities.tolist()))
    rows_of = {name: np.flatnonzero(identities == name) for name in names}
    short = [f"{name} ({len(rows)} images)" for name, rows in rows_of.items() if len(rows) <= per_identity]
    if short:
        raise ValueError(
            f"identities need more than gallery_per_identity={per_identity} images to have probes: {short[:5]}"
        )
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(draws):
        gallery = np.sort(np.concatenate([rng.choice(rows_of[name], per_identity, replace=False) for name in names]))
        probe = np.setdiff1d(np.arange(len(identities)), gallery)
        splits.append((gallery, probe))
    return splits


def best_accuracy_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Threshold ``t`` (accept ``> t``) maximising (TAR + TRR) / 2 over all candidate scores."""
    candidates = np.unique(np.concatenate([genuine, impostor]))
    gen, imp = np.sort(genuine), np.sort(impostor)
    tar = 1.0 - np.searchsorted(gen, candidates, side="right") / gen.size
    trr = np.searchsorted(imp, candidates, side="right") / imp.size
    return float(candidates[int(np.argmax(tar + trr))])


def far_label(far: float) -> str:
    """``1e-2`` -> ``far1e-2`` (the summaries' metric names)."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"far{mantissa}e{int(exponent)}"
