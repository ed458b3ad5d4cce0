"""A content-addressed on-disk cache of patch features, shared by all trials of a sweep.

Key = hash(corpus fingerprint, feature spec, backbone weights' content). Features are saved
as one ``.npy`` and opened memory-mapped, so concurrent trials on a node share the pages
instead of each holding a copy. Entries are written to a staging directory and renamed into
place: a crashed extraction never leaves a partial entry behind. Each entry carries a
manifest (:mod:`raylab.artefacts`) checked on every load: an entry that fails it is named,
discarded and extracted again, never read.

Augmented views (:func:`cached_view_features`) are keyed per *image* instead: which images
need views depends on a trial (TailedCore's tail), so one entry per image content lets every
trial, seed and protocol reuse the views any of them extracted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from raylab.data.store import cache_root, cached_entry, corpus_fingerprint
from raylab.digests import content_digest
from raylab.features.backbones import FeatureSpec
from raylab.features.extract import FeatureSet, extract_patch_features, feature_batches
from raylab.features.views import ViewSpec
from raylab.timing import phase


def feature_key(table: pa.Table, spec: FeatureSpec) -> str:
    description = {
        "corpus": corpus_fingerprint(table),
        "spec": dataclasses.asdict(spec),
        "weights": spec.backbone.weights_fingerprint(),
        "format": 2,  # 2: entries carry a manifest (raylab.artefacts)
    }
    return content_digest(settings=description, length=24)


def cached_patch_features(
    table: pa.Table, spec: FeatureSpec, *, root: Path | None = None, **extract_options
) -> FeatureSet:
    """Features of ``table`` under ``spec``: from the cache, or extracted once and stored."""

    def read(directory: Path) -> FeatureSet:
        return FeatureSet(
            sample_ids=np.load(directory / "sample_ids.npy", allow_pickle=False),
            patches=np.load(directory / "patches.npy", mmap_mode="r"),
        )

    def compute() -> FeatureSet:
        with phase("feature extraction (Ray Data)"):
            features = extract_patch_features(table, spec, **extract_options)
        require_finite(features.patches, features.sample_ids, spec.backbone.name)
        return features

    def write(features: FeatureSet, staging: Path) -> None:
        np.save(staging / "sample_ids.npy", features.sample_ids.astype(str))
        np.save(staging / "patches.npy", features.patches)
        (staging / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2, default=str))

    return cached_entry((root or cache_root() / "features") / feature_key(table, spec), read, compute, write)


def require_finite(patches: np.ndarray, sample_ids: np.ndarray, backbone: str) -> None:
    """Refuse to cache features with NaN or infinity: every score computed from them would be."""
    finite = np.ones(len(patches), dtype=bool)
    for start in range(0, len(patches), 64):  # in chunks: a mask of the whole array would cost a quarter of it
        chunk = patches[start : start + 64]
        finite[start : start + len(chunk)] = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
    if not finite.all():
        bad = [str(i) for i in np.asarray(sample_ids)[~finite][:5]]
        raise ValueError(
            f"{backbone} gave non-finite features for {int((~finite).sum())} images (first: {', '.join(bad)}); "
            "check the weights and those images"
        )


# Views embedded per forward pass (a batch is this many views' worth of whole images): all
# the views of several images at once, within an extraction batch's memory at the CPU size.
VIEWS_PER_PASS = 128


def view_cache_directory(spec: FeatureSpec, views: ViewSpec, root: Path | None = None) -> Path:
    description = {
        "spec": dataclasses.asdict(spec),
        "weights": spec.backbone.weights_fingerprint(),
        "views": dataclasses.asdict(views),
        "format": 2,
    }
    return (root or cache_root() / "view_features") / content_digest(settings=description, length=24)


def view_entry(directory: Path, image: bytes) -> Path:
    """One image's entry: named by the image's bytes, so any trial asking for the same image finds it."""
    return directory / f"{hashlib.sha256(image).hexdigest()[:32]}.npy"


def cached_view_features(
    table: pa.Table,
    spec: FeatureSpec,
    views: ViewSpec,
    *,
    root: Path | None = None,
    images_per_batch: int | None = None,
    **extract_options,
) -> dict[str, Path]:
    """Each row's ``(V, h, w, D)`` view features as a ``.npy`` file, by sample id: cached ones as
    they are, the rest extracted in one Ray Data pass (:func:`feature_batches` with ``views``).

    Batches are written to their entries as they arrive (staged, then renamed), so the caller
    never holds more than a batch's views (154 MB per image at the paper's size); read each
    entry memory-mapped. ``images_per_batch``: default :data:`VIEWS_PER_PASS` views' worth.
    """
    directory = view_cache_directory(spec, views, root)
    ids = table.column("sample_id").to_pylist()
    entries = {
        sid: view_entry(directory, image) for sid, image in zip(ids, table.column("image").to_pylist(), strict=True)
    }
    missing, seen = [], set()
    for row, sid in enumerate(ids):
        if not entries[sid].exists() and entries[sid] not in seen:
            missing.append(row)
            seen.add(entries[sid])
    if missing:
        batch = images_per_batch or max(1, VIEWS_PER_PASS // views.count())
        # A few images per trial: blocks from memory, not Parquet shards written for each subset.
        options = {"source": "memory", **extract_options}
        directory.mkdir(parents=True, exist_ok=True)
        with phase("view feature extraction (Ray Data)"):
            dataset = feature_batches(table.take(missing), spec, batch_size=batch, views=views, **options)
            for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                require_finite(out["patches"], out["sample_id"], spec.backbone.name)
                for sid, patches in zip(out["sample_id"], out["patches"], strict=True):
                    target = entries[str(sid)]
                    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                    with open(staging, "wb") as handle:  # written whole, then renamed: readers never see half a file
                        np.save(handle, np.ascontiguousarray(patches, dtype=np.float32))
                    os.replace(staging, target)
    return entries
