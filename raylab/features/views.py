"""Rotated and flipped views of images, made on the extractor's device, a batch at a time.

TailedCore augments its tail images by every rotation that is a multiple of ``rotation_step``
degrees, each with and without a horizontal flip (the identity excluded). A rotation must not
bring empty corners into view, so each image is padded by replication to its diagonal,
rotated (nearest-neighbour, torchvision's default) and centre-cropped back to its size, as
the method's release does.

This lives in the feature layer, not in the method, so the views go through the same
extraction path as every other feature (:func:`raylab.features.extract.extract_patch_features`
with ``views=``): the extractor normalises a batch of images on its device (the accelerator
when it has one), expands it here into all their views at once, and embeds them in one
forward pass, instead of one image's views at a time on one CPU thread in a trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ViewSpec:
    """Every (angle, flip) pair but the identity: angles ``0, step, 2 step, ... < 360``."""

    rotation_step: int = 15
    hflip: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.rotation_step <= 360:
            raise ValueError(f"rotation_step must be in (0, 360] degrees, got {self.rotation_step}")
        if self.count() < 1:
            raise ValueError("no augmented views: rotation_step 360 without hflip leaves only the original")

    def pairs(self) -> list[tuple[int, int]]:
        """The (angle, flip) of each view, angle-major, in the order the views are stacked."""
        return [
            (angle, flip)
            for angle in range(0, 360, self.rotation_step)
            for flip in ((0, 1) if self.hflip else (0,))
            if (angle, flip) != (0, 0)
        ]

    def count(self) -> int:
        return len(range(0, 360, self.rotation_step)) * (2 if self.hflip else 1) - 1

    def expand(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) -> (N, V, C, S, S): every image's views, each angle applied to the whole batch at once."""
        import torchvision.transforms.functional as TF

        size = pixels.shape[-2:]
        pad = math.ceil((math.hypot(*size) - min(size)) / 2)
        views = []
        for angle, flip in self.pairs():
            view = TF.hflip(pixels) if flip else pixels
            if angle:
                padded = torch.nn.functional.pad(view, (pad, pad, pad, pad), mode="replicate")
                view = TF.center_crop(TF.rotate(padded, angle), list(size))
            views.append(view)
        return torch.stack(views, dim=1)
