"""Face / periocular pairs from a face corpus, and CKD's identity-disjoint data roles.

The periocular image is cut from the same face image as a fixed eye band (rows
``PairConfig.band_rows`` of the whole image, full width), which presumes aligned faces:
true of ORL (frontal, centred, eyes in rows ~30-60 of 112) and of any set aligned on the
eyes. A detector (OpenCV Haar cascades) would add a dependency and a failure mode (missed
eyes) for no gain on aligned data, so the band is fixed and configurable. Both images are
resized (bilinear) to the network's input sizes, converted to RGB (grey images replicated)
and normalised with mean 0.5 / std 0.5. Horizontal flips are applied to the pair during
training (see :mod:`raylab.methods.ckd.training`), not here.

Roles (:func:`fold_roles`): the corpus' ``test`` rows (the identities of the held-out fold)
are only ever embedded for evaluation; its ``train`` rows are split per identity into
``fit`` images and ``val_per_identity`` validation images (a seeded draw depending on the
identity and ``split_seed`` only, so every method and training seed sees the same
validation images). Training identities get labels ``0..K-1`` in natural order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from raylab.data.images import decode_image
from raylab.data.rows import ParallelRows
from raylab.methods.ckd.config import NetworkConfig, PairConfig


@dataclass(frozen=True)
class PairSet(ParallelRows):
    """Decoded, normalised pairs: ``faces (n, 3, H, W)``, ``periocular (n, 3, h, w)`` float32."""

    faces: np.ndarray
    periocular: np.ndarray
    labels: np.ndarray
    identities: np.ndarray
    sample_ids: np.ndarray


def _rows(height: int, fractions: tuple[float, float]) -> tuple[int, int]:
    top = int(round(fractions[0] * height))
    bottom = max(top + 1, int(round(fractions[1] * height)))
    return top, bottom


def _normalised(picture: Image.Image, size: tuple[int, int], pairs: PairConfig) -> np.ndarray:
    resized = picture.resize((size[1], size[0]), Image.BILINEAR)  # PIL takes (width, height)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    return ((pixels - pairs.mean) / pairs.std).transpose(2, 0, 1)


def make_pair(
    data: bytes, pairs: PairConfig, network: NetworkConfig, *, sample: str = "?"
) -> tuple[np.ndarray, np.ndarray]:
    """``(face, periocular)`` arrays of one encoded face image."""
    picture = decode_image(data, sample=sample, mode="RGB")
    width, height = picture.size
    face_top, face_bottom = _rows(height, pairs.face_rows)
    band_top, band_bottom = _rows(height, pairs.band_rows)
    face = _normalised(picture.crop((0, face_top, width, face_bottom)), network.face_size, pairs)
    band = _normalised(picture.crop((0, band_top, width, band_bottom)), network.periocular_size, pairs)
    return face, band


def pairs_from_table(
    table: pa.Table, pairs: PairConfig, network: NetworkConfig, labels: dict[str, int] | None = None
) -> PairSet:
    """Every row of ``table`` as a pair; ``labels`` maps identity (``class_name``) to a label."""
    if table.num_rows == 0:
        raise ValueError("no images to make pairs of")
    images = table.column("image").to_pylist()
    ids = table.column("sample_id").to_pylist()
    identities = table.column("class_name").to_pylist()
    made = [make_pair(image, pairs, network, sample=sample) for image, sample in zip(images, ids, strict=True)]
    mapping = labels if labels is not None else {name: k for k, name in enumerate(dict.fromkeys(identities))}
    return PairSet(
        faces=np.stack([m[0] for m in made]),
        periocular=np.stack([m[1] for m in made]),
        labels=np.asarray([mapping[name] for name in identities], dtype=np.int64),
        identities=np.asarray(identities),
        sample_ids=np.asarray(ids),
    )


@dataclass(frozen=True)
class FoldRoles:
    fit: PairSet
    val: PairSet
    test: PairSet
    num_classes: int


def fold_roles(
    table: pa.Table, pairs: PairConfig, network: NetworkConfig, *, val_per_identity: int, split_seed: int
) -> FoldRoles:
    """Split a fold's corpus (``train`` / ``test`` rows) into fit, validation and test pairs."""
    if val_per_identity < 1:
        raise ValueError(
            f"val_per_identity must be >= 1 (the best checkpoint is chosen on validation), got {val_per_identity}"
        )
    split = np.asarray(table.column("split").to_pylist())
    identity = np.asarray(table.column("class_name").to_pylist())
    train_rows, test_rows = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    if len(test_rows) == 0 or len(train_rows) == 0:
        raise ValueError("the corpus needs both train and test identities: load it with a fold (e.g. fold=0)")
    overlap = set(identity[train_rows]) & set(identity[test_rows])
    if overlap:
        raise ValueError(f"identities in both train and test: {sorted(overlap)[:5]}; folds must be identity-disjoint")
    train_ids = list(dict.fromkeys(identity[train_rows]))
    val_rows = []
    for name in train_ids:
        rows = train_rows[identity[train_rows] == name]
        if len(rows) <= val_per_identity:
            raise ValueError(
                f"identity {name} has {len(rows)} images: needs more than val_per_identity={val_per_identity} "
                "to keep training images"
            )
        rng = np.random.default_rng((split_seed, zlib.crc32(str(name).encode())))
        val_rows.extend(rng.choice(rows, size=val_per_identity, replace=False).tolist())
    val_mask = np.zeros(table.num_rows, bool)
    val_mask[val_rows] = True
    fit_rows = train_rows[~val_mask[train_rows]]
    labels = {name: k for k, name in enumerate(train_ids)}
    return FoldRoles(
        fit=pairs_from_table(table.take(fit_rows), pairs, network, labels),
        val=pairs_from_table(table.take(np.sort(np.asarray(val_rows, dtype=np.int64))), pairs, network, labels),
        test=pairs_from_table(table.take(test_rows), pairs, network),
        num_classes=len(train_ids),
    )
