"""PatchCore's configuration, defaults from amazon-science/patchcore-inspection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raylab.features.backbones import FeatureSpec


@dataclass
class PatchCoreConfig:
    features: FeatureSpec = field(default_factory=FeatureSpec)
    coreset_ratio: float = 0.1
    coreset_method: Literal["exact", "approximate"] = "approximate"
    coreset_projection_dim: int | None = 128
    num_neighbors: int = 1
    blur_sigma: float = 4.0
