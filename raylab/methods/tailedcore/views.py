"""Patch features of rotated and flipped views of tail images (TailedCore's tail augmentation).

For every image TailSampler calls tail, the release embeds the image rotated by every
multiple of 15 degrees, each with and without a horizontal flip (47 views besides the
original); see :class:`raylab.features.views.ViewSpec` for how a view is made.

Which images are tail depends on the protocol's draw and on TailSampler, so the views
cannot be extracted up front with the corpus's features. :class:`RotationFlipViews` asks
the feature pipeline for the views of all the tail images a trial needs at once
(:func:`raylab.features.cache.cached_view_features`): Ray Data extractors, on the
accelerator when the job's resources give them one, embed the views of several images per
forward pass, with the same backbone and patch embedder as the cached features, and each
image's views are cached on disk by the image's content (and the feature spec, the
weights, the views), so other trials, seeds and re-runs reuse them.

Memory: at the paper's size one image's 47 views are 47 x 28 x 28 x 1024 float32 (154 MB),
and a pareto trial has about 60 tail images (9 GB of view features). The pipeline writes
each batch to the cache as it arrives, and :class:`RotationFlipViews` then yields the views
image by image, as read-only memory maps of the cache files, which TailedCore's tail memory
consumes as a stream (:func:`raylab.methods.tailedcore.model.tail_coreset`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raylab.data.images import ImageTransform
from raylab.data.protocols.noise import base_sample_id
from raylab.features.backbones import FeatureSpec, create_backbone
from raylab.features.patch_embed import PatchEmbedder
from raylab.features.views import ViewSpec


def views_per_image(rotation_step: int, hflip: bool) -> int:
    """How many augmented views each tail image gets: every (angle, flip) but the identity."""
    return ViewSpec(rotation_step, hflip).count()


def rotation_flip_views(pixels: torch.Tensor, rotation_step: int, hflip: bool) -> torch.Tensor:
    """(3, S, S) normalised image -> (V, 3, S, S): every (angle, flip) but the identity, angle-major."""
    return ViewSpec(rotation_step, hflip).expand(pixels[None])[0]


class RotationFlipViews:
    """``views(sample_ids)`` yields each image's ``(V, h, w, D)`` patch grids, extracted through the
    feature pipeline (all missing images of the call in one pass) and cached per image."""

    def __init__(self, corpus: pa.Table, spec: FeatureSpec, rotation_step: int = 15, hflip: bool = True) -> None:
        self.corpus = corpus
        self.spec = spec
        self.views = ViewSpec(rotation_step, hflip)

    def __call__(self, sample_ids: Sequence[str]) -> Iterator[np.ndarray]:
        """The views of every image are ready (extracted together) before the first is yielded;
        then one image at a time, so a caller never holds more than one image's views."""
        from raylab.features.cache import cached_view_features

        bases = [base_sample_id(s) for s in sample_ids]
        if not bases:
            return
        rows = self.corpus.filter(pc.is_in(self.corpus["sample_id"], pa.array(sorted(set(bases)))))
        if rows.num_rows != len(set(bases)):
            found = set(rows.column("sample_id").to_pylist())
            raise KeyError(f"samples {sorted(set(bases) - found)[:3]} are not in the corpus the views were asked of")
        entries = cached_view_features(rows, self.spec, self.views)
        for base in bases:
            yield np.load(entries[base], mmap_mode="r")

    def of_sample(self, sample_id: str) -> np.ndarray:
        """One image's views, float32, as a read-only memory map of its cache file."""
        return next(iter(self([sample_id])))


@torch.inference_mode()
def per_image_view_features(
    image: bytes, spec: FeatureSpec, views: ViewSpec, batch_size: int = 16, sample: str = "?"
) -> np.ndarray:
    """One image's ``(V, h, w, D)`` view features in this process, ``batch_size`` views per pass.

    The straightforward computation (decode, normalise, rotate and embed one image on the
    CPU), kept as the reference the batched pipeline is tested against.
    """
    backbone, embedder = create_backbone(spec.backbone), PatchEmbedder(spec.aggregation_kernel, spec.embed_dim)
    transform = ImageTransform(size=spec.image_size, mean=spec.backbone.mean, std=spec.backbone.std)
    expanded = views.expand(torch.from_numpy(transform.image(image, sample))[None])[0]
    out = []
    for start in range(0, len(expanded), batch_size):
        patches = embedder(backbone(expanded[start : start + batch_size]))
        if spec.l2_normalize:
            patches = torch.nn.functional.normalize(patches, dim=-1)
        out.append(patches.float().numpy())
    return np.concatenate(out)
