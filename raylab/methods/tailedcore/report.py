"""The sweep's figure: mean (+- std over seeds) image AUROC, all classes and tail classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def auroc_bars(
    table: pd.DataFrame, path: str | Path, metrics: tuple[str, ...] = ("image_auroc", "tail_image_auroc")
) -> Path:
    """One panel per metric; bars grouped by setting (protocol, noise ratio, test protocol), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("protocol", "noise_ratio", "injected_in_test") if k in table]
    settings = table[keys].drop_duplicates().sort_values(keys)
    # Rows without AUROC (the per-trial "tailsampler" row) get no bar.
    methods = sorted(
        m for m in table["method"].unique() if table.loc[table["method"] == m, f"{metrics[0]}_mean"].notna().any()
    )
    width = 0.8 / max(1, len(methods))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for m, method in enumerate(methods):
            means, stds = [], []
            for _, setting in settings.iterrows():
                row = table[(table["method"] == method) & (table[keys] == setting[keys]).all(axis=1)]
                means.append(float(row[f"{metric}_mean"].iloc[0]) if len(row) else np.nan)
                stds.append(float(row[f"{metric}_std"].iloc[0]) if len(row) else np.nan)
            axis.bar(np.arange(len(settings)) + m * width, means, width, yerr=stds, capsize=3, label=method)
        axis.set_xticks(np.arange(len(settings)) + width * (len(methods) - 1) / 2)
        axis.set_xticklabels([_setting_label(setting) for _, setting in settings.iterrows()], fontsize=8)
        axis.set(ylabel=metric.replace("_", " "), ylim=(0.4, 1.0))
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _setting_label(setting: pd.Series) -> str:
    label = f"{setting['protocol']}\nnr {setting['noise_ratio']:g}"
    return f"{label}\ninjected {setting['injected_in_test']}" if "injected_in_test" in setting else label
