"""The sweep's outputs: the per-class AUROC table, its bar chart, and reconstruction grids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raylab.report.tables import rows_to_frame


def per_class_table(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> pd.DataFrame:
    """One line per normal class and a ``mean`` line; per method the mean and std of AUROC over seeds.

    The ``mean`` line averages over classes within each seed first, then takes mean and std
    over seeds: the spread of the quantity the literature reports (the mean over classes).
    """
    frame = rows_to_frame(rows)
    frame = frame[frame["method"].isin(methods)]
    lines = []
    for (normal_class, class_name), group in frame.groupby(["normal_class", "class_name"], sort=True):
        line: dict[str, Any] = {"normal_class": str(normal_class), "class_name": class_name}
        for method in methods:
            values = group.loc[group["method"] == method, "auroc"].to_numpy(float)
            line[f"{method}_mean"], line[f"{method}_std"] = _mean_std(values)
        line["n_seeds"] = int(group["seed"].nunique())
        lines.append(line)
    summary: dict[str, Any] = {"normal_class": "mean", "class_name": ""}
    per_seed = frame.groupby(["method", "seed"])["auroc"].mean()
    for method in methods:
        values = per_seed.loc[method].to_numpy(float) if method in per_seed.index.get_level_values(0) else np.array([])
        summary[f"{method}_mean"], summary[f"{method}_std"] = _mean_std(values)
    summary["n_seeds"] = int(frame["seed"].nunique())
    lines.append(summary)
    return pd.DataFrame(lines)


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return (float(values.mean()), float(values.std(ddof=0))) if values.size else (float("nan"), float("nan"))


def format_per_class_table(table: pd.DataFrame, methods: Sequence[str]) -> str:
    shown = table[["normal_class", "class_name"]].copy()
    for method in methods:
        shown[method] = [
            "n/a" if pd.isna(m) else f"{m:.3f} ± {s:.3f}"
            for m, s in zip(table[f"{method}_mean"], table[f"{method}_std"], strict=True)
        ]
    shown["n_seeds"] = table["n_seeds"]
    return shown.to_string(index=False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(table: pd.DataFrame, methods: Sequence[str], path: str | Path, title: str) -> Path:
    """AUROC per normal class (and the mean), one bar per method, error bars = std over seeds."""
    plt = _pyplot()
    labels = [
        f"{c}\n{n}" if n and n != c else c for c, n in zip(table["normal_class"], table["class_name"], strict=True)
    ]
    positions = np.arange(len(labels))
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(max(7.0, 0.9 * len(labels) + 2), 4.2))
    for i, method in enumerate(methods):
        axis.bar(
            positions + (i - (len(methods) - 1) / 2) * width,
            table[f"{method}_mean"],
            width,
            yerr=table[f"{method}_std"],
            capsize=2,
            label=method,
        )
    low = np.nanmin(table[[f"{m}_mean" for m in methods]].to_numpy(float))
    axis.set_ylim(max(0.0, low - 0.1), 1.0)
    axis.set_xticks(positions, labels, fontsize=7)
    axis.set_ylabel("AUROC (normal class vs the rest)")
    axis.set_title(title, fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncol=len(methods), loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _show(image: np.ndarray) -> np.ndarray:
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def reconstruction_grid(
    inputs: np.ndarray, reconstructions: Mapping[str, np.ndarray], captions: Sequence[str], path: str | Path, title: str
) -> Path:
    """Columns = images (``captions`` above), rows = the input and each model's reconstruction."""
    plt = _pyplot()
    rows = [("input", inputs), *reconstructions.items()]
    n = len(inputs)
    figure, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 0.8, 1.15 * len(rows) + 0.5), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(n):
            axis = axes[r][c]
            axis.imshow(_show(images[c]), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=255)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(name, fontsize=7)
            if r == 0:
                axis.set_title(captions[c], fontsize=6)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
