"""Differentiable augmentation for GAN training on a few hundred images (Zhao et al., 2020).

With a few hundred faces, a StyleGAN2 discriminator memorises its training set within a few
thousand steps and stops giving the generator a useful gradient. DiffAugment draws a random
transform for every image the discriminator sees, real or generated, in both networks'
steps. Because every transform is differentiable, the generator is trained through it; and
because fakes are transformed exactly like reals, the generator is never rewarded for
producing the transforms themselves (which augmenting the reals alone would teach it).

The policies are the paper's: ``color`` (brightness, saturation, contrast), ``translation``
(by up to 1/8 of the side, zero-padded) and ``cutout`` (a square of half the side set to 0).
Each draw comes from a ``torch.Generator`` so that a Train worker's step is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import get_args

import torch
from torch import Tensor

from raylab.methods.alsuv.config import DiffAugmentPolicy

POLICIES: tuple[str, ...] = get_args(DiffAugmentPolicy)


def _uniform(images: Tensor, rng: torch.Generator) -> Tensor:
    return torch.rand(images.shape[0], 1, 1, 1, generator=rng)


def _color(images: Tensor, rng: torch.Generator) -> Tensor:
    images = images + (_uniform(images, rng) - 0.5)
    channel_mean = images.mean(dim=1, keepdim=True)
    images = (images - channel_mean) * (_uniform(images, rng) * 2) + channel_mean
    image_mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - image_mean) * (_uniform(images, rng) + 0.5) + image_mean


def _translation(images: Tensor, rng: torch.Generator, fraction: float = 0.125) -> Tensor:
    n, _, height, width = images.shape
    reach_y, reach_x = int(height * fraction + 0.5), int(width * fraction + 0.5)
    shift_y = torch.randint(-reach_y, reach_y + 1, (n, 1), generator=rng)
    shift_x = torch.randint(-reach_x, reach_x + 1, (n, 1), generator=rng)
    padded = torch.nn.functional.pad(images, [reach_x, reach_x, reach_y, reach_y])
    rows = torch.arange(height)[None] + reach_y - shift_y  # (n, height) rows of the padded image
    cols = torch.arange(width)[None] + reach_x - shift_x
    picked = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return picked.permute(0, 3, 1, 2)  # advanced indexing put the channels last


def _cutout(images: Tensor, rng: torch.Generator, fraction: float = 0.5) -> Tensor:
    n, _, height, width = images.shape

    def inside(length: int, shape: tuple[int, ...]) -> Tensor:
        """Which of ``length`` positions fall in a span of ``fraction`` of it around a random
        centre (the span may run off the edge, as the paper's does)."""
        side = int(length * fraction + 0.5)
        centre = torch.randint(0, length, (n, 1), generator=rng)
        offset = torch.arange(length)[None] - centre
        return ((offset >= -(side // 2)) & (offset < side - side // 2)).reshape(n, *shape)

    keep = ~(inside(height, (height, 1)) & inside(width, (1, width)))
    return images * keep[:, None].to(images.dtype)


_TRANSFORMS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def diff_augment(images: Tensor, policy: Sequence[str], rng: torch.Generator) -> Tensor:
    """``images`` (n, c, h, w) with each of ``policy``'s transforms drawn per image, in order."""
    unknown = [name for name in policy if name not in _TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policies {unknown}; known: {list(POLICIES)}")
    for name in policy:
        images = _TRANSFORMS[name](images, rng)
    return images.contiguous()
