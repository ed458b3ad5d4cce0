"""A multi-class real anomaly corpus for long-tail protocols: textures, tiles and solar cells.

Long-tail anomaly detection (TailedCore) needs many product classes in one training set,
with real images and pixel masks. ``longtail_mix`` builds one from data on disk and PyPI:

* ``dtd_defects``: the 10 Describable-Textures classes of ``<data-root>/dtd_subset``. A
  class is *one* texture photo (the class's largest, first by name on ties), the way an
  MVTec texture class is one material: its images are square crops (``crop_fraction`` of
  the photo's shorter side, resized to ``crop_size``) at seeded random positions, the
  training crops from the top ``1 - test_fraction`` of the photo and the test crops from
  the bottom ``test_fraction``, so no test pixel is ever in a training crop. Each
  defective test crop gets its own DRAEM-style synthetic defect and mask (see
  :mod:`raylab.data.synthetic_defects`). Defaults: 108 training, 20 normal and 32
  defective test crops per class.
* ``magnetic_tile`` and ELPV ``mono`` / ``poly`` (real defects; tile masks, no ELPV masks),
  subsampled (seeded) to the same per-class sizes, so that the long-tail protocols' class
  distribution is shaped by the protocol and not by the sources' sizes.

13 classes in all. Why one photo per texture class: the 40 photos of a DTD class are 40
different materials (different colours, scales, lighting). An earlier version split each
class by photo (quadrant crops of some photos for training, of others for testing); in a
step K=1 trial (24 training crops per class) the per-class image AUROC of all three
methods then ranged 0.15-0.81 on the textures, below 0.5 on four of them (normal crops of
a photo unlike the training photos scored above the defects), and TailSampler gave every
one of the 26 "bumpy" crops a class of its own: such a class is not a cluster. Crops of
one material have the low within-class variation that MVTec's product classes have.

The synthetic defects' foreign textures come from scikit-image's bundled images, never from
the corpus (see :mod:`raylab.data.synthetic_defects` for why); the Perlin lattice is capped
at 8 x 8 (DRAEM: 32 x 32 on 256 px images) so that blobs span at least one 8-px feature
cell at the CPU input size. Everything is seeded by ``split_seed``: the corpus (and so its
fingerprint and feature cache) is identical on every machine.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from raylab.data.adapters.common import DatasetNotFoundError, image_files
from raylab.data.images import decode_image, encode_png
from raylab.data.registry import DATASETS
from raylab.data.schema import CORPUS_SCHEMA, CorpusRecord, records_to_table, validate_corpus
from raylab.data.synthetic_defects import SyntheticDefectConfig, skimage_anomaly_sources, synthesize_defect

DTD_DEFECTS = SyntheticDefectConfig(perlin_scale_exponents=(0, 4))


def class_photo(folder: Path) -> Path:
    """The class's largest photo (first by name among equals): the most room for crops."""
    sizes = {path: Image.open(path).size for path in image_files(folder)}  # sorted by name
    return max(sizes, key=lambda path: sizes[path][0] * sizes[path][1])  # max keeps the first of equals


def _crops(
    picture: Image.Image, top: int, bottom: int, side: int, count: int, size: int, rng: np.random.Generator, where: str
) -> list[tuple[np.ndarray, str]]:
    """``count`` square crops of ``side`` px lying in rows [top, bottom), resized to ``size``."""
    if bottom - top < side or picture.size[0] < side:
        raise ValueError(
            f"{where}: a {side}-px crop does not fit rows {top}-{bottom} of a {picture.size[0]}x{picture.size[1]} photo"
        )
    out = []
    for _ in range(count):
        y = int(rng.integers(top, bottom - side + 1))
        x = int(rng.integers(0, picture.size[0] - side + 1))
        crop = picture.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
        out.append((np.asarray(crop), f"[x {x}:{x + side}, y {y}:{y + side}]"))
    return out


@DATASETS.register("dtd_defects")
def load_dtd_defects(
    data_root: str | Path | None,
    classes: tuple[str, ...] | None = None,
    train_images: int = 108,
    test_good_images: int = 20,
    test_defective_images: int = 32,
    crop_fraction: float = 0.24,
    test_fraction: float = 1 / 3,
    crop_size: int = 128,
    split_seed: int = 0,
) -> pa.Table:
    """DTD texture classes as an anomaly corpus with synthetic defects (see the module docstring)."""
    if data_root is None:
        raise DatasetNotFoundError("dtd_defects needs --data-root: the folder that holds dtd_subset/")
    root = Path(data_root) / "dtd_subset"
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root} does not exist: point --data-root at the folder that holds dtd_subset/")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    wanted = list(classes) if classes else found
    missing = sorted(set(wanted) - set(found))
    if missing or not wanted:
        raise DatasetNotFoundError(f"DTD classes {missing or wanted} not found under {root}; found {found}")
    if not 0 < test_fraction < 1 or not 0 < crop_fraction <= min(test_fraction, 1 - test_fraction):
        raise ValueError(
            f"need 0 < crop_fraction <= test region and training region; got crop {crop_fraction}, test {test_fraction}"
        )
    sources = skimage_anomaly_sources()
    records = []
    for class_name in wanted:
        path = class_photo(root / class_name)
        relative = path.relative_to(root.parent).as_posix()
        stem = relative.rsplit(".", 1)[0]
        picture = decode_image(path.read_bytes(), sample=relative)
        side = max(8, int(round(crop_fraction * min(picture.size))))
        cut = int(round((1 - test_fraction) * picture.size[1]))
        rng = np.random.default_rng([split_seed, zlib.crc32(class_name.encode())])
        train = _crops(picture, 0, cut, side, train_images, crop_size, rng, relative)
        test = _crops(
            picture, cut, picture.size[1], side, test_good_images + test_defective_images, crop_size, rng, relative
        )
        for i, (crop, box) in enumerate(train):
            records.append(
                CorpusRecord(f"{stem}/train{i:03d}", encode_png(crop), 0, class_name, "train", relative + box)
            )
        for i, (crop, box) in enumerate(test[:test_good_images]):
            records.append(CorpusRecord(f"{stem}/good{i:03d}", encode_png(crop), 0, class_name, "test", relative + box))
        for i, (crop, box) in enumerate(test[test_good_images:]):
            sample_id = f"{stem}/defect{i:03d}"
            defect = synthesize_defect(
                crop,
                np.random.default_rng([split_seed, zlib.crc32(sample_id.encode())]),
                sources,
                DTD_DEFECTS,
                sample=relative + box,
            )
            records.append(
                CorpusRecord(
                    sample_id,
                    encode_png(defect.image),
                    1,
                    class_name,
                    "test",
                    f"{relative}{box} + synthetic defect",
                    mask=encode_png(defect.mask * 255),
                    defect_type=f"synthetic_{defect.source}",
                    attributes={"beta": round(defect.beta, 4), "mask_area": round(float(defect.mask.mean()), 4)},
                )
            )
    return records_to_table(records)


def take_per_group(table: pa.Table, sizes: dict[tuple[str, int], int], seed: int, *, where: str) -> pa.Table:
    """A seeded draw of ``sizes[(split, label)]`` rows of each group; short groups are an error."""
    frame = table.select(["sample_id", "split", "label"]).to_pandas()
    keep: list[int] = []
    for (split, label), count in sorted(sizes.items()):
        rows = frame.index[(frame["split"] == split) & (frame["label"] == label)].to_numpy()
        if len(rows) < count:
            raise ValueError(f"{where}: {count} {split} images of label {label} wanted, only {len(rows)} exist")
        rows = rows[np.argsort(frame.loc[rows, "sample_id"].to_numpy())]
        rng = np.random.default_rng([seed, zlib.crc32(f"{where}/{split}/{label}".encode())])
        keep.extend(rng.choice(rows, size=count, replace=False).tolist())
    return table.take(sorted(keep))


def _renamed(table: pa.Table, class_name: str) -> pa.Table:
    index = table.schema.get_field_index("class_name")
    return table.set_column(index, "class_name", pa.array([class_name] * table.num_rows, pa.string()))


@DATASETS.register("longtail_mix")
def load_longtail_mix(
    data_root: str | Path | None,
    train_per_class: int = 108,
    test_good_per_class: int = 20,
    test_defective_per_class: int = 32,
    include: tuple[str, ...] = ("dtd", "magnetic_tile", "elpv"),
    split_seed: int = 0,
) -> pa.Table:
    """DTD textures with synthetic defects + magnetic tile + ELPV mono / poly (13 classes)."""
    from raylab.data.adapters.elpv import load_elpv
    from raylab.data.adapters.magnetic_tile import load_magnetic_tile

    unknown = sorted(set(include) - {"dtd", "magnetic_tile", "elpv"})
    if unknown or not include:
        raise ValueError(f"include must name some of dtd, magnetic_tile, elpv; got {list(include)}")
    sizes = {("train", 0): train_per_class, ("test", 0): test_good_per_class, ("test", 1): test_defective_per_class}
    parts = []
    if "dtd" in include:
        parts.append(
            load_dtd_defects(
                data_root,
                train_images=train_per_class,
                test_good_images=test_good_per_class,
                test_defective_images=test_defective_per_class,
                split_seed=split_seed,
            )
        )
    if "magnetic_tile" in include:
        parts.append(take_per_group(load_magnetic_tile(data_root), sizes, split_seed, where="magnetic_tile"))
    if "elpv" in include:
        elpv = load_elpv(data_root)
        for module_type in ("mono", "poly"):
            rows = elpv.filter(pc.equal(elpv["class_name"], module_type))
            parts.append(
                _renamed(take_per_group(rows, sizes, split_seed, where=f"elpv/{module_type}"), f"elpv_{module_type}")
            )
    table = pa.concat_tables([p.cast(CORPUS_SCHEMA) for p in parts])
    validate_corpus(table)
    return table
