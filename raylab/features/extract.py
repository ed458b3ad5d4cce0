"""Batched feature extraction over a corpus as a Ray Data pipeline.

``read_parquet`` (one task per shard) -> ``map_batches(ImageTransform)`` (decode + resize, in
parallel tasks) -> ``map_batches(PatchFeatureExtractor)`` on an actor pool, one backbone per
actor (one GPU each where there are GPUs) -> gathered on the driver in corpus order.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from raylab.data.images import ImageTransform
from raylab.data.store import read_dataset, write_shards
from raylab.features.backbones import FeatureSpec, create_backbone
from raylab.features.patch_embed import PatchEmbedder
from raylab.resources import THREADS_PER_ACTOR, extraction_actor_cpus
from raylab.resources import current as current_resources
from raylab.metrics import record_feature_batch


@dataclass
class FeatureSet:
    """Patch features of a corpus: ``patches[i]`` is the (h, w, D) grid of ``sample_ids[i]``."""

    sample_ids: np.ndarray
    patches: np.ndarray

    def __post_init__(self) -> None:
        self._row = {sid: i for i, sid in enumerate(self.sample_ids.tolist())}

    @property
    def grid(self) -> tuple[int, int]:
        return self.patches.shape[1], self.patches.shape[2]

    def rows(self, sample_ids) -> np.ndarray:
        """Row indices of ``sample_ids``; derived copies (``id#tag``) map to their original."""
        from raylab.data.protocols.noise import base_sample_id

        try:
            return np.array([self._row[base_sample_id(s)] for s in sample_ids], dtype=np.int64)
        except KeyError as error:
            raise KeyError(f"sample {error.args[0]!r} has no cached features") from None

    def take(self, sample_ids) -> np.ndarray:
        return self.patches[self.rows(sample_ids)]




class PatchFeatureExtractor:
    """A Ray Data actor holding one frozen backbone and the patch embedder."""

    def __init__(self, spec: FeatureSpec, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backbone = create_backbone(spec.backbone).to(self.device)
        self.embedder = PatchEmbedder(spec.aggregation_kernel, spec.embed_dim)
        self.l2_normalize = spec.l2_normalize
        self.backbone_name = spec.backbone.name

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"])).to(self.device)
        patches = self.embedder(self.backbone(pixels))
        if self.l2_normalize:
            patches = torch.nn.functional.normalize(patches, dim=-1)
        out = {"sample_id": batch["sample_id"], "patches": patches.float().cpu().numpy()}
        record_feature_batch(len(out["sample_id"]), time.perf_counter() - started, self.backbone_name)
        return out


def feature_shape(spec: FeatureSpec) -> tuple[int, int, int]:
    """(grid height, grid width, dimension) of one image's patch features under ``spec``.

    Traced on PyTorch's meta device: no weights are read and nothing is computed, so a dry
    run can size caches and memories of a paper-size backbone in seconds on any machine.
    """
    weightless = dataclasses.replace(spec.backbone, weights=None)
    with torch.device("meta"):
        maps = create_backbone(weightless)(torch.zeros(1, 3, spec.image_size, spec.image_size))
        patches = PatchEmbedder(spec.aggregation_kernel, spec.embed_dim)(maps)
    _, height, width, dim = patches.shape
    return int(height), int(width), int(dim)


def extract_patch_features(
    table: pa.Table,
    spec: FeatureSpec,
    *,
    batch_size: int = 32,
    actors: int | None = None,
) -> FeatureSet:
    """Extract patch features for every row of ``table`` with Ray Data."""
    import ray

    shards = write_shards(table)
    transform = ImageTransform(size=spec.image_size, mean=spec.backbone.mean, std=spec.backbone.std)
    resources = current_resources()
    accelerated = resources.accelerators_per_extraction_actor > 0
    dataset = (
        read_dataset(shards, columns=["sample_id", "image"])
        .map_batches(transform, batch_size=batch_size, batch_format="numpy")
        .map_batches(
            PatchFeatureExtractor,
            fn_constructor_kwargs={"spec": spec, "threads": 1 if accelerated else THREADS_PER_ACTOR},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors or resources.extraction_pool()),
            **resources.ray_options(resources.accelerators_per_extraction_actor, cpus=extraction_actor_cpus()),
        )
    )
    ids, patches = [], []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(batch["sample_id"])
        patches.append(batch["patches"])
    sample_ids = np.concatenate(ids)
    order = np.argsort(sample_ids, kind="stable")
    return FeatureSet(sample_ids=sample_ids[order], patches=np.concatenate(patches)[order])
