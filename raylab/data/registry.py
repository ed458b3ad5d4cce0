"""The dataset registry: ``load_corpus("magnetic_tile", data_root)`` and friends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from raylab.registry import Registry

DATASETS: Registry[Callable[..., pa.Table]] = Registry("dataset")


def load_corpus(name: str, data_root: str | Path | None = None, **options: Any) -> pa.Table:
    """Load a registered dataset as a corpus table (adapters validate every sample)."""
    import raylab.data.adapters  # noqa: F401  (registers the adapters)

    loader = DATASETS.get(name)
    return loader(data_root, **options)
