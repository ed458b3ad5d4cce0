"""Figures logged as MLflow artifacts: anomaly-map overlays, ROC curves, other metric curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def anomaly_overlays(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    titles: Sequence[str],
    path: str | Path,
) -> Path:
    """One column per image: the image, its ground-truth mask outline, and the map on top."""
    plt = _pyplot()
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(2.4 * count, 5), squeeze=False)
    low = float(np.min([m.min() for m in maps]))
    high = float(np.max([m.max() for m in maps]))
    for column, (image, amap, mask, title) in enumerate(zip(images, maps, masks, titles, strict=True)):
        for row in (0, 1):
            axes[row, column].imshow(image, cmap="gray")
            axes[row, column].axis("off")
            if mask is not None and mask.any():
                axes[row, column].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
        axes[1, column].imshow(amap, cmap="jet", alpha=0.45, vmin=low, vmax=high)
        axes[0, column].set_title(title, fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "ROC") -> Path:
    """ROC curves of several (labels, scores) pairs on one plot, AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for name, (labels, scores) in curves.items():
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        axis.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, scores):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def metric_vs_setting(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Mean +- std lines, one per method (e.g. image AUROC vs noise ratio)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 4))
    for name, (xs, means, stds) in series.items():
        axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
    axis.set(xlabel=xlabel, ylabel=ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def line_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
) -> Path:
    """Precomputed curves, one line per name (e.g. a CMC curve, or a verification ROC as FAR/TAR)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for name, (xs, ys) in series.items():
        axis.plot(xs, ys, marker="o" if len(xs) <= 20 else None, label=name)
    if logx:
        axis.set_xscale("log")
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
