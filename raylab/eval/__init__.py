"""Evaluation metrics shared by all raylab methods.

Platform-wide convention: a HIGHER score means MORE anomalous / more out-of-distribution /
more "positive" (novel sample, genuine match, successful attack).  Every function here
assumes it, so converting a method's native score happens once, inside the method.

* :mod:`raylab.eval.anomaly` -- image/pixel AUROC, AP, F1-max and AUPRO (MVTec AD).
* :mod:`raylab.eval.ood` -- AUROC, FPR@95, AUPR-In/Out, detection accuracy (OpenOOD).
* :mod:`raylab.eval.biometrics` -- EER, TAR@FAR, CMC, attack success rate.
"""

from raylab.eval.anomaly import (
    BinaryCurve,
    anomaly_metrics,
    aupro,
    auroc_standard_error,
    best_f1_threshold,
    binary_curve,
    image_metrics,
    pixel_metrics,
)
from raylab.eval.biometrics import (
    attack_success_rate,
    equal_error_rate,
    identification_cmc,
    pair_scores,
    roc_curve_points,
    tar_at_far,
    threshold_at_far,
    verification_metrics,
)
from raylab.eval.ood import detection_accuracy, fpr_at_tpr, ood_metrics

__all__ = [
    "BinaryCurve",
    "anomaly_metrics",
    "attack_success_rate",
    "aupro",
    "auroc_standard_error",
    "best_f1_threshold",
    "binary_curve",
    "detection_accuracy",
    "equal_error_rate",
    "fpr_at_tpr",
    "identification_cmc",
    "image_metrics",
    "ood_metrics",
    "pair_scores",
    "pixel_metrics",
    "roc_curve_points",
    "tar_at_far",
    "threshold_at_far",
    "verification_metrics",
]
