"""Latent searches: one target embedding, a batch of independent W+ optimisations.

For each initial ``w`` (mapped from ``z ~ N(0, I)``, broadcast to W+), ALSUV minimises
``-cos(E_src(G(w+)), e_target)`` with the source encoder's flip-averaged embedding, Adam
(lr 0.1, L2 weight decay 5e-4), the learning rate x0.1 after half of the iterations, and
keeps two results per search: the last iterate and the *averaged latent*, the mean of the
last 70% of the iterates (the latent after each optimiser step), Sec. 3.2 of the paper.
The generator's forward is the official one: truncation 0.8 towards the mean latent
applied to the optimised W+ at every step, the fixed noise inputs, the face crop and a
per-image rescaling to [-1, 1]; the crop is then resized (antialiased, differentiable) to
the canvas size (:attr:`~raylab.methods.alsuv.config.AlsuvConfig.face_size`), so every
reconstruction has the pixels of the real faces it is compared with (the official code
leaves the 192 px crop to each encoder's own resize, which this amounts to).

The searches of a batch share nothing but the weights: the loss is a sum of per-search
terms, every operation is per image (encoders in eval mode), and the per-image min / max
rescaling replaces the official per-batch one precisely so that a search's result does not
depend on which searches share its batch. That is what lets the N searches of a target be
cut into any number of Ray tasks with the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raylab.methods.alsuv.config import AttackConfig, FaceCropConfig
from raylab.methods.alsuv.model.encoders import FaceEncoder
from raylab.methods.alsuv.model.stylegan2 import Generator


class FaceRenderer(nn.Module):
    """W+ latent -> face canvas in [-1, 1]: truncation, fixed-noise synthesis, (grey,) face crop, resize, rescale.

    ``size``: the side of the canvas the face crop is brought to; ``None`` keeps the crop's own
    size (for a generator whose whole output already is the canvas).
    """

    def __init__(
        self,
        generator: Generator,
        mean_latent: Tensor,
        *,
        truncation: float,
        crop: FaceCropConfig,
        grayscale: bool = False,
        size: int | None = None,
    ) -> None:
        super().__init__()
        side = round(generator.config.size * crop.size_fraction)
        if size is not None and size > side:
            raise ValueError(
                f"a {side} px face crop of the {generator.config.size} px generator cannot fill a {size} px canvas"
            )
        self.size = size or side
        self.generator = generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean_latent", mean_latent.reshape(1, -1).float())
        self.truncation = truncation
        self.crop = crop
        self.grayscale = grayscale

    @property
    def style_dim(self) -> int:
        return self.generator.style_dim

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    def initial_latents(self, count: int, seed: int) -> Tensor:
        """``count`` W latents ``mapping(z)``, ``z ~ N(0, I)`` drawn with ``seed`` (the searches' starts)."""
        z = torch.randn(count, self.style_dim, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            return self.generator.mapping(z)

    def forward(self, latent: Tensor) -> Tensor:
        latent = self.generator.truncate(latent, self.truncation, self.mean_latent)
        image = self.generator.synthesis(latent, noise_mode="const")
        if self.grayscale:
            image = image.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        size = image.shape[-1]
        side = round(size * self.crop.size_fraction)
        centre_y = size // 2 + round(size * self.crop.v_offset_fraction)
        top = min(max(centre_y - side // 2, 0), size - side)
        left = (size - side) // 2
        image = image[:, :, top : top + side, left : left + side]
        if side != self.size:
            image = F.interpolate(
                image, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        low = image.amin(dim=(1, 2, 3), keepdim=True)
        high = image.amax(dim=(1, 2, 3), keepdim=True)
        return 2 * (image - low) / (high - low).clamp_min(1e-8) - 1


def check_embedding(embedding: Tensor, dim: int, *, name: str = "target embedding") -> Tensor:
    """A finite, non-zero ``(dim,)`` vector, or a ``ValueError`` saying what is wrong."""
    embedding = torch.as_tensor(embedding, dtype=torch.float32)
    if embedding.ndim != 1 or embedding.shape[0] != dim:
        raise ValueError(
            f"{name} has shape {tuple(embedding.shape)} but the source encoder gives {dim}-d embeddings: "
            "the template must come from the source encoder"
        )
    if not torch.isfinite(embedding).all():
        raise ValueError(f"{name} has non-finite values")
    if float(embedding.norm()) == 0.0:
        raise ValueError(f"{name} is all zeros: its cosine similarity is undefined")
    return embedding


@dataclass
class SearchBatch:
    """Results of ``m`` searches for one target (W+ latents, their canvases and source cosines)."""

    last: Tensor
    averaged: Tensor
    canvas_last: Tensor
    canvas_averaged: Tensor
    cosine_last: Tensor
    cosine_averaged: Tensor
    history: Tensor | None = None  # (iterations, m, n_latent, dim) when recorded

    @staticmethod
    def concat(parts: list[SearchBatch]) -> SearchBatch:
        fields = ("last", "averaged", "canvas_last", "canvas_averaged", "cosine_last", "cosine_averaged")
        joined = {f: torch.cat([getattr(p, f) for p in parts]) for f in fields}
        return SearchBatch(**joined)

    def __len__(self) -> int:
        return len(self.last)


def source_cosine(source: FaceEncoder, canvas: Tensor, target: Tensor, flip: bool) -> Tensor:
    return F.cosine_similarity(source(canvas, flip=flip), target[None], dim=1)


def latent_search(
    renderer: FaceRenderer,
    source: FaceEncoder,
    target_embedding: Tensor,
    initial_w: Tensor,
    config: AttackConfig,
    *,
    record: bool = False,
) -> SearchBatch:
    """Run ``len(initial_w)`` independent searches towards ``target_embedding`` (one batch)."""
    target = check_embedding(target_embedding, source.embedding_dim)
    if initial_w.ndim != 2 or initial_w.shape[1] != renderer.style_dim:
        raise ValueError(f"initial latents must be (m, {renderer.style_dim}) W vectors, got {tuple(initial_w.shape)}")
    latent = renderer.generator.broadcast(initial_w.float()).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=config.lr, weight_decay=config.weight_decay)
    kept = config.averaged_iterates
    running = torch.zeros_like(latent)
    history = [] if record else None
    for iteration in range(config.iterations):
        if iteration == config.decay_iteration:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * config.lr_gamma
        loss = -source_cosine(source, renderer(latent), target, config.flip).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            if iteration >= config.iterations - kept:
                running += latent
            if history is not None:
                history.append(latent.detach().clone())
    last = latent.detach()
    averaged = running / kept
    with torch.no_grad():
        canvas_last = renderer(last)
        cosine_last = source_cosine(source, canvas_last, target, config.flip)
        if kept == 1:  # the average of the last iterate alone is that iterate: skip a second render
            canvas_averaged, cosine_averaged = canvas_last, cosine_last
        else:
            canvas_averaged = renderer(averaged)
            cosine_averaged = source_cosine(source, canvas_averaged, target, config.flip)
    return SearchBatch(
        last,
        averaged,
        canvas_last,
        canvas_averaged,
        cosine_last,
        cosine_averaged,
        torch.stack(history) if history is not None else None,
    )
