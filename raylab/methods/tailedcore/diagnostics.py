"""What only the platform can measure about a long-tail run: it reads the protocol's truth
(tail classes, injected-noise flags, defect masks), which the methods never see."""

from __future__ import annotations

import numpy as np

from raylab.data.images import ImageTransform
from raylab.tasks.anomaly.benchmark import ClassEvaluation, mean_over_classes


def filter_removal(kept: np.ndarray, injected: np.ndarray, defect_cells: np.ndarray) -> dict[str, float]:
    """Share of patches a filter dropped: of clean images, of injected images, of their defects.

    ``defect_cells`` (N, h, w) marks the patches of injected images that overlap their
    defect mask (images without masks, like ELPV's, contribute none).
    """
    removed = ~kept

    def share(selector: np.ndarray) -> float:
        return float(removed[selector].mean()) if selector.any() else float("nan")

    return {
        "clean_patches_removed": share(np.broadcast_to(~injected[:, None, None], kept.shape)),
        "noise_patches_removed": share(np.broadcast_to(injected[:, None, None], kept.shape)),
        "defect_patches_removed": share(defect_cells),
    }


def defect_patch_cells(masks: list[bytes | None], ids: list[str], image_size: int, grid: tuple[int, int]) -> np.ndarray:
    """(N, h, w): which patch cells of each image overlap its defect mask."""
    transform = ImageTransform(size=image_size)
    rows = np.linspace(0, image_size, grid[0] + 1).astype(int)
    columns = np.linspace(0, image_size, grid[1] + 1).astype(int)
    cells = np.zeros((len(masks), *grid), dtype=bool)
    for i, (mask, sample) in enumerate(zip(masks, ids, strict=True)):
        if mask is None:
            continue
        pixels = transform.mask(mask, sample)
        for y in range(grid[0]):
            for x in range(grid[1]):
                cells[i, y, x] = pixels[rows[y] : rows[y + 1], columns[x] : columns[x + 1]].any()
    return cells


def tail_quality(predicted: np.ndarray, truth: np.ndarray, injected: np.ndarray | None = None) -> dict[str, float]:
    """TailSampler's prediction against the protocol's true tail images.

    With ``injected`` (the injected defect images), also ``injected_called_tail``: the share
    of them predicted tail. It is the error that costs TailedCore most: tail images enter
    the memory whole, past the LOF filter, so a defect called tail becomes normal memory.
    """
    hits = int((predicted & truth).sum())
    quality = {
        "tail_predicted": float(predicted.sum()),
        "tail_true": float(truth.sum()),
        "tail_precision": hits / predicted.sum() if predicted.any() else float("nan"),
        "tail_recall": hits / truth.sum() if truth.any() else float("nan"),
    }
    if injected is not None:
        quality["injected_called_tail"] = float(predicted[injected].mean()) if injected.any() else float("nan")
    return quality


def class_group_metrics(evaluations: list[ClassEvaluation], tail_classes: set[str]) -> dict[str, float]:
    """Means over all classes, plus image AUROC over the tail and over the head classes."""
    metrics = mean_over_classes(evaluations)
    for group, members in (
        ("tail", [e for e in evaluations if e.class_name in tail_classes]),
        ("head", [e for e in evaluations if e.class_name not in tail_classes]),
    ):
        metrics[f"{group}_image_auroc"] = mean_over_classes(members)["image_auroc"] if members else float("nan")
    return metrics
