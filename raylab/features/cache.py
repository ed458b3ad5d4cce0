"""A content-addressed on-disk cache of patch features, shared by all trials of a sweep.

Key = hash(corpus fingerprint, feature spec, backbone weights' content). Features are saved
as one ``.npy`` and opened memory-mapped, so concurrent trials on a node share the pages
instead of each holding a copy. Entries are written to a staging directory and renamed into
place: a crashed extraction never leaves a partial entry behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from raylab.data.store import cache_root, corpus_fingerprint, staged_directory
from raylab.features.backbones import FeatureSpec
from raylab.features.extract import FeatureSet, extract_patch_features


def feature_key(table: pa.Table, spec: FeatureSpec) -> str:
    description = {
        "corpus": corpus_fingerprint(table),
        "spec": dataclasses.asdict(spec),
        "weights": spec.backbone.weights_fingerprint(),
        "format": 1,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_patch_features(
    table: pa.Table, spec: FeatureSpec, *, root: Path | None = None, **extract_options
) -> FeatureSet:
    """Features of ``table`` under ``spec``: from the cache, or extracted once and stored."""
    directory = (root or cache_root() / "features") / feature_key(table, spec)
    if (directory / "patches.npy").exists():
        return FeatureSet(
            sample_ids=np.load(directory / "sample_ids.npy", allow_pickle=False),
            patches=np.load(directory / "patches.npy", mmap_mode="r"),
        )
    features = extract_patch_features(table, spec, **extract_options)
    with staged_directory(directory) as staging:
        np.save(staging / "sample_ids.npy", features.sample_ids.astype(str))
        np.save(staging / "patches.npy", features.patches)
        (staging / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2, default=str))
    return features
