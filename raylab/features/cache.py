"""A content-addressed on-disk cache of patch features, shared by all trials of a sweep.

Key = hash(corpus fingerprint, feature spec, backbone weights' content). Features are saved
as one ``.npy`` and opened memory-mapped, so concurrent trials on a node share the pages
instead of each holding a copy. Entries are written to a staging directory and renamed into
place: a crashed extraction never leaves a partial entry behind. Each entry carries a
manifest (:mod:`raylab.artefacts`) checked on every load: an entry that fails it is named,
discarded and extracted again, never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from raylab.artefacts import CorruptArtefactError, discard, verify
from raylab.data.store import cache_root, corpus_fingerprint, staged_directory
from raylab.features.backbones import FeatureSpec
from raylab.features.extract import FeatureSet, extract_patch_features
from raylab.timing import phase


def feature_key(table: pa.Table, spec: FeatureSpec) -> str:
    description = {
        "corpus": corpus_fingerprint(table),
        "spec": dataclasses.asdict(spec),
        "weights": spec.backbone.weights_fingerprint(),
        "format": 2,  # 2: entries carry a manifest (raylab.artefacts)
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_patch_features(
    table: pa.Table, spec: FeatureSpec, *, root: Path | None = None, **extract_options
) -> FeatureSet:
    """Features of ``table`` under ``spec``: from the cache, or extracted once and stored."""
    directory = (root or cache_root() / "features") / feature_key(table, spec)
    if directory.exists():
        try:
            verify(directory)
            return FeatureSet(
                sample_ids=np.load(directory / "sample_ids.npy", allow_pickle=False),
                patches=np.load(directory / "patches.npy", mmap_mode="r"),
            )
        except (CorruptArtefactError, ValueError, OSError) as error:
            discard(directory, error)
    with phase("feature extraction (Ray Data)"):
        features = extract_patch_features(table, spec, **extract_options)
    require_finite(features.patches, features.sample_ids, spec.backbone.name)
    with staged_directory(directory) as staging:
        np.save(staging / "sample_ids.npy", features.sample_ids.astype(str))
        np.save(staging / "patches.npy", features.patches)
        (staging / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2, default=str))
    return features


def require_finite(patches: np.ndarray, sample_ids: np.ndarray, backbone: str) -> None:
    """Refuse to cache features with NaN or infinity: every score computed from them would be."""
    finite = np.ones(len(patches), dtype=bool)
    for start in range(0, len(patches), 64):  # in chunks: a mask of the whole array would cost a quarter of it
        chunk = patches[start : start + 64]
        finite[start : start + len(chunk)] = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
    if not finite.all():
        bad = [str(i) for i in np.asarray(sample_ids)[~finite][:5]]
        raise ValueError(f"{backbone} gave non-finite features for {int((~finite).sum())} images (first: {', '.join(bad)}); check the weights and those images")
