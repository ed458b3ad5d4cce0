"""DiffAugment as the GAN training uses it: per-image draws, reproducible from the step's
generator, differentiable, and each transform doing what its name says."""

import pytest
import torch

from raylab.config import ConfigError
from raylab.methods.alsuv.config import GanTrainConfig
from raylab.methods.alsuv.training.diffaugment import POLICIES, diff_augment


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_draws_are_per_image_and_reproducible_from_the_generator():
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    first = diff_augment(images, POLICIES, _rng(0))
    assert first.shape == images.shape
    assert torch.equal(first, diff_augment(images, POLICIES, _rng(0)))
    assert not torch.equal(first, diff_augment(images, POLICIES, _rng(1)))
    same_input = diff_augment(images[:1].expand(6, -1, -1, -1), POLICIES, _rng(0))
    assert len({tuple(x.flatten().tolist()) for x in same_input}) == 6  # six different draws


def test_gradients_reach_the_images_through_every_policy():
    images = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    diff_augment(images, POLICIES, _rng(3)).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_translation_moves_a_pixel_by_at_most_an_eighth_of_the_side():
    images = torch.zeros(64, 1, 16, 16)
    images[:, :, 8, 8] = 1.0
    moved = diff_augment(images, ("translation",), _rng(0))
    rows, cols = [], []
    for image in moved[:, 0]:
        found = image.nonzero()
        assert len(found) == 1 and image.sum() == 1.0  # moved whole, never blended or lost
        rows.append(int(found[0, 0]) - 8)
        cols.append(int(found[0, 1]) - 8)
    assert max(map(abs, rows + cols)) <= 2 and len(set(zip(rows, cols, strict=True))) > 5


def test_cutout_zeroes_one_square_of_half_the_side_at_most():
    images = torch.ones(32, 3, 16, 16)
    cut = diff_augment(images, ("cutout",), _rng(0))
    zeros = (cut[:, 0] == 0).sum(dim=(1, 2))
    assert zeros.max() <= 8 * 8 and zeros.min() > 0 and (zeros == 64).any()
    assert torch.equal(cut[:, 0], cut[:, 1])  # every channel of a pixel goes together


def test_color_shifts_brightness_and_contrast_per_image():
    images = torch.linspace(-1, 1, 256).reshape(1, 1, 16, 16).repeat(16, 3, 1, 1)
    changed = diff_augment(images, ("color",), _rng(0))
    assert changed.mean(dim=(1, 2, 3)).std() > 0.05  # brightness drawn per image
    assert changed.std(dim=(1, 2, 3)).std() > 0.05  # contrast drawn per image


def test_an_unknown_policy_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="diffaugment: has unknown policies \\['colour'\\]"):
        GanTrainConfig(diffaugment=("colour",))
    with pytest.raises(ValueError, match="unknown DiffAugment policies"):
        diff_augment(torch.zeros(1, 3, 4, 4), ("zoom",), _rng(0))
