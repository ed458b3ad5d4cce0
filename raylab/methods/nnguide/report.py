"""The benchmark's table (detector x OOD set) and bar chart, as logged to MLflow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raylab.report.tables import rows_to_frame
from raylab.tasks.ood.benchmark import AVERAGE

TABLE_METRICS = ("auroc", "fpr95")


def detector_table(
    rows: Sequence[Mapping[str, Any]],
    ood_names: Sequence[str],
    metrics: Sequence[str] = TABLE_METRICS,
    validation_ood: str | None = None,
) -> pd.DataFrame:
    """One line per detector from the per-set summary rows: the mean over seeds of each
    ``metric/<set>`` and of the average (``metric``, with its standard deviation over seeds
    ``metric_sd``).

    A detector without a row for a set (the tuned detector on its validation-OOD set) shows
    NaN there; its average is over the sets it was reported on. With a ``validation_ood``
    set, ``metric/test_sets`` is every detector's mean over the other sets, the column in
    which the tuned detector compares with the rest.
    """
    frame = rows_to_frame(rows)
    methods = list(dict.fromkeys(frame["method"]))
    wide = frame.pivot_table(index=["method", "seed"], columns="ood_set", values=list(metrics))
    wide.columns = [metric if name == AVERAGE else f"{metric}/{name}" for metric, name in wide.columns]
    wide = wide.reset_index()
    columns = [f"{m}/{n}" for m in metrics for n in ood_names] + list(metrics)
    for column in columns:
        if column not in wide:
            wide[column] = np.nan
    if validation_ood is not None:
        test_sets = [n for n in ood_names if n != validation_ood]
        for metric in metrics:
            wide[f"{metric}/test_sets"] = wide[[f"{metric}/{n}" for n in test_sets]].mean(axis=1, skipna=False)
            columns.append(f"{metric}/test_sets")
    grouped = wide.groupby("method", sort=False)
    table = grouped[columns].mean()
    for metric in metrics:  # spread of the average over seeds (0 for a single seed)
        table[f"{metric}_sd"] = grouped[metric].std(ddof=0)
    table["n_seeds"] = grouped.size()
    return table.reindex(methods).reset_index()


def format_detector_table(table: pd.DataFrame) -> str:
    """Percentages with one decimal, as OOD papers print them."""
    shown = table.copy()
    for column in shown.columns:
        if column not in ("method", "n_seeds"):
            shown[column] = ["-" if pd.isna(v) else f"{100 * v:.1f}" for v in shown[column]]
    return shown.to_string(index=False)


def bar_chart(table: pd.DataFrame, ood_names: Sequence[str], path: str | Path, title: str) -> Path:
    """AUROC and FPR95 per detector, one bar per OOD set plus the average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*ood_names, "average"]
    methods = table["method"].tolist()
    width = 0.8 / len(groups)
    figure, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(methods) + 3), 4.2))
    for axis, metric in zip(axes, ("auroc", "fpr95"), strict=True):
        positions = np.arange(len(methods))
        for g, group in enumerate(groups):
            column = metric if group == "average" else f"{metric}/{group}"
            values = 100 * table[column].to_numpy(dtype=float)
            axis.bar(positions + (g - (len(groups) - 1) / 2) * width, values, width, label=group)
        axis.set_xticks(positions, methods, rotation=45, ha="right", fontsize=8)
        axis.set_ylabel(f"{metric.upper()} (%)")
        axis.set_title(f"{metric.upper()} ({'higher' if metric == 'auroc' else 'lower'} is better)", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
        if metric == "auroc":
            axis.set_ylim(
                max(0.0, np.nanmin(100 * table[[c for c in table if c.startswith("auroc")]].to_numpy(float)) - 5), 100
            )
    axes[0].legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
