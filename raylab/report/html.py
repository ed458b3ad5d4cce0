"""``raylab report EXPERIMENT``: one self-contained HTML page comparing the runs of a sweep.

Everything is inside the file (plots as base64 PNG, no scripts, no external style sheets),
so it can be mailed, attached to a ticket or opened offline. Sections, each present when the
runs carry what it needs:

* results table: mean +- std over seeds per method and setting (the axes the experiment
  declared: noise ratio and protocol, normal class, fold, ...);
* primary metrics vs the first numeric setting axis that varies, one line per method;
* per-class bars (from each run's ``per_class_metrics.csv``);
* trial scatter: the primary metric against every numeric hyperparameter that varies;
* anomaly-map overlays of the best run per method, and the figures the parent run logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.report.runs import SweepRuns, download_artifact, load_sweep

# Metrics in the order a reader looks for them; the report shows those present.
PRIMARY_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "auroc",
    "fpr95",
    "aupr_in",
    "aupr_out",
    "accuracy",
    "eer",
    "tar_at_far",
    "rank1",
    "attack_success_rate",
)
MAX_PER_CLASS_RUNS = 400
MAX_SCATTER_PARAMS = 6
IGNORED_PARAMS = ("seed",)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(alt)}</figcaption></figure>"
    )


def primary_metrics(runs: pd.DataFrame, limit: int = 3) -> list[str]:
    present = [m for m in PRIMARY_METRICS if f"metric.{m}" in runs and runs[f"metric.{m}"].notna().any()]
    if not present:  # a job with other metric names: the most common ones
        counts = runs[[c for c in runs.columns if c.startswith("metric.")]].notna().sum().sort_values(ascending=False)
        present = [c.removeprefix("metric.") for c in counts.index]
    return present[:limit]


# Replicates: averaged over in the tables and curves, never a setting of their own.
REPLICATE_AXES = ("seed",)


def setting_columns(runs: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """The declared axes the runs carry values for, replicates and ``method`` left out."""
    return [a for a in axes if a not in (*REPLICATE_AXES, "method") and a in runs and runs[a].notna().any()]


def plotted_axis(runs: pd.DataFrame, axes: Sequence[str]) -> str | None:
    """The first numeric setting axis taking two or more values (the noise ratio of a noise sweep)."""
    for axis in setting_columns(runs, axes):
        values = pd.to_numeric(runs[axis].dropna(), errors="coerce")
        if values.notna().all() and values.nunique() >= 2:
            return axis
    return None


def results_table(runs: pd.DataFrame, metrics: Sequence[str], axes: Sequence[str]) -> pd.DataFrame:
    keys = ["method", *setting_columns(runs, axes)]
    columns = [f"metric.{m}" for m in metrics]
    grouped = runs.groupby(keys, dropna=False)[columns]
    mean, std, count = grouped.mean(), grouped.std(ddof=0), grouped.size()
    table = pd.DataFrame(index=mean.index)
    for column, metric in zip(columns, metrics, strict=True):
        table[metric] = [
            "n/a" if pd.isna(m) else f"{m:.3f} ± {0.0 if pd.isna(s) else s:.3f}"
            for m, s in zip(mean[column], std[column], strict=True)
        ]
    table["runs"] = count
    return table.reset_index()


def metric_vs_setting(runs: pd.DataFrame, metrics: Sequence[str], axes: Sequence[str], setting: str) -> str:
    """``metrics`` against the ``setting`` axis (:func:`plotted_axis`), one curve per series."""
    label = setting.replace("_", " ")
    others = [a for a in setting_columns(runs, axes) if a != setting and runs[a].nunique(dropna=True) > 1]
    plt = _pyplot()
    figure, panels = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for panel, metric in zip(panels[0], metrics, strict=True):
        column = f"metric.{metric}"
        for name, group in _series(runs.dropna(subset=[column]), others):
            stats = group.groupby(setting)[column].agg(["mean", "std"]).sort_index()
            panel.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3, label=name)
        panel.set_xticks(sorted(pd.to_numeric(runs[setting].dropna()).unique()))
        panel.set(xlabel=label, ylabel=metric.replace("_", " "), title=f"{metric} vs {label}")
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7)
    return _png(figure)


def _series(runs: pd.DataFrame, others: Sequence[str]):
    """One curve per method, or per method and value of every other axis that varies (the two
    test protocols of a noise sweep measure different things and must not be averaged)."""
    for key, group in runs.groupby(["method", *others]):
        values = key if isinstance(key, tuple) else (key,)
        extra = ", ".join(f"{axis} {value}" for axis, value in zip(others, values[1:], strict=True))
        yield (f"{values[0]} ({extra})" if extra else str(values[0])), group


def per_class_bars(sweep: SweepRuns, metric: str, tracking_uri: str | None) -> str | None:
    frames = []
    for row in sweep.runs.head(MAX_PER_CLASS_RUNS).itertuples():
        if "per_class_metrics.csv" in sweep.artifacts.get(row.run_id, []):
            table = pd.read_csv(
                io.BytesIO(download_artifact(row.run_id, "per_class_metrics.csv", tracking_uri=tracking_uri))
            )
            if metric in table and "class_name" in table:
                frames.append(table.assign(method=row.method, noise_ratio=getattr(row, "noise_ratio", None)))
    if not frames:
        return None
    data = pd.concat(frames)
    ratios = sorted(data["noise_ratio"].dropna().unique())[:4] or [None]
    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(ratios), figsize=(max(4.5, 1.2 * data["class_name"].nunique()) * len(ratios) ** 0.7, 3.8), squeeze=False
    )
    for axis, ratio in zip(axes[0], ratios, strict=True):
        subset = data if ratio is None else data[data["noise_ratio"] == ratio]
        means = subset.groupby(["class_name", "method"])[metric].mean().unstack("method")
        classes, methods = list(means.index), list(means.columns)
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            axis.bar(np.arange(len(classes)) + i * width, means[method].to_numpy(), width, label=str(method))
        axis.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30, fontsize=7)
        axis.set(ylabel=metric.replace("_", " "), title=f"per class{'' if ratio is None else f', noise {ratio:g}'}")
        axis.set_ylim(0, 1.05 if data[metric].max() <= 1 else None)
        axis.legend(fontsize=6)
    return _png(figure)


def varying_params(runs: pd.DataFrame) -> list[str]:
    """Numeric parameters that take more than one value over the runs (the swept axes)."""
    found = []
    for column in runs.columns:
        if not column.startswith("param.") or column.removeprefix("param.") in IGNORED_PARAMS:
            continue
        present = runs[column].dropna()
        values = pd.to_numeric(present, errors="coerce")
        if len(present) >= 2 and values.notna().all() and values.nunique() > 1:
            found.append(column)
    # Trial-level params (rho, lr, noise_ratio) before config.* entries that happen to vary.
    return sorted(found, key=lambda c: (c.startswith("param.config."), c))[:MAX_SCATTER_PARAMS]


def trial_scatter(runs: pd.DataFrame, metric: str) -> str | None:
    params = varying_params(runs)
    if not params:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(params), figsize=(3.6 * len(params), 3.4), squeeze=False, sharey=True)
    column = f"metric.{metric}"
    for axis, param in zip(axes[0], params, strict=True):
        for method, group in runs.dropna(subset=[column, param]).groupby("method"):
            axis.scatter(pd.to_numeric(group[param]), group[column], s=22, alpha=0.8, label=str(method))
        axis.set(xlabel=param.removeprefix("param."), title=f"{metric} per trial")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][-1].legend(fontsize=6)
    return _png(figure)


def overlay_images(
    sweep: SweepRuns, metric: str, tracking_uri: str | None, per_method: int = 2
) -> list[tuple[str, str]]:
    """The overlays logged by the best run of each method (at the lowest noise ratio)."""
    column = f"metric.{metric}"
    images = []
    if column not in sweep.runs:
        return images
    runs = sweep.runs.dropna(subset=[column])
    if "noise_ratio" in runs and runs["noise_ratio"].notna().any():
        runs = runs[runs["noise_ratio"] == runs["noise_ratio"].min()]
    for method, group in runs.groupby("method"):
        best = group.sort_values(column, ascending=False).iloc[0]
        paths = [
            p
            for p in sweep.artifacts.get(best.run_id, [])
            if Path(p).name.startswith("overlays") and p.endswith(".png")
        ]
        for path in sorted(paths)[:per_method]:
            data = base64.b64encode(download_artifact(best.run_id, path, tracking_uri=tracking_uri)).decode("ascii")
            images.append((data, f"{method}: {path} (run {best.run_name}, {metric} {best[column]:.3f})"))
    return images


def parent_figures(sweep: SweepRuns, tracking_uri: str | None) -> list[tuple[str, str]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    figures = []
    for item in client.list_artifacts(sweep.parent.info.run_id):
        if item.path.endswith(".png"):
            data = download_artifact(sweep.parent.info.run_id, item.path, tracking_uri=tracking_uri)
            figures.append(
                (base64.b64encode(data).decode("ascii"), f"logged by {sweep.parent.info.run_name}: {item.path}")
            )
    return figures


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; } \
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #666; font-size: .85em; } code { background: #f5f5f5; padding: 0 .2em; }
"""


def render(sweep: SweepRuns, tracking_uri: str | None = None) -> str:
    runs = sweep.runs
    if runs.empty:
        raise LookupError(f"sweep {sweep.parent.info.run_name!r} in {sweep.experiment!r} has no finished nested runs")
    metrics = primary_metrics(runs)
    parent = sweep.parent
    started = dt.datetime.fromtimestamp(parent.info.start_time / 1000).isoformat(timespec="seconds")
    parts = [
        f"<h1>{html.escape(sweep.experiment)}: {html.escape(parent.info.run_name)}</h1>",
        f'<p class="note">parent run <code>{parent.info.run_id}</code> ({parent.info.status}, started {started}), '
        f"{len(runs)} finished nested runs, "
        f"methods: {html.escape(', '.join(sorted(map(str, runs['method'].dropna().unique()))))}; "
        f"tracking URI <code>{html.escape(str(tracking_uri or ''))}</code></p>",
        "<h2>Results (mean ± std over seeds)</h2>",
        results_table(runs, metrics, sweep.axes).to_html(index=False, escape=True),
    ]
    setting = plotted_axis(runs, sweep.axes)
    sections = [
        (
            f"Metrics vs {(setting or 'a setting').replace('_', ' ')}",
            lambda: None if setting is None else metric_vs_setting(runs, metrics, sweep.axes, setting),
            "no numeric setting axis takes two values",
        ),
        (
            f"Per class ({metrics[0]})",
            lambda: per_class_bars(sweep, metrics[0], tracking_uri),
            "no per_class_metrics.csv artifacts",
        ),
        (
            f"Trials over hyperparameters ({metrics[0]})",
            lambda: trial_scatter(runs, metrics[0]),
            "no numeric parameter varies",
        ),
    ]
    for title, make, missing in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        image = make()
        parts.append(_img(image, title) if image else f'<p class="note">not shown: {missing}</p>')
    overlays = overlay_images(sweep, metrics[0], tracking_uri)
    parts.append("<h2>Anomaly-map overlays (best run per method)</h2>")
    if overlays:
        parts.extend(_img(data, caption) for data, caption in overlays)
    else:
        parts.append('<p class="note">not shown: the runs logged no overlays</p>')
    logged = parent_figures(sweep, tracking_uri)
    if logged:
        parts.append("<h2>Figures logged by the sweep</h2>")
        parts.extend(_img(data, caption) for data, caption in logged)
    title = html.escape(f"raylab report: {sweep.experiment} / {parent.info.run_name}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_report(
    experiment: str, output: str | Path, *, parent: str | None = None, tracking_uri: str | None = None
) -> Path:
    sweep = load_sweep(experiment, parent=parent, tracking_uri=tracking_uri)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(sweep, tracking_uri), encoding="utf-8")
    return output
