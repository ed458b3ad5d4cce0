"""The adversarial losses of DCAE's two games (non-saturating logistic GAN loss).

The non-saturating form (Goodfellow et al., 2014) gives the decoder and encoder strong
gradients early, when the discriminators win easily; with spectral normalisation in both
discriminators and Adam's beta1 = 0.5 it is the standard stable recipe for small GANs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(real) - log(1 - sigmoid(fake)), each averaged over its samples."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def fooling_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(fake): the generator side of the non-saturating game."""
    return F.softplus(-fake_logits).mean()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range of the decoder's tanh output."""
    return images.float() / 127.5 - 1.0
