"""Tests for TailedCore, SoftPatch, TailSampler, the patchwise LOF filter, the long-tail
protocols, the synthetic defects and the ``tailedcore_sweep`` job (through the experiment runner).

TailSampler and LOF run on synthetic data whose truth is known (the numbers each test
expects are stated beside it); the protocols on a synthetic corpus of tiny images; the
job end to end on a small real corpus (3 DTD classes with synthetic defects) with real
Ray Tune, MLflow and faiss.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.compute as pc
import pytest

from raylab.data.images import encode_png
from raylab.data.protocols import LongTailProtocol, apply_long_tail, protocol_from_name
from raylab.data.protocols.longtail import discrete_pareto_pmf
from raylab.data.schema import CorpusRecord, records_to_table
from raylab.data.synthetic_defects import SyntheticDefectConfig, perlin_noise, synthesize_defect
from raylab.experiment import get_experiment, run
from raylab.methods.tailedcore import PatchLOFConfig, SoftPatchConfig, TailedCoreConfig, TailSamplerConfig
from raylab.methods.tailedcore.diagnostics import tail_quality
from raylab.methods.tailedcore.lof import lof_keep_mask, patchwise_lof_scores
from raylab.methods.tailedcore.model import TailedCore, predict_tail, tail_coreset
from raylab.methods.tailedcore.softpatch import SoftPatch, coreset_rows, flat_patches
from raylab.methods.tailedcore.tail_sampler import (
    TailSampler,
    elbow_value,
    largest_k_within_share,
    partition_class_sizes,
)
from raylab.methods.tailedcore.views import rotation_flip_views, views_per_image

# ---------------------------------------------------------------------------------------------
# TailSampler


def clustered(sizes: list[int], dim: int = 64, spread: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random unit directions; returns embeddings and class labels."""
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for label, size in enumerate(sizes):
        centre = rng.normal(size=dim)
        centre /= np.linalg.norm(centre)
        points.append(centre + spread * rng.normal(size=(size, dim)) / np.sqrt(dim))
        labels += [label] * size
    return np.concatenate(points), np.asarray(labels)


HEAD = [120, 110, 100, 90, 80]
TAIL = [1, 1, 1, 1, 4, 4, 4]


def test_tail_sampler_finds_the_tail_classes_of_clustered_embeddings():
    embeddings, labels = clustered(HEAD + TAIL)
    truth = np.asarray(HEAD + TAIL)[labels]
    prediction = TailSampler().predict(embeddings)
    # Measured: predicted sizes are 0.85 x the true head sizes (the 15% trim keeps 85% of
    # each cap: 102, 93, 85, 76, 68), the 4-image classes come out as 3, the singletons as 1.
    for size in HEAD:
        assert np.all(np.abs(prediction.class_sizes[truth == size] - 0.85 * size) <= 0.05 * size), size
    assert np.all(prediction.class_sizes[truth == 1] == 1)
    assert np.all(prediction.class_sizes[truth == 4] == 3)
    # Partition: the five heads (the first absorbs the greedy remainder) then the tails;
    # elbow and the 15% share rule both put max_K at 3.
    assert prediction.elbow_k == 3 and prediction.share_k == 3 and prediction.max_k == 3
    is_tail_truth = truth <= 4
    precision = (prediction.is_tail & is_tail_truth).sum() / prediction.is_tail.sum()
    recall = (prediction.is_tail & is_tail_truth).sum() / is_tail_truth.sum()
    assert precision == 1.0 and recall == 1.0  # all 16 tail images found, no head image called tail


def test_tail_sampler_step_like_training_set():
    """5 head classes of ~100 and 8 singletons (the step K=1 shape): every singleton is tail."""
    sizes = [105, 100, 98, 95, 90] + [1] * 8
    embeddings, labels = clustered(sizes, spread=0.5, seed=3)
    truth = np.asarray(sizes)[labels] == 1
    prediction = TailSampler().predict(embeddings)
    assert prediction.is_tail[truth].all()  # recall 1.0 (8 of 8)
    assert prediction.is_tail.sum() == 8  # precision 1.0


def test_tail_sampler_blocks_give_identical_results():
    embeddings, _ = clustered([60, 40, 3, 1], seed=5)
    small = TailSampler(TailSamplerConfig(block_size=7)).predict(embeddings)
    whole = TailSampler(TailSamplerConfig(block_size=10_000)).predict(embeddings)
    np.testing.assert_array_equal(small.class_sizes, whole.class_sizes)
    np.testing.assert_array_equal(small.row_counts, whole.row_counts)
    np.testing.assert_array_equal(small.is_tail, whole.is_tail)


def test_class_size_partition_elbow_and_share_rules():
    # Sizes 2,2 -> one class of 2; 3,3,3 -> one of 3; five 5s -> one of 5.
    assert partition_class_sizes(np.array([5, 3, 2, 5, 3, 5, 2, 5, 3, 5])).tolist() == [5, 3, 2]
    # A remainder shorter than its smallest size joins the last class: [1] then [4, 4] -> 1 + 2.
    assert partition_class_sizes(np.array([1, 4, 4])).tolist() == [3]
    assert elbow_value(np.array([100, 90, 80, 5, 3, 1])) == 5
    assert elbow_value(np.array([7])) == 7
    # 15% of 200 = 30: classes 1+4+5+10 = 20 fit, +30 does not -> K = 10.
    assert largest_k_within_share(np.array([100, 50, 30, 10, 5, 4, 1]), 0.15) == 10
    # Even the smallest class exceeds the budget: K = the smallest class.
    assert largest_k_within_share(np.array([100, 90]), 0.15) == 90


def test_tail_sampler_degenerate_inputs():
    single = TailSampler().predict(np.ones((1, 8)))
    assert single.class_sizes.tolist() == [1] and single.is_tail.tolist() == [True]
    # Identical images: one class of all N; with one class max_K is its size, so all are tail.
    same = TailSampler().predict(np.tile(np.arange(1.0, 9.0), (30, 1)))
    assert same.class_sizes.tolist() == [30] * 30 and same.class_partition.tolist() == [30] and same.is_tail.all()
    with pytest.raises(ValueError, match="non-empty"):
        TailSampler().predict(np.zeros((0, 8)))
    with pytest.raises(ValueError, match="all zero"):
        TailSampler().predict(np.zeros((3, 8)))


def test_tail_quality_counts_injected_images_called_tail():
    predicted = np.array([1, 1, 1, 0, 0, 1, 0, 0], dtype=bool)
    truth = np.array([1, 1, 0, 0, 0, 0, 0, 1], dtype=bool)
    injected = np.array([0, 0, 1, 1, 1, 1, 0, 0], dtype=bool)
    quality = tail_quality(predicted, truth, injected)
    # 2 of 4 predicted are true tail, 2 of 3 true tail found, 2 of 4 injected called tail.
    assert (quality["tail_precision"], quality["tail_recall"], quality["injected_called_tail"]) == (0.5, 2 / 3, 0.5)
    assert "injected_called_tail" not in tail_quality(predicted, truth)


def defect_grids(seed: int = 0):
    """Patch grids (N, 4, 4, 32) of two head classes (40, 35 images), three one-image classes,
    and 4 images of the first head class with a defect on 2 of their 16 patches.

    Returns the grids, a "last stage" embedding in which each defect dominates (its image's
    direction is mostly the defect's, as with a 4x4 last stage), the true tail, the defect images.
    """
    rng = np.random.default_rng(seed)
    sizes = [40, 35, 1, 1, 1]
    centres = rng.normal(size=(len(sizes), 32))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    grids = centres[labels][:, None, None, :] + 0.3 * rng.normal(size=(len(labels), 4, 4, 32))
    defective = np.zeros(len(labels), dtype=bool)
    defective[[3, 11, 20, 33]] = True
    stage = grids.mean(axis=(1, 2)).copy()
    for image in np.flatnonzero(defective):
        defect = 4.0 * rng.normal(size=32)
        grids[image, 1:3, 2] += defect
        stage[image] += 3.0 * defect  # the pooled last stage: the defect outweighs the class
    return grids.astype(np.float32), stage.astype(np.float32), labels >= 2, defective


def test_patch_mean_tail_embedding_keeps_defects_out_of_the_tail():
    grids, stage, true_tail, defective = defect_grids()
    release = predict_tail(TailedCoreConfig(), grids, stage)
    patch_mean = predict_tail(TailedCoreConfig(tail_embedding="patch_mean"), grids, None)
    # Measured: on the defect-dominated stage embedding every defect image is a class of its
    # own (size 1) and is called tail beside the 3 true singletons; on the mean of the patch
    # grids a defect is 2/16 of the image, it stays in its class and only the 3 singletons are tail.
    assert release.is_tail[defective].all() and release.is_tail[true_tail].all()
    np.testing.assert_array_equal(patch_mean.is_tail, true_tail)
    # TailedCore takes the same prediction, and ignores (may be given no) stage embeddings.
    model = TailedCore(
        TailedCoreConfig(tail_embedding="patch_mean", lof=PatchLOFConfig(tasks=1), coreset_ratio=0.5)
    ).fit(grids, None)
    np.testing.assert_array_equal(model.tail.is_tail, true_tail)
    with pytest.raises(ValueError, match="backbone_stage"):
        predict_tail(TailedCoreConfig(), grids, None)


# ---------------------------------------------------------------------------------------------
# Patchwise LOF


def planted_patches(n: int = 40, grid: int = 4, dim: int = 32, seed: int = 0):
    """Per-position Gaussian patches with 6 planted outliers (far from their position's cloud)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(grid, grid, dim)) * 3
    patches = centres[None] + 0.3 * rng.normal(size=(n, grid, grid, dim))
    planted = [(3, 0, 0), (7, 1, 2), (11, 3, 3), (20, 2, 1), (25, 0, 3), (33, 3, 0)]
    for image, y, x in planted:
        patches[image, y, x] += 4.0 * rng.normal(size=dim)
    return patches.astype(np.float32), planted


def test_patchwise_lof_removes_planted_outliers():
    patches, planted = planted_patches()
    scores = patchwise_lof_scores(patches, PatchLOFConfig(projection_dim=16, tasks=1))
    keep = lof_keep_mask(scores, 0.85)
    # Each planted patch has the highest LOF of its position (measured LOF 4-7 vs <= 1.6 else)
    # and all 6 are dropped, while 85% - 6/640 of the clean patches are kept.
    for image, y, x in planted:
        assert scores[image, y, x] == scores[:, y, x].max()
        assert not keep[image, y, x]
    assert abs(keep.mean() - 0.85) < 0.01


def test_patchwise_lof_ray_tasks_match_the_local_loop(ray_session):
    patches, _ = planted_patches(seed=1)
    local = patchwise_lof_scores(patches, PatchLOFConfig(tasks=1), seed=2)
    remote = patchwise_lof_scores(patches, PatchLOFConfig(tasks=3), seed=2)
    np.testing.assert_array_equal(local, remote)


def test_lof_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        patchwise_lof_scores(np.zeros((1, 2, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(N, h, w, D\)"):
        patchwise_lof_scores(np.zeros((5, 4), np.float32))
    # Identical images: every LOF is 1, nothing is an outlier, everything is kept.
    same = patchwise_lof_scores(np.ones((10, 2, 2, 4), np.float32), PatchLOFConfig(tasks=1))
    assert lof_keep_mask(same, 0.85).all()


# ---------------------------------------------------------------------------------------------
# SoftPatch and TailedCore on synthetic patches


def test_softpatch_and_tailedcore_memories(tmp_path):
    patches, planted = planted_patches(dim=16, seed=4)
    softpatch = SoftPatch(SoftPatchConfig(lof=PatchLOFConfig(tasks=1), coreset_ratio=0.5), seed=0).fit(patches)
    assert len(softpatch.bank) == int(softpatch.kept.sum() * 0.5)
    assert np.all(softpatch.weights > 0)
    prediction = softpatch.predict(patches[:2], with_maps=False)
    assert prediction.image_scores.shape == (2,) and prediction.maps is None

    embeddings, labels = clustered([34, 6], dim=8, seed=6)
    calls = []

    def views(rows):
        calls.append(list(rows))
        return (np.repeat(patches[[row]], 2, axis=0) for row in rows)  # two "views" per tail image, image by image

    config = TailedCoreConfig(lof=PatchLOFConfig(tasks=1), coreset_ratio=0.5)
    model = TailedCore(config, seed=0).fit(patches, embeddings, views=views)
    tail = np.flatnonzero(model.tail.is_tail)
    assert calls == [tail.tolist()]  # 16 dims, below the 128-d projection: selected in memory, one read
    sizes = model.memory_sizes
    assert sizes["tail_candidates"] == len(tail) * 3 * 16  # original + 2 views, 4x4 patches each
    assert len(model.bank) == sizes["head"] + sizes["tail"]
    # A training patch is in memory or close to it: its score is far below a planted outlier's.
    scores = model.predict(patches, with_maps=False).patch_scores
    assert np.median(scores) < np.median([scores[i, y, x] for i, y, x in planted])
    # Saved and loaded back (what a deployed model holds), both score exactly as fitted.
    for fitted, name in ((model, "tailedcore"), (softpatch, "softpatch")):
        loaded = type(fitted).load(fitted.save(tmp_path / name))
        np.testing.assert_array_equal(
            loaded.predict(patches, with_maps=False).patch_scores, fitted.predict(patches, with_maps=False).patch_scores
        )
    with pytest.raises(ValueError, match="global embeddings"):
        TailedCore(config).fit(patches, embeddings[:5])
    with pytest.raises(ValueError, match="at least 2"):
        TailedCore(config).fit(patches[:1], embeddings[:1])


def test_streamed_tail_coreset_is_the_coreset_of_the_concatenation():
    """Projecting the tail candidates chunk by chunk selects what the in-memory coreset selects
    on all of them at once, and hands back exactly those rows."""
    rng = np.random.default_rng(2)
    images = rng.normal(size=(3, 4, 4, 256)).astype(np.float32)
    per_image_views = [rng.normal(size=(5, 4, 4, 256)).astype(np.float32) for _ in images]

    def chunks():
        yield images
        yield from per_image_views

    config = TailedCoreConfig(coreset_ratio=0.2)
    selected, count = tail_coreset(chunks, config, seed=7, view_chunks=3)
    everything = np.concatenate([flat_patches(images), *(flat_patches(v) for v in per_image_views)])
    assert count == len(everything) == 3 * 6 * 16
    np.testing.assert_array_equal(selected, everything[coreset_rows(everything, config, 7)])
    with pytest.raises(RuntimeError, match="view chunks"):
        tail_coreset(chunks, config, seed=7, view_chunks=2)


def test_rotation_flip_views_are_the_release_set():
    image = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    import torch

    views = rotation_flip_views(torch.from_numpy(image), 15, True)
    assert views.shape == (47, 3, 16, 16)  # 24 angles x 2 flips - identity
    np.testing.assert_allclose(views[0].numpy(), image[:, :, ::-1])  # (0 deg, flipped) comes first
    assert rotation_flip_views(torch.from_numpy(image), 90, False).shape[0] == 3 == views_per_image(90, False)
    assert views_per_image(15, True) == 47


def test_batched_tail_views_match_the_per_image_computation(shared_data: Path, ray_session, tmp_path, monkeypatch):
    """Three real images' views through the feature pipeline (two images' views per forward
    pass) equal each image's views computed alone on the CPU, on the warm-task path of a local
    Ray and on the actor-pool path a trial uses; a second call reads the per-image cache."""
    from raylab.data import load_corpus
    from raylab.data.protocols import subsample_corpus
    from raylab.features import FeatureSpec, extract
    from raylab.features.cache import cached_view_features
    from raylab.features.views import ViewSpec
    from raylab.methods.tailedcore.views import per_image_view_features

    table = subsample_corpus(load_corpus("magnetic_tile", shared_data), per_group=1, seed=0).slice(0, 3)
    spec, views = FeatureSpec(image_size=112), ViewSpec(rotation_step=90, hflip=True)
    ids, images = table.column("sample_id").to_pylist(), table.column("image").to_pylist()
    expected = {sid: per_image_view_features(image, spec, views) for sid, image in zip(ids, images, strict=True)}
    entries = cached_view_features(table, spec, views, root=tmp_path / "tasks", images_per_batch=2)
    assert sorted(entries) == sorted(expected)
    for sid, path in entries.items():
        got = np.load(path)
        assert got.shape == (7, 14, 14, 152)  # 4 angles x 2 flips - identity
        np.testing.assert_allclose(got, expected[sid], rtol=1e-4, atol=1e-4)
    stamps = {sid: path.stat().st_mtime_ns for sid, path in entries.items()}
    again = cached_view_features(table, spec, views, root=tmp_path / "tasks", images_per_batch=2)
    assert {sid: path.stat().st_mtime_ns for sid, path in again.items()} == stamps  # read, not extracted again

    monkeypatch.setattr(extract, "started_local_ray", lambda: False)  # as inside a trial: the actor pool
    pooled = cached_view_features(table, spec, views, root=tmp_path / "actors", images_per_batch=2)
    for sid, path in pooled.items():
        np.testing.assert_allclose(np.load(path), expected[sid], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Long-tail protocols


def tiny_corpus(classes: int = 13, train: int = 40, good: int = 6, defective: int = 10):
    png = encode_png(np.zeros((4, 4), np.uint8))
    records = []
    for c in range(classes):
        name = f"class{c:02d}"
        records += [CorpusRecord(f"{name}/train{i:03d}", png, 0, name, "train", "t") for i in range(train)]
        records += [CorpusRecord(f"{name}/good{i:03d}", png, 0, name, "test", "t") for i in range(good)]
        records += [CorpusRecord(f"{name}/bad{i:03d}", png, 1, name, "test", "t") for i in range(defective)]
    return records_to_table(records)


def _split_counts(table, split, label=None, injected=None):
    mask = pc.equal(table["split"], split)
    if label is not None:
        mask = pc.and_(mask, pc.equal(table["label"], label))
    if injected is not None:
        mask = pc.and_(mask, pc.equal(table["injected_noise"], injected))
    return table.filter(mask).num_rows


def test_step_protocol_counts_and_determinism():
    corpus = tiny_corpus()
    result = apply_long_tail(corpus, protocol_from_name("step_k4", 0.1, seed=3))
    classes = result.classes.set_index("class_name")
    # 13 classes: round(0.6 x 13) = 8 tail classes keep 4 images, 5 head classes keep 40
    # and get round(0.1 x 40) = 4 defective images each.
    assert (classes["status"] == "tail").sum() == 8
    assert (classes.loc[classes["status"] == "tail", "train_kept"] == 4).all()
    assert (classes.loc[classes["status"] == "head", "noise_injected"] == 4).all()
    assert (classes.loc[classes["status"] == "tail", "noise_injected"] == 0).all()
    # Everything accounted for: same rows, dropped train images are "excluded".
    assert result.table.num_rows == corpus.num_rows
    assert _split_counts(result.table, "excluded") == 8 * 36
    assert _split_counts(result.table, "train", injected=True) == 20
    assert _split_counts(result.table, "train") == 8 * 4 + 5 * 40 + 20
    assert _split_counts(result.table, "test", label=1) == 13 * 10 - 20
    assert (result.manifest["count_before"].sum(), result.manifest["count_after"].sum()) == (corpus.num_rows,) * 2
    # Pure function of (corpus, seed): same seed -> same table; another seed -> other tails.
    again = apply_long_tail(corpus, protocol_from_name("step_k4", 0.1, seed=3))
    assert again.table.equals(result.table)
    other = apply_long_tail(corpus, protocol_from_name("step_k4", 0.1, seed=4))
    assert other.tail_classes != result.tail_classes


def test_pareto_protocol_follows_the_pmf():
    corpus = tiny_corpus(train=60, defective=40)
    result = apply_long_tail(corpus, protocol_from_name("pareto", 0.1, seed=0))
    classes = result.classes
    pmf = discrete_pareto_pmf(6.0, 13)
    expected = np.maximum(np.minimum(60, np.round(np.sort(pmf)[::-1] / pmf.max() * 60)), 5).astype(int)
    # Sizes 60, 34, 20, 12, 8, 5 x 8 in some order (the pmf shuffled over the classes).
    assert sorted(classes["train_kept"], reverse=True) == expected.tolist() == [60, 34, 20, 12, 8] + [5] * 8
    total_noise = round(int(expected.sum()) * 0.1)
    assert classes["noise_injected"].sum() == total_noise == 17  # round(0.1 x 174)
    assert (classes.loc[classes["train_kept"] < 20, "noise_injected"] == 0).all()
    assert set(result.tail_classes) == set(classes.loc[classes["train_kept"] < 20, "class_name"])
    assert result.table.num_rows == corpus.num_rows
    kept_in_test = apply_long_tail(corpus, LongTailProtocol("pareto", 0.1, 0, keep_injected_in_test=True))
    assert kept_in_test.table.num_rows == corpus.num_rows + total_noise
    assert _split_counts(kept_in_test.table, "test", label=1) == 13 * 40


def test_protocol_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        apply_long_tail(tiny_corpus().slice(0, 0), LongTailProtocol())
    with pytest.raises(ValueError, match="unknown long-tail protocol"):
        protocol_from_name("zipf", 0.1, 0)
    one = tiny_corpus(classes=3, train=1)
    stepped = apply_long_tail(one, protocol_from_name("step_k4", 0.1, 0))
    assert (stepped.classes["train_kept"] == 1).all()  # a class with one image keeps it
    with pytest.raises(ValueError, match=r"class00 \(1\)"):
        apply_long_tail(one, protocol_from_name("pareto", 0.1, 0))


# ---------------------------------------------------------------------------------------------
# Synthetic defects


def test_synthetic_defect_is_deterministic_and_confined_to_its_mask():
    image = (np.random.default_rng(0).uniform(0, 255, size=(64, 64, 3))).astype(np.uint8)
    sources = [np.full((80, 80, 3), 200, np.uint8)]
    config = SyntheticDefectConfig(perlin_scale_exponents=(0, 3))
    first = synthesize_defect(image, np.random.default_rng(7), sources, config)
    second = synthesize_defect(image, np.random.default_rng(7), sources, config)
    np.testing.assert_array_equal(first.image, second.image)
    area = first.mask.mean()
    assert config.min_area <= area <= config.max_area
    outside = first.mask == 0
    np.testing.assert_array_equal(first.image[outside], image[outside])
    assert np.abs(first.image[~outside].astype(int) - image[~outside]).mean() > 1
    noise = perlin_noise((33, 50), (4, 8), np.random.default_rng(0))
    assert noise.shape == (33, 50) and np.abs(noise).max() <= 1.5
    with pytest.raises(ValueError, match="uint8"):
        synthesize_defect(image.astype(np.float32), np.random.default_rng(0))


def test_dtd_defects_corpus_keeps_test_pixels_out_of_training(shared_data: Path):
    import re

    from raylab.data.adapters.longtail_mix import load_dtd_defects

    options = {"classes": ("cracked",), "train_images": 6, "test_good_images": 3, "test_defective_images": 4}
    table = load_dtd_defects(shared_data, **options)
    assert table.equals(load_dtd_defects(shared_data, **options))  # seeded: same corpus every time
    rows = table.to_pylist()
    assert [(r["split"], r["label"]) for r in rows].count(("train", 0)) == 6
    assert [(r["split"], r["label"]) for r in rows].count(("test", 1)) == 4
    spans = {r["sample_id"]: tuple(int(v) for v in re.search(r"y (\d+):(\d+)", r["source"]).groups()) for r in rows}
    last_train_row = max(spans[r["sample_id"]][1] for r in rows if r["split"] == "train")
    first_test_row = min(spans[r["sample_id"]][0] for r in rows if r["split"] == "test")
    assert last_train_row <= first_test_row  # training crops lie above every test crop
    for row in rows:
        assert (row["mask"] is not None) == (row["label"] == 1)


# ---------------------------------------------------------------------------------------------
# The job, end to end, on 3 real DTD classes with synthetic defects


@pytest.mark.e2e
def test_tailedcore_sweep_job(shared_data: Path, ray_session, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(
        "dataset_options: {classes: [banded, bumpy, cracked], train_images: 20, "
        "test_good_images: 6, test_defective_images: 6}\n"
        "protocols: [step_k1]\nseeds: [0]\nnoise_ratios: [0.1]\n"
        "tailedcore: {tail_rotation_step: 90, coreset_ratio: 0.1, tail_embedding: patch_mean}\n"
    )
    out = tmp_path / "summary.json"
    argv = [
        "--dataset",
        "dtd_defects",
        "--data-root",
        str(shared_data),
        "--config",
        str(config),
        "--summary-json",
        str(out),
        "--name",
        "tc-test",
    ]
    result = run(get_experiment("tailedcore_sweep"), argv)
    summary = json.loads(out.read_text())
    assert summary["job"] == "tailedcore_sweep" and summary["sweep"] == "tc-test"
    assert summary["axes"] == ["protocol", "noise_ratio", "injected_in_test", "seed"]
    rows = summary["rows"]
    # The default methods (TailedCore's true-tail ceiling among them) and one tailsampler row.
    assert sorted(r["method"] for r in rows) == [
        "patchcore",
        "softpatch",
        "tailedcore",
        "tailedcore_true_tail",
        "tailsampler",
    ]
    sampler = next(r for r in rows if r["method"] == "tailsampler")
    assert sampler["seed"] == 0 and sampler["injected_in_test"] == "removed"
    quality = sampler["metrics"]
    assert quality["tail_true"] == 2  # two tail classes of K = 1 image
    assert 0.0 <= quality["tail_precision"] <= 1.0 and 0.0 <= quality["tail_recall"] <= 1.0
    assert 0.0 <= quality["injected_called_tail"] <= 1.0  # the head class got round(0.1 x 20) = 2 defect images
    assert "image_auroc" not in quality
    # The ceiling row's tail is the truth; TailedCore's tail is the tailsampler row's prediction.
    ceiling = next(r for r in rows if r["method"] == "tailedcore_true_tail")["diagnostics"]
    assert (ceiling["tail_precision"], ceiling["tail_recall"]) == (1.0, 1.0)
    tailed_diagnostics = next(r for r in rows if r["method"] == "tailedcore")["diagnostics"]
    for key in ("tail_predicted", "tail_recall", "injected_called_tail"):
        assert tailed_diagnostics[key] == quality[key], key
    table = result["table"].set_index("method")
    assert table.loc["tailsampler", "tail_recall_mean"] == quality["tail_recall"]
    rows = [r for r in rows if r["method"] != "tailsampler"]
    for row in rows:
        assert row["protocol"] == "step_k1" and row["noise_ratio"] == 0.1 and row["seed"] == 0
        assert row["injected_in_test"] == "removed"  # raylab's default test protocol
        assert {"image_auroc", "pixel_auroc", "tail_image_auroc"} <= set(row["metrics"])
        assert 0.0 <= row["metrics"]["tail_image_auroc"] <= 1.0
        assert len(row["tail_classes"]) == 2  # round(0.6 x 3)
        assert set(row["per_class"]) == {"banded", "bumpy", "cracked"}
    tailed = next(r for r in rows if r["method"] == "tailedcore")
    assert tailed["diagnostics"]["tail_predicted"] >= 1
    assert "tail_image_auroc" in result["table"].columns.str.replace("_mean", "").tolist()
    # Every method read the sweep's features.
    assert result["config"].tailedcore.features == result["config"].softpatch.features == result["config"].features
    runs = mlflow.search_runs(experiment_names=["raylab/tailedcore_sweep"])
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert set(children["tags.raylab.method"]) == {
        "tailedcore",
        "softpatch",
        "patchcore",
        "tailedcore_true_tail",
        "tailsampler",
    }
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and set(children["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    # TailedCore's one memory for every class is one MLflow model; it scores its input example.
    tailed_run = children[children["tags.raylab.method"] == "tailedcore"].iloc[0]
    model = mlflow.pyfunc.load_model(json.loads(tailed_run["tags.raylab.models"])["all"])
    example = model.input_example
    scored = model.predict(example)
    assert len(scored) == 1 and np.isfinite(scored["image_score"].iloc[0])

    # A rerun of the same name and inputs restores the finished sweep: same rows, no trial runs again.
    again = run(get_experiment("tailedcore_sweep"), argv)
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in result["rows"]]
    runs = mlflow.search_runs(experiment_names=["raylab/tailedcore_sweep"])
    assert runs["tags.mlflow.parentRunId"].notna().sum() == 5


def test_tailedcore_quick_reductions(capsys):
    """--quick: one protocol and one seed (its smaller longtail_mix corpus is chosen in prepare)."""
    quick = run(get_experiment("tailedcore_sweep"), ["--quick", "--print-config"])["config"]
    capsys.readouterr()
    assert (quick.protocols, quick.seeds, quick.noise_ratios) == (("step_k1",), (0,), (0.1,))
    assert quick.dataset_options == {"train_per_class": 60, "test_good_per_class": 12, "test_defective_per_class": 20}


def test_tailedcore_bad_values_fail_before_ray_naming_the_key(monkeypatch, capsys):
    import raylab.experiment.session as session

    def refuse(**_):
        raise AssertionError("the runner started Ray before rejecting the input")

    monkeypatch.setattr(session, "init_ray", refuse)
    cases = {
        ("--set", "threads_per_trial=notanumber"): "--set: threads_per_trial: expected int, got str 'notanumber'",
        (
            "--set",
            "tailedcore.lof.keep_fraction=1.5",
        ): "--set: tailedcore.lof.keep_fraction: must lie in (0, 1], got 1.5",
        ("--set", "protocols=[zipf]"): "--set: protocols: unknown long-tail protocol 'zipf'",
        (
            "--set",
            "tailedcore.tail_embedding=avgpool",
        ): "--set: tailedcore.tail_embedding: expected one of 'backbone_stage', 'patch_mean', got str 'avgpool'",
        ("--protocols", "step_k1,,pareto"): "--protocols 'step_k1,,pareto': expected comma-separated values",
        ("--protocols", "step_k1,zipf"): "--protocols 'zipf': unknown long-tail protocol 'zipf'",
        ("--noise-ratios", "0.1,abc"): "--noise-ratios '0.1,abc': 'abc' is not a valid float",
        ("--methods", "tailedcore,foo"): "--methods 'tailedcore,foo': unknown ['foo']",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            run(get_experiment("tailedcore_sweep"), list(argv))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv
