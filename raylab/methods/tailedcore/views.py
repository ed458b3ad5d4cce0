"""Patch features of rotated and flipped views of tail images (TailedCore's tail augmentation).

For every image TailSampler calls tail, the release embeds the image rotated by every
multiple of 15 degrees, each with and without a horizontal flip (47 views besides the
original). A rotation must not bring empty corners into view: the resized image is padded
by replication to its diagonal, rotated (nearest-neighbour, torchvision's default), and
centre-cropped back to the input size, as the release does.

Which images are tail depends on the protocol's draw and on TailSampler, so the views
cannot be extracted up front with the corpus's features; :class:`RotationFlipViews`
extracts them on demand, in the trial, with the same backbone and patch embedder as the
cached features, and caches each image's views on disk (keyed by the feature spec, the
weights' content, the views and the image bytes), so re-runs and other seeds reuse them.

Memory: at the paper's size one image's 47 views are 47 x 28 x 28 x 1024 float32 (154 MB),
and a pareto trial has about 60 tail images (9 GB of view features). Nothing here holds
more than one image's views: :class:`RotationFlipViews` yields them image by image, as
read-only memory maps of the cache files, and TailedCore's tail memory consumes them as a
stream (:func:`raylab.methods.tailedcore.model.tail_coreset`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raylab.data.images import ImageTransform
from raylab.data.protocols.noise import base_sample_id
from raylab.data.store import cache_root
from raylab.features.backbones import FeatureSpec, create_backbone
from raylab.features.patch_embed import PatchEmbedder


def views_per_image(rotation_step: int, hflip: bool) -> int:
    """How many augmented views each tail image gets: every (angle, flip) but the identity."""
    return len(range(0, 360, rotation_step)) * (2 if hflip else 1) - 1


def rotation_flip_views(pixels: torch.Tensor, rotation_step: int, hflip: bool) -> torch.Tensor:
    """(3, S, S) normalised image -> (V, 3, S, S): every (angle, flip) but the identity, angle-major."""
    import torchvision.transforms.functional as TF

    if not 0 < rotation_step <= 360:
        raise ValueError(f"rotation_step must be in (0, 360] degrees, got {rotation_step}")
    size = pixels.shape[-2:]
    pad = math.ceil((math.hypot(*size) - min(size)) / 2)
    views = []
    for angle in range(0, 360, rotation_step):
        for flip in (0, 1) if hflip else (0,):
            if (angle, flip) == (0, 0):
                continue
            view = TF.hflip(pixels) if flip else pixels
            if angle:
                padded = torch.nn.functional.pad(view[None], (pad, pad, pad, pad), mode="replicate")[0]
                view = TF.center_crop(TF.rotate(padded, angle), list(size))
            views.append(view)
    if not views:
        raise ValueError("no augmented views: rotation_step 360 without hflip leaves only the original")
    return torch.stack(views)


class RotationFlipViews:
    """``views(sample_ids)`` yields each image's ``(V, h, w, D)`` patch grids, extracted lazily and cached."""

    def __init__(self, corpus: pa.Table, spec: FeatureSpec, rotation_step: int = 15, hflip: bool = True, batch_size: int = 16) -> None:
        self.corpus = corpus
        self.spec = spec
        self.rotation_step = rotation_step
        self.hflip = hflip
        self.batch_size = batch_size
        self._model: tuple[torch.nn.Module, PatchEmbedder] | None = None
        description = {"spec": dataclasses.asdict(spec), "weights": spec.backbone.weights_fingerprint(), "step": rotation_step, "hflip": hflip, "format": 1}
        key = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.directory = cache_root() / "view_features" / key

    def __call__(self, sample_ids: Sequence[str]) -> Iterator[np.ndarray]:
        """One image at a time, so a caller never holds more than one image's views at once."""
        for sample_id in sample_ids:
            yield self.of_sample(sample_id)

    def of_sample(self, sample_id: str) -> np.ndarray:
        """The image's views, float32, as a read-only memory map of its cache file."""
        base = base_sample_id(sample_id)
        rows = self.corpus.filter(pc.equal(self.corpus["sample_id"], base))
        if rows.num_rows != 1:
            raise KeyError(f"sample {base!r} is not in the corpus the views were asked of")
        image = rows.column("image")[0].as_py()
        target = self.directory / f"{hashlib.sha256(image).hexdigest()[:32]}.npy"
        if not target.exists():
            features = self._extract(image, base)
            self.directory.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(staging, "wb") as handle:  # written whole, then renamed: readers never see half a file
                np.save(handle, features)
            os.replace(staging, target)
            del features
        return np.load(target, mmap_mode="r")

    @torch.inference_mode()
    def _extract(self, image: bytes, sample: str) -> np.ndarray:
        if self._model is None:
            self._model = (create_backbone(self.spec.backbone), PatchEmbedder(self.spec.aggregation_kernel, self.spec.embed_dim))
        backbone, embedder = self._model
        transform = ImageTransform(size=self.spec.image_size, mean=self.spec.backbone.mean, std=self.spec.backbone.std)
        views = rotation_flip_views(torch.from_numpy(transform.image(image, sample)), self.rotation_step, self.hflip)
        out: np.ndarray | None = None  # filled batch by batch: never a list of batches plus their concatenation
        for start in range(0, len(views), self.batch_size):
            patches = embedder(backbone(views[start : start + self.batch_size]))
            if self.spec.l2_normalize:
                patches = torch.nn.functional.normalize(patches, dim=-1)
            if out is None:
                out = np.empty((len(views), *patches.shape[1:]), dtype=np.float32)
            out[start : start + len(patches)] = patches.float().numpy()
        assert out is not None  # rotation_flip_views never returns an empty batch
        return out
