"""Tests for raylab.eval: hand-computed cases, scikit-learn cross-checks, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from raylab.eval import (
    anomaly_metrics,
    attack_success_rate,
    aupro,
    auroc_standard_error,
    best_f1_threshold,
    detection_accuracy,
    equal_error_rate,
    fpr_at_tpr,
    identification_cmc,
    image_metrics,
    ood_metrics,
    pair_scores,
    pixel_metrics,
    roc_curve_points,
    tar_at_far,
    threshold_at_far,
    verification_metrics,
)

# ------------------------------------------------------------------------------ helpers


def _reference_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """Slow, literal AUPRO: loop over thresholds and regions, integrate with np.interp."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = labelled == k
            regions.append(region)
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        pros.append(np.mean([np.sum(above & r) / np.sum(r) for r in regions]))
        fprs.append(np.sum(above & normal) / np.sum(normal))
    fpr, pro = np.array(fprs), np.array(pros)
    past = int(np.argmax(fpr > max_fpr)) if np.any(fpr > max_fpr) else fpr.size
    xs, ys = fpr[:past], pro[:past]
    if past < fpr.size:  # close the curve at exactly max_fpr on the crossing segment
        frac = (max_fpr - fpr[past - 1]) / (fpr[past] - fpr[past - 1])
        xs = np.append(xs, max_fpr)
        ys = np.append(ys, pro[past - 1] + frac * (pro[past] - pro[past - 1]))
    return float(np.trapezoid(ys, xs) / max_fpr)


def _random_pixel_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 12, 12), dtype=np.uint8)
    masks[0, 2:5, 2:6] = 1
    masks[0, 8:11, 9:10] = 1
    masks[2, 5:9, 1:3] = 1
    masks[3, 0:2, 10:12] = 1
    # Rounding to one decimal creates many ties, within and across classes.
    maps = np.round(rng.random(masks.shape) * 0.8 + 0.3 * masks, 1)
    return masks, maps


# -------------------------------------------------------------------------- image level


def test_image_auroc_hand_computed() -> None:
    # Positive/negative pairs: 0.35>0.1 yes, 0.35>0.4 no, 0.8>both yes -> 3/4.
    result = image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert result["image_auroc"] == pytest.approx(0.75)
    # AP: recall steps at 0.8 (P=1) and 0.35 (P=2/3) -> 0.5 * 1 + 0.5 * 2/3.
    assert result["image_ap"] == pytest.approx(0.5 + 1 / 3)


def test_auroc_standard_error_matches_the_spread_of_resampled_sets() -> None:
    """Hanley-McNeil's error is what AUROC varies by when the evaluation images are redrawn."""
    rng = np.random.default_rng(0)
    aurocs = []
    for _ in range(400):
        normal, anomalous = rng.normal(0.0, 1.0, 120), rng.normal(1.5, 1.0, 120)
        labels = np.r_[np.zeros(120), np.ones(120)]
        aurocs.append(image_metrics(labels, np.r_[normal, anomalous])["image_auroc"])
    expected = auroc_standard_error(float(np.mean(aurocs)), 120, 120)
    assert expected == pytest.approx(np.std(aurocs), rel=0.15)
    assert auroc_standard_error(1.0, 5, 5) == 0.0 and auroc_standard_error(0.9, 400, 400) < expected
    with pytest.raises(ValueError, match="1 image of each kind"):
        auroc_standard_error(0.9, 0, 10)


def test_image_f1_max_hand_computed() -> None:
    # Thresholds: 0.8 -> F1 2/3; 0.4 -> 1/2; 0.35 -> P=2/3, R=1 -> 0.8; 0.1 -> 2/3.
    f1, threshold = best_f1_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert f1 == pytest.approx(0.8)
    assert threshold == pytest.approx(0.35)
    assert image_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["image_f1_max"] == pytest.approx(0.8)


def test_image_metrics_single_class_gives_nan_auroc() -> None:
    result = image_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert all(math.isnan(v) for v in result.values())
    assert math.isnan(image_metrics([1, 1], [0.1, 0.2])["image_auroc"])


# -------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_auroc_ap_f1_match_sklearn_with_ties(seed: int) -> None:
    masks, maps = _random_pixel_case(seed)
    y, s = masks.ravel(), maps.ravel()
    result = pixel_metrics(masks, maps)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    assert result["pixel_f1_max"] == pytest.approx(f1.max(), abs=1e-12)


def test_pixel_metrics_keys_and_float_dtypes_agree() -> None:
    masks, maps = _random_pixel_case(3)
    r64 = pixel_metrics(masks.astype(bool), maps)
    r32 = pixel_metrics(masks, maps.astype(np.float32))
    assert set(r64) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}
    for key in r64:
        assert r32[key] == pytest.approx(r64[key], abs=1e-9)


def test_aupro_perfect_map_is_one() -> None:
    masks, _ = _random_pixel_case(0)
    perfect = masks.astype(np.float64)
    assert aupro(masks, perfect) == pytest.approx(1.0)
    assert pixel_metrics(masks, perfect)["pixel_auroc"] == pytest.approx(1.0)


def test_aupro_two_regions_hand_computed() -> None:
    # One 4x4 image: region A = 4 px (top-left 2x2), region B = 2 px (bottom-right 1x2);
    # 10 normal pixels.  Map: 2 on all of A, on one pixel of B and on one normal pixel;
    # 1 elsewhere.
    mask = np.zeros((1, 4, 4), dtype=np.uint8)
    mask[0, 0:2, 0:2] = 1
    mask[0, 3, 2:4] = 1
    amap = np.ones((1, 4, 4))
    amap[0, 0:2, 0:2] = 2
    amap[0, 3, 3] = 2
    amap[0, 0, 3] = 2
    # t=2: A covered 1, B covered 1/2 -> PRO = 0.75 (pixel TPR would be 5/6); FPR = 1/10.
    # t=1: PRO = 1, FPR = 1.  Curve: (0,0) -> (0.1, 0.75) -> (1, 1).
    # PRO at FPR 0.3 = 0.75 + 0.25 * (0.2 / 0.9) = 29/36.
    # Area = 0.1 * 0.75 / 2 + 0.2 * (0.75 + 29/36) / 2 = 3/80 + 7/45 = 139/720.
    assert aupro(mask, amap, max_fpr=0.3) == pytest.approx((139 / 720) / 0.3)
    assert aupro(mask, amap, max_fpr=0.1) == pytest.approx(0.375)
    assert aupro(mask, amap, max_fpr=1.0) == pytest.approx(0.0375 + 0.9 * 1.75 / 2)


def test_aupro_connectivity_changes_region_count() -> None:
    # Pixels (0,0), (1,1), (1,2): one 3-pixel region with 8-connectivity; with
    # 4-connectivity {(0,0)} and {(1,1),(1,2)}.  Only (0,0) scores 1, no normal pixel does.
    mask = np.zeros((1, 3, 3), dtype=np.uint8)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = 1
    amap = np.zeros((1, 3, 3))
    amap[0, 0, 0] = 1.0
    # Curve (0,0) -> (0, PRO(1)) -> (1,1): 8-conn PRO(1) = 1/3, 4-conn PRO(1) = (1 + 0)/2.
    assert aupro(mask, amap, max_fpr=1.0, connectivity=8) == pytest.approx(1 / 3 + 2 / 3 / 2)
    assert aupro(mask, amap, max_fpr=1.0, connectivity=4) == pytest.approx(1 / 2 + 1 / 2 / 2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
def test_aupro_matches_literal_reference(seed: int, max_fpr: float) -> None:
    masks, maps = _random_pixel_case(seed)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(_reference_aupro(masks, maps, max_fpr), abs=1e-12)


def test_aupro_invariant_to_monotone_transform() -> None:
    masks, maps = _random_pixel_case(5)
    base = pixel_metrics(masks, maps)
    transformed = pixel_metrics(masks, np.exp(3.0 * maps) - 7.0)
    for key in base:
        assert transformed[key] == pytest.approx(base[key], abs=1e-12)


def test_pixel_metrics_nan_without_anomalous_pixels() -> None:
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    result = pixel_metrics(masks, np.random.default_rng(0).random((2, 4, 4)))
    assert math.isnan(result["aupro"]) and math.isnan(result["pixel_auroc"])


def test_anomaly_metrics_combines_keys() -> None:
    masks, maps = _random_pixel_case(0)
    labels = masks.reshape(len(masks), -1).max(axis=1)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    only_image = anomaly_metrics(labels, scores)
    assert set(only_image) == {"image_auroc", "image_ap", "image_f1_max"}
    both = anomaly_metrics(labels, scores, masks, maps)
    assert set(both) == set(only_image) | {"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}


# ------------------------------------------------------------------------- validation


def test_nan_scores_rejected_with_count_and_index() -> None:
    with pytest.raises(ValueError, match=r"2 non-finite.*first at index 1"):
        image_metrics([0, 1, 0, 1], [0.1, np.nan, 0.3, np.inf])
    maps = np.zeros((2, 3, 4))
    maps[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"anomaly maps.*1 non-finite.*\(1, 2, 3\)"):
        pixel_metrics(np.zeros((2, 3, 4), dtype=bool), maps)


def test_non_binary_labels_and_masks_rejected() -> None:
    with pytest.raises(ValueError, match="labels must be binary"):
        image_metrics([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="masks must be binary"):
        pixel_metrics(np.full((1, 2, 2), 255, dtype=np.uint8), np.zeros((1, 2, 2)))


def test_shape_mismatches_rejected() -> None:
    with pytest.raises(ValueError, match="does not match"):
        image_metrics([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="does not match"):
        pixel_metrics(np.zeros((2, 4, 4), dtype=bool), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pixel_metrics(np.zeros((16,), dtype=bool), np.zeros((16,)))
    with pytest.raises(ValueError, match="max_fpr"):
        pixel_metrics(np.zeros((1, 2, 2), dtype=bool), np.zeros((1, 2, 2)), max_fpr=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        aupro(np.zeros((1, 2, 2), dtype=bool), np.zeros((1, 2, 2)), connectivity=6)
    with pytest.raises(ValueError, match="together"):
        anomaly_metrics([0, 1], [0.1, 0.2], masks=np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------------- OOD


def test_ood_perfect_separation() -> None:
    result = ood_metrics([0.1, 0.2, 0.3], [0.7, 0.8, 0.9, 1.0])
    assert result["auroc"] == 1.0
    assert result["fpr95"] == 0.0
    assert result["aupr_in"] == pytest.approx(1.0)
    assert result["aupr_out"] == pytest.approx(1.0)
    assert result["detection_acc"] == pytest.approx(1.0)


def test_fpr95_hand_computed_with_conservative_tie() -> None:
    id_scores = np.arange(20.0)  # 19 of 20 (= 95%) accepted at t = 18
    ood_scores = [18.0, 18.5, 25.0, 30.0]  # the OOD score tied with t counts as accepted
    fpr, threshold = fpr_at_tpr(id_scores, ood_scores)
    assert threshold == 18.0
    assert fpr == pytest.approx(0.25)
    assert ood_metrics(id_scores, ood_scores)["fpr95"] == pytest.approx(0.25)


def test_ood_constant_detector_is_not_rewarded() -> None:
    result = ood_metrics(np.zeros(10), np.zeros(10))
    assert result["fpr95"] == 1.0
    assert result["auroc"] == pytest.approx(0.5)
    assert result["detection_acc"] == pytest.approx(0.5)


def test_ood_hand_computed_auroc_and_detection_acc() -> None:
    # OOD > ID pairs: 2.5 beats 0, 1, 2; 5 beats all four -> 7/8.
    # Best threshold 2.5: ID accepted 3/4, OOD rejected 2/2 -> 0.5 * (0.75 + 1).
    result = ood_metrics([0.0, 1.0, 2.0, 3.0], [2.5, 5.0])
    assert result["auroc"] == pytest.approx(0.875)
    assert detection_accuracy([0.0, 1.0, 2.0, 3.0], [2.5, 5.0]) == pytest.approx(0.875)


def test_ood_matches_openood_formulas() -> None:
    rng = np.random.default_rng(0)
    id_scores = np.round(rng.normal(0.0, 1.0, 500), 1)
    ood_scores = np.round(rng.normal(1.0, 1.0, 300), 1)
    result = ood_metrics(id_scores, ood_scores)
    # OpenOOD: ROC with ID positive on -score; fpr at the first tpr >= 0.95.
    labels_id = np.r_[np.ones(500), np.zeros(300)]
    fpr, tpr, _ = roc_curve(labels_id, -np.r_[id_scores, ood_scores])
    assert result["fpr95"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    assert result["aupr_in"] == pytest.approx(average_precision_score(labels_id, -np.r_[id_scores, ood_scores]))
    expected_auroc = roc_auc_score(1 - labels_id, np.r_[id_scores, ood_scores])
    assert result["auroc"] == pytest.approx(expected_auroc)


def test_ood_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match=r"ood_scores.*1 non-finite.*index 2"):
        ood_metrics([0.1, 0.2], [0.3, 0.4, np.inf])


# -------------------------------------------------------------------------- biometrics


def _clustered_embeddings(ids: list[int], noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[np.asarray(ids)]
    return centres + noise * rng.normal(size=centres.shape)


def test_self_pairs_never_counted_as_genuine() -> None:
    ids = [0, 0, 0, 1, 1, 2]  # genuine pairs: 3 + 1 + 0 = 4; all pairs: 15
    emb = _clustered_embeddings(ids, noise=0.3)
    genuine, impostor = pair_scores(emb, ids)
    assert genuine.size == 4 and impostor.size == 11
    assert np.all(genuine < 1.0 - 1e-6)  # a self-pair would have similarity exactly 1
    metrics = verification_metrics(emb, ids)
    assert metrics["n_genuine"] == 4 and metrics["n_impostor"] == 11
    with pytest.raises(ValueError, match="self-pairs"):
        verification_metrics(emb, ids, exclude_self_pairs=False)


def test_perfectly_separable_embeddings_have_zero_eer() -> None:
    ids = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    metrics = verification_metrics(_clustered_embeddings(ids, noise=0.05), ids)
    assert metrics["eer"] == 0.0
    for key in ("tar@far=1e-3", "tar@far=1e-2", "tar@far=1e-1"):
        assert metrics[key] == 1.0
    assert {"threshold@far=1e-3", "threshold@far=1e-2", "threshold@far=1e-1"} <= set(metrics)


def test_eer_hand_computed() -> None:
    # Sorted: 0.9g 0.8g 0.7i 0.3g 0.2i 0.1i; at t=0.7 FAR = FRR = 1/3.
    eer, threshold = equal_error_rate([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])
    assert eer == pytest.approx(1 / 3) and threshold == pytest.approx(0.7)
    # Crossing inside a segment: (FAR, FRR) goes (0, 1/3) at t=0.8 -> (1/2, 1/3) at t=0.7;
    # FAR - FRR changes sign there, and FRR is 1/3 all along, so EER = 1/3.
    eer, _ = equal_error_rate([0.9, 0.8, 0.2], [0.7, 0.6])
    assert eer == pytest.approx(1 / 3)


def test_threshold_and_tar_at_far() -> None:
    impostor = np.arange(1, 11) / 10  # 0.1 .. 1.0
    assert threshold_at_far(impostor, 0.2) == pytest.approx(0.8)  # 0.9, 1.0 above: 2/10
    tar, threshold = tar_at_far([0.95, 0.85, 0.75, 0.5], impostor, 0.2)
    assert tar == pytest.approx(0.5) and threshold == pytest.approx(0.8)
    # Ties: three impostors at 0.9; at most 1/4 may be strictly above -> t = 0.9.
    assert threshold_at_far([0.5, 0.9, 0.9, 0.9], 0.25) == 0.9
    # 0.29 * 100 rounds to 28.999..., yet 29 of 100 impostors may lie above.
    assert threshold_at_far(np.arange(100.0), 0.29) == 70.0
    with pytest.raises(ValueError, match="far"):
        threshold_at_far(impostor, 1.0)


def test_roc_curve_points_endpoints() -> None:
    far, tar, thresholds = roc_curve_points([0.9, 0.8, 0.3], [0.7, 0.2, 0.1])
    assert (far[0], tar[0], thresholds[0]) == (0.0, 0.0, np.inf)
    assert (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)


def test_cmc_hand_computed() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gallery_ids = ["A", "B", "C"]
    probes = np.array([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    # p0 (A): A best -> rank 1.  p1 (B): A, C ahead -> rank 3.
    # p2 (A): C best, A tied with B -> tie counted against the probe -> rank 3.
    cmc = identification_cmc(gallery, gallery_ids, probes, ["A", "B", "A"], max_rank=3)
    np.testing.assert_allclose(cmc, [1 / 3, 1 / 3, 1.0])


def test_cmc_ranks_identities_not_samples() -> None:
    # Two gallery samples of A both beat B's sample: identity rank 2, not sample rank 3.
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    cmc = identification_cmc(gallery, [0, 0, 1], np.array([[1.0, 0.05]]), [1], max_rank=3)
    np.testing.assert_allclose(cmc, [0.0, 1.0, 1.0])


def test_cmc_missing_probe_identity_raises() -> None:
    with pytest.raises(ValueError, match="absent from the gallery"):
        identification_cmc(np.eye(2), [0, 1], np.eye(2), [0, 7])


def test_attack_success_rate_and_validation() -> None:
    assert attack_success_rate([0.1, 0.5, 0.6, 0.9], 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="all-zero"):
        pair_scores(np.array([[1.0, 0.0], [0.0, 0.0]]), [0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        attack_success_rate([0.1, np.nan], 0.5)
