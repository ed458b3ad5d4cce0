"""PatchCore's configuration, defaults from amazon-science/patchcore-inspection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raylab.config import require
from raylab.features.spec import FeatureSpec


@dataclass
class PatchCoreConfig:
    features: FeatureSpec = field(default_factory=FeatureSpec)
    coreset_ratio: float = 0.1
    coreset_method: Literal["exact", "approximate"] = "approximate"
    coreset_projection_dim: int | None = 128
    num_neighbors: int = 1
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        require(0.0 < self.coreset_ratio <= 1.0, "coreset_ratio", f"must lie in (0, 1], got {self.coreset_ratio}")
        require(
            self.coreset_projection_dim is None or self.coreset_projection_dim >= 1,
            "coreset_projection_dim",
            f"must be >= 1 or null, got {self.coreset_projection_dim}",
        )
        require(self.num_neighbors >= 1, "num_neighbors", f"must be >= 1, got {self.num_neighbors}")
        require(self.blur_sigma >= 0.0, "blur_sigma", f"must be >= 0, got {self.blur_sigma}")
