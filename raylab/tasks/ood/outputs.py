"""Penultimate features and logits of a corpus, extracted once and shared by every detector.

The classifier runs in the platform's extraction pipeline (:func:`raylab.features.extract.model_batches`,
as a :class:`ClassifierOutputs` recipe): the same plan as patch features (warm CPU tasks on a
Ray this process started, an actor pool with one accelerator each on a cluster, decoding
where it is cheapest), gathered on the driver sorted by sample id. A trained classifier's
weights travel through the object store once, not with every task. Results are cached on
disk, keyed by the images (ids and bytes, not splits: a new protocol seed re-splits the same
images without re-extracting), the classifier's config and weights, and the transform.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from raylab.data.images import ImageTransform
from raylab.data.rows import SampleRows
from raylab.data.store import cache_root, cached_entry, columns_fingerprint
from raylab.digests import content_digest, file_digest
from raylab.features.extract import model_batches, network_input
from raylab.tasks.ood.classifiers import build_classifier
from raylab.tasks.ood.config import ClassifierConfig
from raylab.tasks.ood.detectors import LinearHead, ModelOutputs

CACHE_FORMAT = 2  # 2: the images' hash is the platform's columns_fingerprint


@dataclass
class OutputSet(SampleRows):
    """Features and logits of every image of a corpus, rows sorted by ``sample_ids``."""

    features: np.ndarray
    logits: np.ndarray
    head: LinearHead
    holds: ClassVar[str] = "extracted outputs"

    def take(self, sample_ids) -> ModelOutputs:
        rows = self.rows(sample_ids)
        return ModelOutputs(self.features[rows], self.logits[rows])


def transform_for(config: ClassifierConfig) -> ImageTransform:
    return ImageTransform(size=config.image_size, mean=tuple(config.mean), std=tuple(config.std))


def linear_head(model) -> LinearHead:
    head = model.head
    return LinearHead(
        head.weight.detach().cpu().numpy().astype(np.float32), head.bias.detach().cpu().numpy().astype(np.float32)
    )


class ClassifierActor:
    """One classifier in eval mode: a batch of ``image`` bytes or ``pixels`` (see
    :func:`~raylab.features.extract.network_input`) -> ``features`` and ``logits``."""

    def __init__(self, config: ClassifierConfig, state_dict: dict[str, Any] | None = None, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = build_classifier(config, state_dict).to(self.device)
        self.transform = transform_for(config)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = network_input(batch, self.transform, self.device)
        features = self.model.features(pixels)
        logits = self.model.head(features)
        return {
            "sample_id": batch["sample_id"],
            "features": features.float().cpu().numpy(),
            "logits": logits.float().cpu().numpy(),
        }


@dataclass(frozen=True)
class ClassifierOutputs:
    """:class:`~raylab.features.extract.BatchModel` of a classifier's ``features`` and ``logits``.

    ``weights``: the trained state dict's object-store reference (None: the config's weights
    file, or random); ``weights_digest`` names them, so a worker keeps its classifier warm
    exactly while the weights are the same.
    """

    config: ClassifierConfig
    weights: Any
    weights_digest: str

    @property
    def transform(self) -> ImageTransform:
        return transform_for(self.config)

    def warm_key(self) -> Hashable:
        return ("classifier", json.dumps(dataclasses.asdict(self.config), sort_keys=True), self.weights_digest)

    def build(self, threads: int) -> ClassifierActor:
        import ray

        state = ray.get(self.weights) if self.weights is not None else None
        return ClassifierActor(self.config, state, threads)

    def apply(self, model: ClassifierActor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return model(batch)


def images_fingerprint(table: pa.Table) -> str:
    """Hash of the sample ids and image bytes only (splits and labels do not change outputs)."""
    return columns_fingerprint(table, ("sample_id", "image"))


def weights_fingerprint(config: ClassifierConfig, state_dict: dict[str, Any] | None) -> str:
    if state_dict is not None:
        digest = hashlib.sha256()
        for name, tensor in state_dict.items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    if config.weights is not None:
        return file_digest(config.weights, 16)
    raise ValueError("a classifier without weights file or state dict has random outputs: train it first")


def _unique_images(table: pa.Table) -> pa.Table:
    """One row per sample id (a benchmark may list an image under two roles); a table that
    already has one is returned as it is, so asking again costs a pass over the ids, not a
    copy of the images."""
    ids = table.column("sample_id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids, return_index=True)
    if len(first) == table.num_rows:
        return table
    return table.take(pa.array(np.sort(first)))


def extract_outputs_local(
    table: pa.Table, config: ClassifierConfig, state_dict: dict[str, Any] | None = None, *, batch_size: int = 128
) -> OutputSet:
    """The same outputs computed in this process (reference for tests, tiny corpora)."""
    table = _unique_images(table)
    model = build_classifier(config, state_dict)
    transform = transform_for(config)
    ids = np.asarray(table.column("sample_id").to_pylist())
    images = table.column("image").to_pylist()
    features, logits = [], []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            pixels = np.stack(
                [
                    transform.image(image, str(sid))
                    for image, sid in zip(
                        images[start : start + batch_size], ids[start : start + batch_size], strict=True
                    )
                ]
            )
            f = model.features(torch.from_numpy(pixels))
            features.append(f.numpy())
            logits.append(model.head(f).numpy())
    order = np.argsort(ids, kind="stable")
    return OutputSet(ids[order], np.concatenate(features)[order], np.concatenate(logits)[order], linear_head(model))


def extract_outputs(
    table: pa.Table,
    config: ClassifierConfig,
    state_dict: dict[str, Any] | None = None,
    *,
    batch_size: int = 128,
    actors: int | None = None,
    use_cache: bool = True,
) -> OutputSet:
    """Features and logits of every image in ``table``, with Ray Data (cached on disk; an entry
    that fails its manifest check is named in a warning and extracted again)."""
    table = _unique_images(table)

    def compute() -> OutputSet:
        outputs = _extract_with_ray(table, config, state_dict, batch_size=batch_size, actors=actors)
        _check_head(outputs)
        return outputs

    if not use_cache:
        return compute()
    directory = outputs_cache_directory(table, config, state_dict)
    return cached_entry(directory, _load, compute, lambda outputs, staging: _store(staging, outputs, config))


def _extract_with_ray(
    table: pa.Table, config: ClassifierConfig, state_dict: dict[str, Any] | None, *, batch_size: int, actors: int | None
) -> OutputSet:
    import ray

    weights = ray.put(state_dict) if state_dict is not None else None
    recipe = ClassifierOutputs(config, weights, weights_fingerprint(config, state_dict))
    dataset = model_batches(table, recipe, batch_size=batch_size, actors=actors)
    ids, features, logits = [], [], []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        ids.append(batch["sample_id"])
        features.append(batch["features"])
        logits.append(batch["logits"])
    sample_ids = np.concatenate(ids).astype(str)
    order = np.argsort(sample_ids, kind="stable")
    head = linear_head(build_classifier(config, state_dict))
    return OutputSet(sample_ids[order], np.concatenate(features)[order], np.concatenate(logits)[order], head)


def _check_head(outputs: OutputSet) -> None:
    """``logits == head(features)``: ReAct's recomputed logits rely on it."""
    recomputed = outputs.head(outputs.features)
    scale = max(1.0, float(np.abs(outputs.logits).max()))
    error = float(np.abs(recomputed - outputs.logits).max()) / scale
    if error > 1e-3:
        raise RuntimeError(f"the classifier's logits are not head(features) (relative error {error:.2e})")


def outputs_cache_directory(table: pa.Table, config: ClassifierConfig, state_dict: dict[str, Any] | None) -> Path:
    """Where ``table``'s outputs under this classifier are cached: named by their content."""
    description = {
        "images": images_fingerprint(_unique_images(table)),
        "classifier": dataclasses.asdict(config),
        "weights": weights_fingerprint(config, state_dict),
        "format": CACHE_FORMAT,
    }
    return cache_root() / "ood_outputs" / content_digest(settings=description, length=24)


def _store(staging: Path, outputs: OutputSet, config: ClassifierConfig) -> None:
    np.save(staging / "sample_ids.npy", outputs.sample_ids.astype(str))
    np.save(staging / "features.npy", outputs.features)
    np.save(staging / "logits.npy", outputs.logits)
    np.savez(staging / "head.npz", weight=outputs.head.weight, bias=outputs.head.bias)
    (staging / "classifier.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str))


def _load(directory: Path) -> OutputSet:
    with np.load(directory / "head.npz") as head:
        linear = LinearHead(head["weight"], head["bias"])
    return OutputSet(
        sample_ids=np.load(directory / "sample_ids.npy", allow_pickle=False),
        features=np.load(directory / "features.npy"),
        logits=np.load(directory / "logits.npy"),
        head=linear,
    )
