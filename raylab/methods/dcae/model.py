"""DCAE's networks as plain torch modules (no training logic), and its two novelty scores.

* :class:`Encoder`: strided convolutions -> a linear map into ``latent_dim``; with
  ``bounded=True`` a tanh puts every code in the compact cube [-1, 1]^d, *for any input*:
  an out-class image cannot escape the set the decoder was taught to decode into in-class
  images (the paper's point (b)).
* :class:`Decoder`: the mirror image, ending in tanh (images live in [-1, 1]).
* :class:`ImageDiscriminator`: ``downsamplings + 1`` spectral-normalised stride-2
  convolution blocks, returning its logit *and* the feature map after every block: those
  maps are the "internal discriminative layers" of the multi-level reconstruction loss and
  of the score (three levels in the CPU size: 14x14, 7x7 and 3x3 on MNIST).
* :class:`LatentDiscriminator`: a spectral-normalised MLP telling encoder codes from draws
  of the uniform prior on the cube.

:func:`feature_distance` is the discriminator metric: per level l, the mean squared
difference of the two feature maps divided by a scale s_l (the mean squared activation of
in-class images at that level), summed over levels with their weights. Dividing by s_l
makes the levels comparable (their raw magnitudes differ by orders) without discarding the
magnitude of an activation, which carries whether a stroke or edge is present at all. In the
training loss s_l is the current batch's (D keeps changing); for scoring it is measured once
on the training images after training (:meth:`DCAE.calibrate`) and stored with the model.
A per-position unit-length normalisation (LPIPS-style) was the first candidate; on the
development digits it ranked novelties worse than the level-energy scale (raylab/methods/dcae/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

FEATURE_EPS = 1e-8


def check_geometry(image_size: int, downsamplings: int) -> int:
    """The side of the smallest feature map; an image side that does not divide is an error."""
    if downsamplings < 1:
        raise ValueError(f"downsamplings must be >= 1, got {downsamplings}")
    if image_size % (2**downsamplings) != 0:
        raise ValueError(
            f"image side {image_size} is not divisible by 2^{downsamplings}: choose network.downsamplings "
            f"so that it is (28 px allows 2, 32 px up to 5) or set protocol.resize_to"
        )
    return image_size // 2**downsamplings


class Encoder(nn.Module):
    def __init__(
        self, channels: int, image_size: int, width: int, latent_dim: int, downsamplings: int, bounded: bool
    ) -> None:
        super().__init__()
        side = check_geometry(image_size, downsamplings)
        layers: list[nn.Module] = []
        in_channels = channels
        for i in range(downsamplings):
            out_channels = width * 2**i
            layers.append(nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.LeakyReLU(0.2))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(in_channels * side * side, latent_dim)
        self.bounded = bounded

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        codes = self.project(self.features(images).flatten(1))
        return torch.tanh(codes) if self.bounded else codes


class Decoder(nn.Module):
    def __init__(self, channels: int, image_size: int, width: int, latent_dim: int, downsamplings: int) -> None:
        super().__init__()
        self.side = check_geometry(image_size, downsamplings)
        self.top_channels = width * 2 ** (downsamplings - 1)
        self.expand = nn.Linear(latent_dim, self.top_channels * self.side * self.side)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.top_channels), nn.ReLU()]
        in_channels = self.top_channels
        for i in reversed(range(downsamplings - 1)):
            out_channels = width * 2**i
            layers += [
                nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            in_channels = out_channels
        layers += [nn.ConvTranspose2d(in_channels, channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.body(self.expand(codes).view(-1, self.top_channels, self.side, self.side))


class ImageDiscriminator(nn.Module):
    """Real/fake logit plus the feature map after each of its ``downsamplings + 1`` blocks."""

    def __init__(self, channels: int, image_size: int, width: int, downsamplings: int) -> None:
        super().__init__()
        side = check_geometry(image_size, downsamplings)
        blocks = []
        in_channels = channels
        for i in range(downsamplings):
            out_channels = width * 2**i
            blocks.append(
                nn.Sequential(spectral_norm(nn.Conv2d(in_channels, out_channels, 4, 2, 1)), nn.LeakyReLU(0.2))
            )
            in_channels = out_channels
        blocks.append(nn.Sequential(spectral_norm(nn.Conv2d(in_channels, 2 * in_channels, 4, 2, 1)), nn.LeakyReLU(0.2)))
        self.blocks = nn.ModuleList(blocks)
        self.head = spectral_norm(nn.Linear(2 * in_channels * (side // 2) ** 2, 1))

    @property
    def levels(self) -> int:
        return len(self.blocks)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        hidden = images
        for block in self.blocks:
            hidden = block(hidden)
            features.append(hidden)
        return self.head(hidden.flatten(1)).squeeze(1), features


class LatentDiscriminator(nn.Module):
    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            spectral_norm(nn.Linear(latent_dim, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, 1)),
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.body(codes).squeeze(1)


def feature_energy(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean squared activation of each level (one scalar per level)."""
    return torch.stack([f.pow(2).mean() for f in features])


def feature_distance(
    reference: Sequence[torch.Tensor],
    query: Sequence[torch.Tensor],
    level_weights: Sequence[float] | None = None,
    scales: torch.Tensor | Sequence[float] | None = None,
) -> torch.Tensor:
    """Per-sample sum over levels of weight x mean((reference - query)^2) / scale.

    ``scales`` defaults to the reference maps' own :func:`feature_energy` (batch statistics).
    """
    if len(reference) != len(query):
        raise ValueError(f"{len(reference)} reference levels but {len(query)} query levels")
    weights = [1.0] * len(reference) if level_weights is None else list(level_weights)
    if len(weights) != len(reference):
        raise ValueError(f"{len(weights)} level weights for {len(reference)} discriminator levels")
    if scales is None:
        scales = feature_energy(reference).detach()
    scales = torch.as_tensor(scales, dtype=reference[0].dtype)
    if scales.shape != (len(reference),) or not torch.all(scales > 0):
        raise ValueError(f"need one positive scale per level ({len(reference)}), got {scales.tolist()}")
    total = reference[0].new_zeros(reference[0].shape[0])
    for weight, scale, a, b in zip(weights, scales, reference, query, strict=True):
        if weight:
            total = total + weight * (a - b).pow(2).flatten(1).mean(1) / (scale + FEATURE_EPS)
    return total


class DCAE(nn.Module):
    """The exportable model: encoder, decoder and (for DCAE variants) both discriminators.

    ``forward`` returns the novelty score in the model's score space (higher = more novel).
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        *,
        width: int,
        latent_dim: int,
        downsamplings: int,
        latent_hidden: int,
        bounded_latent: bool,
        image_gan: bool,
        latent_adversarial: bool,
        feature_level_weights: Sequence[float] | None = None,
        discriminator_width: int | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = Encoder(channels, image_size, width, latent_dim, downsamplings, bounded_latent)
        self.decoder = Decoder(channels, image_size, width, latent_dim, downsamplings)
        self.image_discriminator = (
            ImageDiscriminator(channels, image_size, discriminator_width or width, downsamplings) if image_gan else None
        )
        self.latent_discriminator = LatentDiscriminator(latent_dim, latent_hidden) if latent_adversarial else None
        if latent_adversarial and not bounded_latent:
            raise ValueError("the latent game matches a uniform prior on [-1, 1]^d: it needs bounded_latent=True")
        if feature_level_weights is not None and image_gan and len(feature_level_weights) != downsamplings + 1:
            raise ValueError(
                f"{len(feature_level_weights)} feature level weights for {downsamplings + 1} discriminator levels"
            )
        self.feature_level_weights = tuple(feature_level_weights) if feature_level_weights is not None else None
        self.score_space = "discriminator" if image_gan else "pixel"
        levels = downsamplings + 1 if image_gan else 0
        # Per-level scale of the score's metric; ones until :meth:`calibrate` measures them.
        self.register_buffer("feature_scales", torch.ones(levels))
        self.register_buffer("calibrated", torch.tensor(False))

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Set ``feature_scales`` to the mean squared activation per level over in-class ``images``."""
        if self.image_discriminator is None:
            raise ValueError("this model has no image discriminator to calibrate")
        was_training = self.training
        self.eval()
        sums = torch.zeros_like(self.feature_scales)
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            _, features = self.image_discriminator(batch)
            sums += feature_energy(features) * len(batch)
        self.feature_scales.copy_(sums / len(images))
        self.calibrated.fill_(True)
        self.train(was_training)
        return self.feature_scales

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))

    def discriminator_distance(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        if self.image_discriminator is None:
            raise ValueError("this model has no image discriminator: score it in pixel space")
        if not bool(self.calibrated):
            raise RuntimeError("calibrate() the model on its training images before scoring in discriminator space")
        _, features = self.image_discriminator(torch.cat([images, reconstructions]))
        n = len(images)
        return feature_distance(
            [f[:n] for f in features], [f[n:] for f in features], self.feature_level_weights, self.feature_scales
        )

    def scores(self, images: torch.Tensor, space: str | None = None) -> torch.Tensor:
        """Novelty score of each image: its distance to its reconstruction in ``space``."""
        space = space or self.score_space
        reconstructions = self.reconstruct(images)
        if space == "pixel":
            return (images - reconstructions).pow(2).flatten(1).mean(1)
        if space == "discriminator":
            return self.discriminator_distance(images, reconstructions)
        raise ValueError(f"unknown score space {space!r}; use 'discriminator' or 'pixel'")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scores(images)
