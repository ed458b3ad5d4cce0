"""A multi-class real anomaly corpus for long-tail protocols: textures, tiles and solar cells.

Long-tail anomaly detection (TailedCore) needs many product classes in one training set,
with real images and pixel masks. ``longtail_mix`` builds one from data on disk and PyPI:

* ``dtd_defects``: the 10 Describable-Textures classes of ``<data-root>/dtd_subset`` (40
  photos each). Each photo is cut to its central square and split into 4 quadrant crops
  (``crop_size`` px), so a class has 160 crops. The split is by *photo* (crops of one
  photo never straddle train and test): per class, a seeded draw of ``test_good_photos``
  photos gives the normal test crops, ``test_defective_photos`` photos give the anomalous
  test crops (every crop gets its own DRAEM-style synthetic defect and mask, see
  :mod:`raylab.data.synthetic_defects`), the rest train. Defaults: 27 / 5 / 8 photos ->
  108 train, 20 normal and 32 defective test crops.
* ``magnetic_tile`` and ELPV ``mono`` / ``poly`` (real defects; tile masks, no ELPV masks),
  subsampled (seeded) to the same per-class sizes, so that the long-tail protocols' class
  distribution is shaped by the protocol and not by the sources' sizes.

13 classes in all. The synthetic defects' foreign textures come from scikit-image's
bundled images, never from the corpus (see :mod:`raylab.data.synthetic_defects` for why);
the Perlin lattice is capped at 8 x 8 (DRAEM: 32 x 32 on 256 px images) so that blobs span
at least one 8-px feature cell at the CPU input size. Everything is seeded by
``split_seed``: the corpus (and so its fingerprint and feature cache) is identical on
every machine.
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


def _quadrants(path: Path, crop_size: int) -> list[np.ndarray]:
    """The 4 quadrants of the central square of a photo, each resized to ``crop_size``."""
    picture = decode_image(path.read_bytes(), sample=str(path))
    side = min(picture.size)
    if side < 2 * 8:
        raise ValueError(f"{path}: {picture.size[0]}x{picture.size[1]} is too small to cut into quadrants")
    left, top = (picture.size[0] - side) // 2, (picture.size[1] - side) // 2
    half = side // 2
    crops = []
    for row in (0, 1):
        for column in (0, 1):
            box = (left + column * half, top + row * half, left + (column + 1) * half, top + (row + 1) * half)
            crops.append(np.asarray(picture.crop(box).resize((crop_size, crop_size), Image.BILINEAR)))
    return crops


@DATASETS.register("dtd_defects")
def load_dtd_defects(
    data_root: str | Path | None,
    classes: tuple[str, ...] | None = None,
    test_good_photos: int = 5,
    test_defective_photos: int = 8,
    crop_size: int = 160,
    split_seed: int = 0,
    photos_per_class: int | None = None,
) -> pa.Table:
    """DTD texture classes as an anomaly corpus with synthetic defects (see the module docstring).

    ``photos_per_class`` keeps a seeded subset of each class's photos (small test corpora).
    """
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
    sources = skimage_anomaly_sources()
    records = []
    for class_name in wanted:
        photos = image_files(root / class_name)
        if photos_per_class is not None:
            keep = np.random.default_rng([split_seed, zlib.crc32(f"subset/{class_name}".encode())]).permutation(len(photos))
            photos = [photos[i] for i in sorted(keep[:photos_per_class])]
        needed = test_good_photos + test_defective_photos + 1
        if len(photos) < needed:
            raise ValueError(
                f"{root / class_name}: {len(photos)} photos, but {test_good_photos} normal-test + "
                f"{test_defective_photos} defective-test photos + at least 1 training photo are needed"
            )
        order = np.random.default_rng([split_seed, zlib.crc32(class_name.encode())]).permutation(len(photos))
        role = {int(i): "train" for i in order}
        role.update({int(i): "test_good" for i in order[:test_good_photos]})
        role.update({int(i): "test_defective" for i in order[test_good_photos : test_good_photos + test_defective_photos]})
        for index, path in enumerate(photos):
            relative = path.relative_to(root.parent).as_posix()
            for quadrant, crop in enumerate(_quadrants(path, crop_size)):
                sample_id = f"{relative.rsplit('.', 1)[0]}/q{quadrant}"
                source = f"{relative}[quadrant {quadrant}]"
                if role[index] != "test_defective":
                    records.append(
                        CorpusRecord(sample_id, encode_png(crop), 0, class_name, "train" if role[index] == "train" else "test", source)
                    )
                    continue
                rng = np.random.default_rng([split_seed, zlib.crc32(sample_id.encode())])
                defect = synthesize_defect(crop, rng, sources, DTD_DEFECTS, sample=source)
                records.append(
                    CorpusRecord(
                        f"{sample_id}/defect",
                        encode_png(defect.image),
                        1,
                        class_name,
                        "test",
                        f"{source} + synthetic defect",
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
    crop_size: int = 160,
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
        dtd = load_dtd_defects(data_root, crop_size=crop_size, split_seed=split_seed)
        for class_name in sorted(set(dtd.column("class_name").to_pylist())):
            rows = dtd.filter(pc.equal(dtd["class_name"], class_name))
            parts.append(take_per_group(rows, sizes, split_seed, where=f"dtd_defects/{class_name}"))
    if "magnetic_tile" in include:
        parts.append(take_per_group(load_magnetic_tile(data_root), sizes, split_seed, where="magnetic_tile"))
    if "elpv" in include:
        elpv = load_elpv(data_root)
        for module_type in ("mono", "poly"):
            rows = elpv.filter(pc.equal(elpv["class_name"], module_type))
            parts.append(_renamed(take_per_group(rows, sizes, split_seed, where=f"elpv/{module_type}"), f"elpv_{module_type}"))
    table = pa.concat_tables([p.cast(CORPUS_SCHEMA) for p in parts])
    validate_corpus(table)
    return table
