"""Typed configuration of the one-class novelty protocol (importable without torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raylab.config import require


@dataclass
class ProtocolConfig:
    """The one-class protocol: per class, ``train_fraction`` of its images train, the rest test.

    ``color``: "L" (grey, 1 channel) or "RGB". ``resize_to``: None keeps the images' own
    size, which must then be the same for every image (a mixed-size folder is an error
    naming two differing files); an int resizes every image to that square side.
    """

    train_fraction: float = 0.5
    split_seed: int = 0
    color: Literal["L", "RGB"] = "L"
    resize_to: int | None = None

    def __post_init__(self) -> None:
        require(0.0 < self.train_fraction < 1.0, "train_fraction", f"must lie in (0, 1), got {self.train_fraction}")
        require(
            self.resize_to is None or self.resize_to >= 1, "resize_to", f"must be >= 1 or null, got {self.resize_to}"
        )
