"""Biometric verification / identification metrics (CKD periocular recognition, ALSUV).

Scores are cosine similarities of L2-normalised embeddings: higher = more likely the same
person, i.e. the "positive" (genuine match, or successful attack) side, in line with the
platform convention.  A comparison is accepted iff ``score > threshold`` (strictly), which
is the decision rule that :func:`threshold_at_far` guarantees a false-accept rate for and
that :func:`attack_success_rate` applies to attack scores.

Pair counts grow quadratically (10k embeddings = 50M pairs), so similarities are produced in
row blocks and ROC quantities come from the sort-based engine in
:mod:`raylab.eval.anomaly`, not from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from raylab.eval.anomaly import BinaryCurve, binary_curve, check_finite

__all__ = [
    "DEFAULT_FARS",
    "attack_success_rate",
    "equal_error_rate",
    "far_key",
    "identification_cmc",
    "pair_scores",
    "roc_curve_points",
    "tar_at_far",
    "threshold_at_far",
    "verification_metrics",
]

DEFAULT_FARS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
_BLOCK_ELEMENTS = 1 << 22  # similarity entries per row block (~32 MB in float64)


# ----------------------------------------------------------------------------- helpers


def _normalised(name: str, embeddings: ArrayLike) -> NDArray[np.floating]:
    """L2-normalise rows; zero rows are rejected because their cosine is undefined."""
    emb = check_finite(name, embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, dim) with n >= 1, got {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"{name} has {zero.size} all-zero row(s) (first at {int(zero[0])}); cosine similarity is undefined for them"
        )
    return emb / norms


def _ids(name: str, identities: ArrayLike, n: int) -> NDArray[np.generic]:
    ids = np.asarray(identities)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per embedding), got shape {ids.shape}")
    return ids


def _scores(name: str, values: ArrayLike) -> NDArray[np.floating]:
    arr = check_finite(name, values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr


def far_key(prefix: str, far: float) -> str:
    """Metric name such as ``tar@far=1e-2`` (short exponent, MLflow-safe characters)."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{prefix}@far={mantissa}e{int(exponent)}"


# ------------------------------------------------------------------------ verification


def pair_scores(embeddings: ArrayLike, identities: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Cosine similarities of all unordered pairs ``i < j``, split into (genuine, impostor).

    Genuine = same identity, impostor = different identity.  A sample is never compared
    with itself: the diagonal has similarity 1 by construction and would inflate TAR and
    deflate EER.  So with ``n_k`` samples of identity ``k`` there are exactly
    ``sum_k n_k (n_k - 1) / 2`` genuine pairs.  Output dtype follows the embeddings
    (float32 stays float32 to halve the memory of large impostor sets).
    """
    emb = _normalised("embeddings", embeddings)
    n = emb.shape[0]
    _, label = np.unique(_ids("identities", identities, n), return_inverse=True)
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    cols = np.arange(n)
    genuine: list[np.ndarray] = []
    impostor: list[np.ndarray] = []
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        sims = emb[rows] @ emb.T
        upper = cols[None, :] > rows[:, None]
        same = label[rows][:, None] == label[None, :]
        genuine.append(sims[upper & same])
        impostor.append(sims[upper & ~same])
    return np.concatenate(genuine), np.concatenate(impostor)


def _verification_curve(genuine: ArrayLike, impostor: ArrayLike) -> BinaryCurve:
    gen = _scores("genuine scores", genuine)
    imp = _scores("impostor scores", impostor)
    return binary_curve(
        np.concatenate((gen, imp)),
        np.concatenate((np.ones(gen.size, bool), np.zeros(imp.size, bool))),
    )


def roc_curve_points(
    genuine: ArrayLike, impostor: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Return ``(far, tar, thresholds)`` for plotting, from (0, 0) at ``+inf`` to (1, 1).

    One point per distinct score, thresholds descending; at ``thresholds[k]`` every
    comparison with ``score >= thresholds[k]`` is accepted (tied scores enter together).
    """
    curve = _verification_curve(genuine, impostor)
    far = np.concatenate(([0.0], curve.fp / curve.n_neg))
    tar = np.concatenate(([0.0], curve.tp / curve.n_pos))
    thresholds = np.concatenate(([np.inf], curve.thresholds.astype(np.float64)))
    return far, tar, thresholds


def equal_error_rate(genuine: ArrayLike, impostor: ArrayLike) -> tuple[float, float]:
    """Return ``(eer, threshold)`` where FAR equals FRR = 1 - TAR on the ROC curve.

    FAR - FRR rises from -1 at the first curve point to +1 at the last, so it crosses zero
    on exactly one segment; the EER is the linear interpolation of that crossing (exact
    when a curve point lies on it, e.g. 0 for perfectly separated scores).  The sign of
    FAR - FRR is decided in integers (``fp * n_gen - fn * n_imp``) because in floating
    point ``1 - 2/3 != 1/3`` and an exact crossing would be missed by one point.  The
    threshold is that of the first curve point with FAR >= FRR.
    """
    curve = _verification_curve(genuine, impostor)
    n_gen, n_imp = curve.n_pos, curve.n_neg
    fp = np.concatenate(([0], curve.fp))
    fn = n_gen - np.concatenate(([0], curve.tp))
    gap = fp * n_gen - fn * n_imp  # (FAR - FRR) * n_gen * n_imp, exact
    k = int(np.argmax(gap >= 0))  # k >= 1 because gap[0] = -n_gen * n_imp
    frac = -gap[k - 1] / (gap[k] - gap[k - 1])
    far_left, far_right = fp[k - 1] / n_imp, fp[k] / n_imp
    eer = far_left + frac * (far_right - far_left)
    return float(eer), float(curve.thresholds[k - 1])


def threshold_at_far(impostor_scores: ArrayLike, far: float) -> float:
    """Smallest impostor score ``t`` with ``|{impostor > t}| / n_impostor <= far``.

    Accepting ``score > t`` then keeps the false-accept rate at or below ``far`` while
    accepting as much as possible.  With ``n`` impostors the achievable resolution is
    ``1 / n``: if ``far < 1 / n`` the result is the largest impostor score (nothing
    accepted above it), so a TAR@FAR=1e-3 needs at least ~1000 impostor pairs to mean
    anything.  ``far`` must be in [0, 1).
    """
    if not 0.0 <= far < 1.0:
        raise ValueError(f"far must be in [0, 1), got {far}")
    desc = np.sort(_scores("impostor scores", impostor_scores))[::-1]
    n = desc.size
    allowed = int(np.floor(far * n))  # impostors allowed strictly above the threshold
    if (allowed + 1) / n <= far:  # floor of a rounded product can be one too low
        allowed += 1
    return float(desc[min(allowed, n - 1)])


def tar_at_far(genuine: ArrayLike, impostor: ArrayLike, far: float) -> tuple[float, float]:
    """Return ``(tar, threshold)``: share of genuine scores ``> threshold_at_far(far)``."""
    gen = _scores("genuine scores", genuine)
    threshold = threshold_at_far(impostor, far)
    return float(np.mean(gen > threshold)), threshold


def verification_metrics(
    embeddings: ArrayLike,
    identities: ArrayLike,
    exclude_self_pairs: bool = True,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict[str, float]:
    """All-pairs 1:1 verification metrics on one embedding set.

    Returns ``eer``, ``eer_threshold``, ``n_genuine``, ``n_impostor`` and, for each FAR in
    ``fars``, ``tar@far=<far>`` and ``threshold@far=<far>`` (e.g. ``tar@far=1e-2``).
    ``exclude_self_pairs`` exists for explicitness only: self-pairs are never valid
    comparisons (see :func:`pair_scores`), so ``False`` is rejected rather than ignored.
    Raises if there is no genuine pair (every identity has a single sample) or no
    impostor pair (a single identity).
    """
    if not exclude_self_pairs:
        raise ValueError(
            "self-pairs (i == j) always have similarity 1 and are never counted; "
            "exclude_self_pairs=False is not supported"
        )
    genuine, impostor = pair_scores(embeddings, identities)
    if genuine.size == 0:
        raise ValueError("no genuine pair: every identity has a single sample")
    if impostor.size == 0:
        raise ValueError("no impostor pair: all samples share one identity")
    eer, eer_threshold = equal_error_rate(genuine, impostor)
    result: dict[str, float] = {
        "eer": eer,
        "eer_threshold": eer_threshold,
        "n_genuine": float(genuine.size),
        "n_impostor": float(impostor.size),
    }
    for far in fars:
        tar, threshold = tar_at_far(genuine, impostor, far)
        result[far_key("tar", far)] = tar
        result[far_key("threshold", far)] = threshold
    return result


# ---------------------------------------------------------------------- identification


def identification_cmc(
    gallery_emb: ArrayLike,
    gallery_ids: ArrayLike,
    probe_emb: ArrayLike,
    probe_ids: ArrayLike,
    max_rank: int = 10,
) -> NDArray[np.float64]:
    """Closed-set cumulative match characteristic; ``cmc[k]`` = rank-(k+1) accuracy.

    Ranking is over gallery *identities*: each identity scores the best cosine similarity
    among its gallery samples, so rank-k means "the true identity is among the k best
    candidates" whatever the number of enrolled samples per identity.  Ties are resolved
    against the probe (another identity with an equal score ranks ahead), so a constant
    embedding does not get rank-1 = 1.  Probes whose identity has no gallery sample are
    an error in a closed-set protocol and raise ``ValueError``.
    """
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    gallery = _normalised("gallery_emb", gallery_emb)
    probes = _normalised("probe_emb", probe_emb)
    if gallery.shape[1] != probes.shape[1]:
        raise ValueError(f"gallery dim {gallery.shape[1]} does not match probe dim {probes.shape[1]}")
    g_ids = _ids("gallery_ids", gallery_ids, gallery.shape[0])
    p_ids = _ids("probe_ids", probe_ids, probes.shape[0])
    classes, g_label = np.unique(g_ids, return_inverse=True)
    p_label = np.searchsorted(classes, p_ids)
    missing = (p_label >= classes.size) | (classes[np.minimum(p_label, classes.size - 1)] != p_ids)
    if missing.any():
        absent = np.unique(p_ids[missing])
        raise ValueError(
            f"{int(missing.sum())} probe(s) have identities absent from the gallery "
            f"(closed-set CMC), e.g. {absent[:5].tolist()}"
        )
    order = np.argsort(g_label, kind="stable")
    group_starts = np.flatnonzero(np.r_[True, np.diff(g_label[order]) != 0])
    sorted_gallery = gallery[order]
    ranks = np.empty(probes.shape[0], dtype=np.int64)
    block = max(1, (1 << 22) // gallery.shape[0])
    for start in range(0, probes.shape[0], block):
        stop = min(start + block, probes.shape[0])
        sims = probes[start:stop] @ sorted_gallery.T
        per_identity = np.maximum.reduceat(sims, group_starts, axis=1)
        true_score = per_identity[np.arange(stop - start), p_label[start:stop]]
        ranks[start:stop] = np.sum(per_identity >= true_score[:, None], axis=1) - 1
    return np.array([np.mean(ranks <= k) for k in range(max_rank)], dtype=np.float64)


# ------------------------------------------------------------------------------ attacks


def attack_success_rate(attack_scores: ArrayLike, threshold: float) -> float:
    """Share of attack comparisons accepted, i.e. with ``score > threshold`` (strict).

    Use a threshold from :func:`threshold_at_far` so the attack is judged at the
    operating point the system was calibrated for.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    scores = _scores("attack scores", attack_scores)
    return float(np.mean(scores > threshold))
