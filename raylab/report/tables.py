"""Result tables: summary rows -> a (method x setting) table, printed and saved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd


def rows_to_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Flatten summary rows (``metrics`` expanded into columns)."""
    flat = []
    for row in rows:
        entry = {k: v for k, v in row.items() if k != "metrics"}
        entry.update(row.get("metrics", {}))
        flat.append(entry)
    return pd.DataFrame(flat)


def aggregate(rows: Sequence[Mapping[str, Any]], by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each metric, per ``by`` group."""
    frame = rows_to_frame(rows)
    metrics = [m for m in metrics if m in frame.columns]
    grouped = frame.groupby(list(by), dropna=False)[metrics]
    table = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).add_suffix("_std"))
    table["n_seeds"] = grouped.size()
    return table.reset_index()


def format_table(table: pd.DataFrame, metrics: Sequence[str]) -> str:
    """A plain-text table with ``mean ± std`` cells, the form the README quotes."""
    shown = table[[c for c in table.columns if not c.endswith(("_mean", "_std"))]].copy()
    for metric in metrics:
        if f"{metric}_mean" in table:
            shown[metric] = [
                "n/a" if pd.isna(m) else f"{m:.3f} ± {s:.3f}"
                for m, s in zip(table[f"{metric}_mean"], table[f"{metric}_std"], strict=True)
            ]
    return shown.to_string(index=False)
