"""Out-of-distribution detection metrics (NNGuide and friends).

Score convention: a higher score means more out-of-distribution.  Methods whose native
score is a confidence (higher = more in-distribution, e.g. NNGuide's guided energy) must
be negated before they reach this module; mixing conventions would silently turn an AUROC
of 0.9 into 0.1.

Metric definitions follow OpenOOD so numbers are comparable with published tables:

* ``auroc``: OOD is the positive class, ranked by the score.
* ``aupr_out``: average precision with OOD positive, ranked by the score.
* ``aupr_in``: average precision with ID positive, ranked by ``-score``.
* ``fpr95``: see :func:`fpr_at_tpr` (ID is the positive class here, as in OpenOOD).
* ``detection_acc``: the best balanced accuracy ``0.5 * (TPR_id + TNR_ood)`` over all
  thresholds, where ``TPR_id`` is the share of ID samples accepted (``score < t``) and
  ``TNR_ood`` the share of OOD samples rejected (``score >= t``).  Balanced rather than
  plain accuracy so the value does not depend on the ID/OOD set-size ratio.

AUROC/AP use scikit-learn: OOD benchmarks hold at most a few hundred thousand scores.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from raylab.eval.anomaly import check_finite

__all__ = ["detection_accuracy", "fpr_at_tpr", "ood_metrics"]


def _scores(name: str, values: ArrayLike) -> NDArray[np.floating]:
    arr = check_finite(name, values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def fpr_at_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> tuple[float, float]:
    """False-positive rate on OOD data when ``tpr`` of the ID data is accepted.

    A sample is accepted as ID iff ``score <= t``.  The threshold is the smallest ID score
    ``t`` with ``|{id <= t}| / n_id >= tpr``; the returned FPR is ``|{ood <= t}| / n_ood``,
    i.e. the share of OOD samples wrongly accepted.  Ties are resolved conservatively:
    every OOD sample whose score equals ``t`` counts as accepted (a detector that outputs a
    constant gets FPR = 1, not 0).  This equals OpenOOD's
    ``fpr[argmax(tpr >= 0.95)]`` on scikit-learn's ROC with ID positive.

    Returns ``(fpr, t)``.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    id_sorted = np.sort(_scores("id_scores", id_scores))
    ood = _scores("ood_scores", ood_scores)
    accepted_share = np.arange(1, id_sorted.size + 1) / id_sorted.size
    # i/n is the correctly rounded double of the ratio, so 19/20 >= 0.95 holds exactly.
    threshold = float(id_sorted[int(np.argmax(accepted_share >= tpr))])
    return float(np.mean(ood <= threshold)), threshold


def detection_accuracy(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Best balanced accuracy ``0.5 * (TPR_id + TNR_ood)`` over all thresholds.

    The trivial thresholds (accept everything / nothing) are included, so the value is
    at least 0.5.
    """
    id_arr = _scores("id_scores", id_scores)
    ood_arr = _scores("ood_scores", ood_scores)
    labels = np.concatenate((np.zeros(id_arr.size), np.ones(ood_arr.size)))
    fpr, tpr, _ = roc_curve(labels, np.concatenate((id_arr, ood_arr)), drop_intermediate=False)
    # roc_curve is OOD-positive: tpr = OOD rejected, fpr = ID rejected.
    return float(np.max(0.5 * (tpr + 1.0 - fpr)))


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """AUROC, FPR@95, AUPR-In, AUPR-Out and detection accuracy for one ID/OOD pair.

    Returns ``{"auroc", "fpr95", "fpr95_threshold", "aupr_in", "aupr_out",
    "detection_acc"}``; see the module docstring for each definition.
    """
    id_arr = _scores("id_scores", id_scores)
    ood_arr = _scores("ood_scores", ood_scores)
    scores = np.concatenate((id_arr, ood_arr))
    is_ood = np.concatenate((np.zeros(id_arr.size, bool), np.ones(ood_arr.size, bool)))
    fpr95, threshold = fpr_at_tpr(id_arr, ood_arr, 0.95)
    return {
        "auroc": float(roc_auc_score(is_ood, scores)),
        "fpr95": fpr95,
        "fpr95_threshold": threshold,
        "aupr_in": float(average_precision_score(~is_ood, -scores)),
        "aupr_out": float(average_precision_score(is_ood, scores)),
        "detection_acc": detection_accuracy(id_arr, ood_arr),
    }
