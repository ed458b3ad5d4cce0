"""Face images for ALSUV: identity-disjoint corpora decoded onto the face canvas, and a face check.

Every image, real or generated, is compared on one canvas (:class:`CanvasConfig`): a square
RGB image in [-1, 1]. Real images are centre-cropped to a square and resized (area
averaging) to the canvas size, grey images repeated over three channels; the generator is
trained on the same canvases, so a reconstruction and a real face reach the encoders through
the same resizing.

Attack targets must show a face: :func:`check_face_like` runs the LBP frontal-face cascade
that ships with scikit-image (the OpenCV LBP cascade) over the image at several scales and
raises :class:`NotAFaceError` naming the sample when it finds none (a blank frame, noise, a
texture). On ORL it finds a face in about 85-92% of the images (pose and glasses defeat it on
the rest); targets are taken among the images where it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from raylab.data import load_corpus
from raylab.data.images import decode_image
from raylab.data.rows import ParallelRows
from raylab.methods.alsuv.config import CanvasConfig, DataConfig


class NotAFaceError(ValueError):
    """A target image in which no face is found; the message names the sample."""


@dataclass
class FaceSet(ParallelRows):
    """Canvas images ``(n, 3, s, s)`` float32 with their identities, ids and sources."""

    images: np.ndarray
    identities: np.ndarray
    sample_ids: np.ndarray
    sources: np.ndarray


def to_canvas(image: Image.Image, canvas: CanvasConfig) -> np.ndarray:
    """Centre square crop, area-resize to the canvas, RGB in [-1, 1], ``(3, s, s)`` float32."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    resized = square.resize(
        (canvas.size, canvas.size), Image.Resampling.BOX if side >= canvas.size else Image.Resampling.BICUBIC
    )
    pixels = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)
    return pixels / 127.5 - 1.0


def decode_to_canvas(data: bytes, canvas: CanvasConfig, *, sample: str) -> np.ndarray:
    return to_canvas(decode_image(data, sample=sample), canvas)


@lru_cache(maxsize=1)
def _face_cascade():
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def find_faces(grey: np.ndarray, *, min_fraction: float = 0.2) -> list[dict]:
    """Face boxes of the LBP cascade in a grey image (values in [0, 1])."""
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {grey.shape}")
    height, width = grey.shape
    smallest = max(16, int(min_fraction * min(height, width)))
    return _face_cascade().detect_multi_scale(
        img=grey.astype(np.float64),
        scale_factor=1.1,
        step_ratio=1,
        min_size=(smallest, smallest),
        max_size=(height, width),
    )


def check_face_like(data: bytes | np.ndarray, *, sample: str) -> None:
    """Raise :class:`NotAFaceError` naming ``sample`` when no face is found in it.

    ``data``: encoded image bytes, or an ``(h, w)`` / ``(3, h, w)`` array in [-1, 1] (a
    canvas). Images are checked at no less than 96 px on their short side (smaller ones are
    upsampled), the scale the cascade's 24 px windows were trained for.
    """
    if isinstance(data, (bytes, bytearray)):
        grey = np.asarray(decode_image(bytes(data), sample=sample, mode="L"), dtype=np.float64) / 255.0
    else:
        array = np.asarray(data, dtype=np.float64)
        if array.ndim == 3:
            array = array.mean(axis=0)
        if array.ndim != 2:
            raise NotAFaceError(f"{sample}: expected an image, got an array of shape {np.shape(data)}")
        grey = (array + 1.0) / 2.0
    if not np.isfinite(grey).all():
        raise NotAFaceError(f"{sample}: the image has non-finite values")
    if float(grey.std()) < 1e-3:
        raise NotAFaceError(
            f"{sample}: the image is blank (constant value {float(grey.mean()):.3f}): no face to reconstruct"
        )
    short = min(grey.shape)
    if short < 96:
        factor = 96 / short
        size = (round(grey.shape[1] * factor), round(grey.shape[0] * factor))
        grey = (
            np.asarray(
                Image.fromarray((grey * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC), dtype=np.float64
            )
            / 255.0
        )
    if not find_faces(grey):
        raise NotAFaceError(
            f"{sample}: no face found (LBP frontal-face cascade at scales from 20% of the image up); "
            "an attack target must be a face image"
        )


@dataclass
class FaceProtocol:
    """Training faces (generator and raylab encoders) and held-out faces (targets, thresholds)."""

    train: FaceSet
    held_out: FaceSet
    corpus: pa.Table

    def counts(self) -> dict[str, int]:
        return {
            "train_images": len(self.train),
            "train_identities": len(set(self.train.identities.tolist())),
            "held_out_images": len(self.held_out),
            "held_out_identities": len(set(self.held_out.identities.tolist())),
        }


def first_per_identity(identities: list[str], count: int) -> list[int]:
    """Rows of the first ``count`` images of every identity, in corpus order.

    Cutting per identity (not overall) keeps every identity and the fold split, so a
    smaller budget changes how many faces each person has, never who is held out.
    """
    seen: dict[str, int] = {}
    rows = []
    for row, identity in enumerate(identities):
        if seen.get(identity, 0) < count:
            seen[identity] = seen.get(identity, 0) + 1
            rows.append(row)
    return rows


def load_protocol(config: DataConfig, data_root: str | Path | None) -> FaceProtocol:
    """The dataset's identity-disjoint split (fold ``config.fold`` held out), on the canvas."""
    corpus = load_corpus(
        config.dataset, data_root, n_folds=config.n_folds, fold=config.fold, split_seed=config.split_seed
    )
    if config.images_per_identity is not None:
        corpus = corpus.take(first_per_identity(corpus.column("class_name").to_pylist(), config.images_per_identity))
    ids = np.asarray(corpus.column("sample_id").to_pylist())
    sources = np.asarray(corpus.column("source").to_pylist())
    identities = np.asarray(corpus.column("class_name").to_pylist())
    splits = np.asarray(corpus.column("split").to_pylist())
    images = np.stack(
        [
            decode_to_canvas(data, config.canvas, sample=src)
            for data, src in zip(corpus.column("image").to_pylist(), sources, strict=True)
        ]
    )
    everything = FaceSet(images, identities, ids, sources)
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    train_ids = set(identities[train].tolist())
    overlap = train_ids & set(identities[test].tolist())
    if overlap:
        raise ValueError(
            f"{config.dataset}: identities {sorted(overlap)[:5]} are in both the training and the held-out folds"
        )
    return FaceProtocol(everything.take(train), everything.take(test), corpus)


def choose_targets(protocol: FaceProtocol, per_identity: int) -> tuple[FaceSet, list[str]]:
    """The first ``per_identity`` held-out images of each identity with a face found in them.

    Returns the targets and the sources of the images skipped by the face check (reported).
    """
    images = dict(
        zip(protocol.corpus.column("source").to_pylist(), protocol.corpus.column("image").to_pylist(), strict=True)
    )
    rows: list[int] = []
    skipped: list[str] = []
    held = protocol.held_out
    for identity in dict.fromkeys(held.identities.tolist()):
        taken = 0
        for row in np.flatnonzero(held.identities == identity):
            if taken == per_identity:
                break
            try:
                check_face_like(images[held.sources[row]], sample=str(held.sources[row]))
            except NotAFaceError:
                skipped.append(str(held.sources[row]))
                continue
            rows.append(int(row))
            taken += 1
        if taken < per_identity:
            raise NotAFaceError(
                f"identity {identity}: only {taken} of its images pass the face check, {per_identity} needed"
            )
    return held.take(rows), skipped
